"""Every command explains itself: `--help` works and each command and option has help text."""

from __future__ import annotations

import click
import pytest

from tests.cli import RunCli
from tunnelman.cli.main import COMMANDS, LazyGroup, cli


def all_commands() -> list[tuple[str, click.Command]]:
    ctx = click.Context(cli)
    group = cli
    assert isinstance(group, LazyGroup)
    found: list[tuple[str, click.Command]] = []
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None
        found.append((name, command))
        if isinstance(command, click.Group):
            sub_ctx = click.Context(command, parent=ctx)
            for sub in command.list_commands(sub_ctx):
                sub_command = command.get_command(sub_ctx, sub)
                assert sub_command is not None
                found.append((f"{name} {sub}", sub_command))
    return found


def test_top_level_help_lists_commands(run_cli: RunCli) -> None:
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    ctx = click.Context(cli)
    assert isinstance(cli, LazyGroup)
    for name in cli.list_commands(ctx):
        assert name in result.stdout
        assert COMMANDS[name][2] in result.stdout


@pytest.mark.parametrize(("name", "command"), all_commands(), ids=str)
def test_every_command_and_option_has_help(name: str, command: click.Command) -> None:
    assert command.help, f"`{name}` has no help text"
    assert len(command.help.strip()) > 15, f"`{name}` has too short a help text"
    for param in command.params:
        if isinstance(param, click.Option) and param.name != "help":
            assert param.help, f"`{name}` option {param.opts} has no help"


def test_unknown_command_is_one_clear_line(run_cli: RunCli) -> None:
    result = run_cli("lss")
    assert result.returncode == 2
    assert "did you mean 'ls'" in result.stderr
    assert "Traceback" not in result.stderr
