"""The `tunnelman` entry point: a click group whose commands load lazily.

Each command lives in a `cmd_*` module that is imported only when that command runs, so
`tunnelman psql prod` never pays for Textual or boto3. `tunnelman` with no command opens the TUI.
`main()` turns every `TunnelmanError` into one line on stderr and its family's exit code
(`tunnelman.core.errors.EXIT_CODES`, listed by `tunnelman --help` and `tunnelman up --help`).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from dataclasses import dataclass
from typing import Any

import click

from tunnelman import __version__
from tunnelman.core.errors import EXIT_CODES, PortBusyError, TunnelmanError

# name -> (module, attribute, one-line help). The help is here so `tunnelman --help` imports nothing.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "ls": ("tunnelman.cli.cmd_profiles", "ls_cmd", "List saved profiles."),
    "up": ("tunnelman.cli.cmd_tunnel", "up_cmd", "Open a profile's tunnel on 127.0.0.1."),
    "down": ("tunnelman.cli.cmd_agent", "down_cmd", "Close tunnels held by the agent."),
    "status": ("tunnelman.cli.cmd_agent", "status_cmd", "Show tunnels held by the agent."),
    "log": ("tunnelman.cli.cmd_log", "log_cmd", "What happened to the tunnels (events)."),
    "psql": ("tunnelman.cli.cmd_clients", "psql_cmd", "Run psql through the tunnel, then close."),
    "exec": ("tunnelman.cli.cmd_clients", "exec_cmd", "Run any libpq program through the tunnel."),
    "env": ("tunnelman.cli.cmd_clients", "env_cmd", "Print PG* exports for eval."),
    "conn": ("tunnelman.cli.cmd_clients", "conn_cmd", "Connection settings for a client."),
    "password": ("tunnelman.cli.cmd_password", "password_group", "Keep a password in the keyring."),
    "check": ("tunnelman.cli.cmd_check", "check_cmd", "Diagnose a profile step by step."),
    "discover": ("tunnelman.cli.cmd_aws", "discover_cmd", "Find clusters and bastions in AWS."),
    "profile": ("tunnelman.cli.cmd_profiles", "profile_group", "Add, show or remove profiles."),
    "cluster": ("tunnelman.cli.cmd_aws", "cluster_group", "Cluster status, start and stop."),
    "tui": ("tunnelman.cli.cmd_tui", "tui_cmd", "Open the terminal UI (the default)."),
    "demo": ("tunnelman.cli.cmd_demo", "demo_cmd", "A sandbox bastion and database, no AWS."),
    "agent": ("tunnelman.cli.cmd_agent", "agent_group", "Run or stop the background agent."),
    "db": ("tunnelman.cli.cmd_db", "db_group", "Users, databases, dumps the RDS way."),
    "query": ("tunnelman.cli.cmd_query", "query_cmd", "Run one SQL statement via the Data API."),
}


@dataclass
class Context:
    """What every command receives: the global options."""

    config: str | None


class LazyGroup(click.Group):
    """A group that imports a command's module only when the command is used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        module = importlib.import_module(entry[0])
        command = getattr(module, entry[1])
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            import difflib

            guess = difflib.get_close_matches(name, self.list_commands(ctx), n=1)
            tip = f" (did you mean '{guess[0]}'?)" if guess else ""
            raise click.UsageError(f"no command '{name}'{tip}", ctx)
        return super().resolve_command(ctx, args)


def exit_code_help() -> str:
    """The exit-code table, as a help epilog (click keeps `\b` paragraphs as they are)."""
    rows = "\n".join(f"  {code:<4} {meaning}" for code, meaning in EXIT_CODES)
    return f"\b\nExit codes:\n{rows}"


@click.group(
    cls=LazyGroup,
    invoke_without_command=True,
    epilog=exit_code_help(),
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--config",
    "config",
    metavar="PATH",
    envvar="TUNNELMAN_CONFIG",
    help="Profile file (default: $TUNNELMAN_CONFIG, else profiles.toml in your config dir).",
)
@click.version_option(__version__, "-V", "--version", prog_name="tunnelman")
@click.pass_context
def cli(ctx: click.Context, config: str | None) -> None:
    """Reach a private PostgreSQL/PostGIS database through an SSH bastion.

    Profiles (bastion, key, database endpoint) live in a TOML file; `tunnelman` alone opens the
    terminal UI, the commands below do the same work from a shell or a script. Every tunnel
    listens on 127.0.0.1 only and checks the bastion's host key against known_hosts.

    \b
    Quick start:
      tunnelman profile add prod --endpoint db.cluster-x.us-east-2.rds.amazonaws.com \\
          --bastion ec2-user@bastion.example.com --identity-file ~/.ssh/aws.pem
      tunnelman password set prod
      tunnelman check prod          # every step, with a fix for what fails
      tunnelman psql prod           # tunnel, psql, close
      tunnelman up prod             # hold the tunnel for QGIS / pgAdmin / ArcGIS
    """
    from tunnelman.core.logs import setup_file_logging

    # A read-only home must not stop the command; logs are a convenience.
    with contextlib.suppress(OSError):
        setup_file_logging()
    ctx.obj = Context(config=config)
    if ctx.invoked_subcommand is None:
        tui = ctx.command.get_command(ctx, "tui") if isinstance(ctx.command, click.Group) else None
        if tui is None:
            click.echo(ctx.get_help())
            return
        ctx.invoke(tui)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; one line on stderr and a non-zero exit for any error a person can fix."""
    from tunnelman.cli.output import ensure_encodable_streams, error_line

    ensure_encodable_streams()
    try:
        code = cli.main(args=argv, prog_name="tunnelman", standalone_mode=False)
    except TunnelmanError as exc:
        if isinstance(exc, PortBusyError):
            from tunnelman.cli.held_port import name_own_holder

            exc = name_own_holder(exc)
        _error_lines(exc)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        error_line("aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        error_line("interrupted")
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        message = exc.format_message()
        ctx = getattr(exc, "ctx", None)
        if isinstance(exc, click.UsageError) and ctx is not None:
            message = f"{message} (see `{ctx.command_path} --help`)"
        error_line(message)
        sys.exit(exc.exit_code)
    except BrokenPipeError:
        # stdout closed early (e.g. `| head`): not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    # With standalone_mode=False click returns `ctx.exit(n)` codes instead of exiting.
    sys.exit(code if isinstance(code, int) else 0)


def _error_lines(exc: TunnelmanError) -> None:
    """The error's line(s), each safe for the terminal; one `tunnelman: error:` per problem."""
    from tunnelman.cli.output import error_line
    from tunnelman.core.profiles import ConfigProblems, printable

    if isinstance(exc, ConfigProblems):
        for line in exc.lines:
            error_line(printable(line))
        return
    # A message may span lines on purpose (a changed host key shows both fingerprints): keep them.
    error_line("\n".join(printable(line) for line in str(exc).split("\n")))


def get_ctx(ctx: click.Context) -> Context:
    """The global options, from any sub-command."""
    obj: Any = ctx.find_root().obj
    assert isinstance(obj, Context)
    return obj
