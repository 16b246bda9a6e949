"""`tunnelman` / `tunnelman tui`: open the terminal UI (Textual is imported only here)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from tunnelman.cli.main import get_ctx
from tunnelman.core.errors import TunnelmanError


def _on_a_terminal() -> bool:
    try:
        return sys.stdin.isatty() and sys.stdout.isatty()
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


@click.command("tui")
@click.argument("profile", required=False)
@click.pass_context
def tui_cmd(ctx: click.Context, profile: str | None) -> None:
    """Open the terminal UI, with PROFILE highlighted when given."""
    if not _on_a_terminal():
        # Textual would start anyway, draw into a pipe and wait for keys that never come.
        raise TunnelmanError(
            "the terminal UI needs a terminal (stdin and stdout are not one here)",
            hint="run it in a terminal, or use the commands: tunnelman ls, up, psql, --help",
        )
    from tunnelman.tui.app import run

    config = get_ctx(ctx).config
    run(Path(config) if config else None, initial_profile=profile)
