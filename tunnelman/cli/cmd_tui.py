"""`tunnelman` / `tunnelman tui`: open the terminal UI (Textual is imported only here)."""

from __future__ import annotations

from pathlib import Path

import click

from tunnelman.cli.main import get_ctx


@click.command("tui")
@click.argument("profile", required=False)
@click.pass_context
def tui_cmd(ctx: click.Context, profile: str | None) -> None:
    """Open the terminal UI, with PROFILE highlighted when given."""
    from tunnelman.tui.app import run

    config = get_ctx(ctx).config
    run(Path(config) if config else None, initial_profile=profile)
