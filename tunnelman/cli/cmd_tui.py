"""`tunnelman` / `tunnelman tui`: open the terminal UI (Textual is imported only here)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from tunnelman.cli.main import get_ctx
from tunnelman.core.errors import TunnelmanError


def _not_a_terminal() -> str | None:
    """Which of stdin/stdout is not a terminal ("stdin", "stdout", both), or None."""
    missing = []
    for label, stream in (("stdin", sys.stdin), ("stdout", sys.stdout)):
        try:
            if not stream.isatty():
                missing.append(label)
        except (AttributeError, ValueError):  # closed or replaced stream
            missing.append(label)
    if not missing:
        return None
    return " and ".join(missing) + (" is not one" if len(missing) == 1 else " are not one")


@click.command("tui")
@click.argument("profile", required=False)
@click.pass_context
def tui_cmd(ctx: click.Context, profile: str | None) -> None:
    """Open the terminal UI, with PROFILE highlighted when given."""
    missing = _not_a_terminal()
    if missing:
        # Textual would start anyway, draw into a pipe and wait for keys that never come.
        raise TunnelmanError(
            f"the terminal UI needs a terminal ({missing} here)",
            hint="run it in a terminal, or use the commands: tunnelman ls, up, psql, --help",
        )
    from tunnelman.tui.app import run

    config = get_ctx(ctx).config
    run(Path(config) if config else None, initial_profile=profile)
