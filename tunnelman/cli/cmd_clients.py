"""`tunnelman psql | exec | env | conn`: the database clients, through the tunnel.

Thin commands over `core.oneshot` (psql, exec), `core.clients` (env, conn) and
`core.client_files` (conn --write). A tunnel the background agent already holds is reused; the
agent is optional (a missing or dead agent just means "not up").
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from tunnelman.cli.common import accept_new_host_key_option, load_profile
from tunnelman.cli.output import err, out, progress
from tunnelman.cli.prompts import host_key_policy, interactive, passphrase_prompt, password_prompt
from tunnelman.cli.wake import prepare, start_cluster_option
from tunnelman.core import clients
from tunnelman.core.credentials import Login, resolve_login
from tunnelman.core.errors import ClientError, CredentialError, TunnelmanError
from tunnelman.core.platform import paths, shells
from tunnelman.core.profiles import Profile

F = TypeVar("F", bound=Callable[..., Any])
_PASSTHROUGH = {"ignore_unknown_options": True, "allow_interspersed_args": False}


def agent_port(name: str) -> int | None:
    """The local port of NAME's tunnel if the agent holds it up; None otherwise (no agent too)."""
    from tunnelman.agent.client import AgentClient
    from tunnelman.core.tunnel import TunnelState

    try:
        status = AgentClient().find(name)
    except (TunnelmanError, OSError):
        return None
    if status is None or status.state != TunnelState.UP:
        return None
    return status.local_port


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.3)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _offer_save(_password: str) -> bool:
    return click.confirm("Save it in the keyring for next time?", default=True, err=True)


def login_for(profile: Profile) -> Login:
    """The login, asking on a terminal when the profile says so (or the keyring has none)."""
    prompt = password_prompt()
    offer = _offer_save if prompt is not None and profile.password == "keyring" else None
    return resolve_login(profile, prompt=prompt, offer_save=offer)


def _leading_flag(args: tuple[str, ...]) -> tuple[bool, list[str]]:
    """`--start-cluster` given right after NAME (`psql NAME --start-cluster -c …`): ours, not the
    program's (neither psql nor `--` takes it); anything after the first other argument is left."""
    rest = list(args)
    found = False
    while rest and rest[0] == "--start-cluster":
        rest.pop(0)
        found = True
    return found, rest


def linger_option(fn: F) -> F:
    """`--linger DURATION` (parameter `linger`: seconds, or None when not given)."""
    return click.option(
        "--linger",
        metavar="DURATION",
        default=None,
        callback=_linger_value,
        help='Leave the tunnel with the agent this long after the command ends ("10m", "90s"; '
        "0: close at once), so the next one-shot is warm (default: the profile's linger, off).",
    )(fn)


def _linger_value(_ctx: click.Context, _param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    from tunnelman.core.profiles import parse_duration

    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _linger_up(
    ctx: click.Context, profile: Profile, linger: int, accept_new_host_key: bool
) -> int | None:
    """Have the agent hold the tunnel for `linger` seconds past its last use; its port, or None
    when the agent cannot (too old; a key only a prompt here can open): then an in-process one."""
    from tunnelman.agent.client import AgentClient, FeatureMissing
    from tunnelman.cli.main import get_ctx
    from tunnelman.core import profiles
    from tunnelman.core.errors import PassphraseRequired

    config = profiles.config_path(get_ctx(ctx).config).expanduser().absolute()
    if sys.stderr.isatty():
        progress(
            f"tunnelman: opening a tunnel to '{profile.name}' via {profile.route} "
            f"(the agent keeps it {_duration(linger)} after) …"
        )
    try:
        status = AgentClient(notify=err).up(
            profile.name, config, 0, host_keys=host_key_policy(accept_new_host_key), linger=linger
        )
    except (FeatureMissing, PassphraseRequired) as exc:
        err(f"tunnelman: note: no linger this time: {exc.message}")
        return None
    return status.local_port


def _duration(seconds: int) -> str:
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"


def _run_oneshot(
    ctx: click.Context,
    name: str,
    argv: list[str],
    accept_new_host_key: bool,
    start_cluster: bool = False,
    linger: int | None = None,
) -> None:
    from tunnelman.core import oneshot

    profile = load_profile(ctx, name)
    oneshot.find_program(argv[0])  # before any prompt or SSH work
    login = login_for(profile)
    port = agent_port(name)
    if port is None or start_cluster:
        # The agent's tunnel is reused without asking AWS unless the flag says to check.
        profile = prepare(ctx, profile, start_cluster=start_cluster, announce=port is None)
    lingering = profile.linger if linger is None else linger
    if port is None and lingering > 0:
        port = _linger_up(ctx, profile, lingering, accept_new_host_key)
    if port is None and sys.stderr.isatty():
        progress(f"tunnelman: opening a tunnel to '{name}' via {profile.route} …")
    code = oneshot.run(
        profile,
        argv,
        login,
        port=port,
        host_keys=host_key_policy(accept_new_host_key),
        passphrase=passphrase_prompt(),
    )
    ctx.exit(code)


@click.command("psql", context_settings=_PASSTHROUGH)
@accept_new_host_key_option
@start_cluster_option
@linger_option
@click.argument("name")
@click.argument("psql_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def psql_cmd(
    ctx: click.Context,
    name: str,
    psql_args: tuple[str, ...],
    accept_new_host_key: bool,
    start_cluster: bool,
    linger: int | None,
) -> None:
    """Run psql against NAME through the tunnel, then close it; returns psql's exit code.

    Everything after NAME (but a leading --start-cluster) goes to psql unchanged, e.g.
    `tunnelman psql prod -v ON_ERROR_STOP=1 -c "select postgis_full_version()"`.
    The password reaches psql only through a temporary PGPASSFILE (0600), removed afterwards.
    A tunnel the agent already holds for NAME is reused. A stopped cluster: asked whether to
    start it (--start-cluster, before NAME or right after it: started without asking).
    --linger 10m (or the profile's `linger`) leaves the tunnel with the agent for that long
    after psql ends, so the next one-shot is warm (`tunnelman status` shows it, `down` ends it).
    """
    flag, rest = _leading_flag(psql_args)
    _run_oneshot(ctx, name, ["psql", *rest], accept_new_host_key, start_cluster or flag, linger)


@click.command("exec", context_settings=_PASSTHROUGH)
@accept_new_host_key_option
@start_cluster_option
@linger_option
@click.argument("name")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
def exec_cmd(
    ctx: click.Context,
    name: str,
    command: tuple[str, ...],
    accept_new_host_key: bool,
    start_cluster: bool,
    linger: int | None,
) -> None:
    """Run any libpq program against NAME through the tunnel: `tunnelman exec NAME -- CMD [ARGS…]`.

    CMD gets PGHOST, PGPORT, PGDATABASE, PGUSER, PGSSLMODE and a temporary PGPASSFILE, e.g.
    `tunnelman exec prod -- pg_dump --schema-only -t public.pts`, or ogr2ogr, pgcli, qgis.
    Returns CMD's exit code; the tunnel closes when CMD ends (with --linger, or the profile's
    `linger`: that long after, with the agent; see `tunnelman psql --help`).
    """
    flag, argv = _leading_flag(command)
    start_cluster = start_cluster or flag
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise click.UsageError("no command given: tunnelman exec NAME -- CMD [ARGS…]")
    _run_oneshot(ctx, name, argv, accept_new_host_key, start_cluster, linger)


@click.command("env")
@click.argument("name")
@click.option(
    "--port", type=click.IntRange(1, 65535), default=None, metavar="N", help="The tunnel's port."
)
@click.option(
    "--shell",
    type=click.Choice(shells.SHELLS),
    default=None,
    help="The shell to write for (default: the one running: posix; on Windows PowerShell or cmd).",
)
@start_cluster_option
@click.pass_context
def env_cmd(
    ctx: click.Context, name: str, port: int | None, shell: str | None, start_cluster: bool
) -> None:
    """Print PG* settings for NAME's tunnel, for your shell to load.

    \b
    sh/bash/zsh:  eval "$(tunnelman env NAME)"
    PowerShell:   tunnelman env NAME --shell powershell | Out-String | Invoke-Expression
    cmd.exe:      tunnelman env NAME --shell cmd > pg.cmd  then  call pg.cmd

    The tunnel must outlive this command: the agent's tunnel is used when it is up, else the
    profile's local_port (start it with `tunnelman up NAME`). No password is printed: libpq
    asks, or reads your .pgpass (`tunnelman conn NAME --format pgpass --write`).
    With --start-cluster, a stopped cluster is started (and a starting one waited for) first.
    """
    profile = load_profile(ctx, name)
    if (
        start_cluster
    ):  # without the flag nothing asks AWS: `eval "$(tunnelman env NAME)"` stays fast
        prepare(ctx, profile, start_cluster=True, announce=False)
    shell = shell or shells.default_shell()
    chosen = port or agent_port(name)
    if chosen is None:
        chosen = profile.local_port
        if chosen is None:
            raise _no_port(name)
        if not _listening(chosen):
            err(
                f"tunnelman: note: nothing listens on 127.0.0.1:{chosen} yet: "
                f"run `tunnelman up {name}` (or `tunnelman up {name} --detach`)"
            )
    sys.stdout.write(clients.render("env", profile, chosen, shell=shell))


def _no_port(name: str) -> ClientError:
    return ClientError(
        f"no port for '{name}': its tunnel is not up and the profile has no local_port",
        hint=f"run `tunnelman up {name}` first, pass --port N, or set local_port in the profile",
    )


_WRITABLE = ("pg-service", "pgpass", "pgadmin", "qgis-xml")


def _conn_help() -> str:
    rows = "\n".join(f"  {name:<11} {text}" for name, text in clients.FORMATS.items())
    return (
        "Connection settings for NAME's tunnel, in the format a client reads.\n\n"
        "Prints to stdout (notes on stderr); nothing printed holds a password. The port is "
        "--port, else the agent's tunnel for NAME, else the profile's local_port.\n\n"
        f"\b\nFormats:\n{rows}\n\n"
        "--write merges NAME's entry into a file instead (idempotent; the previous version is "
        "kept as FILE.bak): pg-service → $PGSERVICEFILE or ~/.pg_service.conf; pgpass → "
        "$PGPASSFILE or ~/.pgpass (0600, with the password from the keyring/prompt/AWS); "
        "pgadmin and qgis-xml → the file given with --file. Only regular files are written: "
        "a device, FIFO, socket or directory is refused untouched. A symlink you own (say a "
        "dotfiles-managed ~/.pgpass) is written through: the file it points to is rewritten in "
        "place, keeping its mode (a .pgpass: 0600), with FILE.bak beside it, and the link stays; the "
        "output names both. On any failure the file is left as it was."
    )


@click.command("conn", help=_conn_help())
@click.argument("name")
@click.option(
    "-f",
    "--format",
    "fmt",
    type=click.Choice(list(clients.FORMATS)),
    metavar="FORMAT",
    default="psql",
    show_default=True,
    help="Output format (see the list above).",
)
@click.option(
    "-w",
    "--write",
    is_flag=True,
    help="Merge into the client's file (pg-service, pgpass, pgadmin, qgis-xml).",
)
@click.option(
    "--port", type=click.IntRange(1, 65535), default=None, metavar="N", help="Local port."
)
@click.option(
    "--file",
    "path",
    type=click.Path(dir_okay=False, path_type=str),
    default=None,
    metavar="PATH",
    help="The file --write merges into (required for pgadmin and qgis-xml).",
)
@click.option(
    "--pgadmin-ssh",
    is_flag=True,
    help="pgadmin: let pgAdmin run the SSH tunnel itself (UseSSHTunnel) instead of tunnelman.",
)
@start_cluster_option
@click.pass_context
def conn_cmd(
    ctx: click.Context,
    name: str,
    fmt: str,
    write: bool,
    port: int | None,
    path: str | None,
    pgadmin_ssh: bool,
    start_cluster: bool,
) -> None:
    profile = load_profile(ctx, name)
    if start_cluster:  # as for env: only the flag makes conn ask AWS
        prepare(ctx, profile, start_cluster=True, announce=False)
    chosen = port or agent_port(name) or profile.local_port
    if chosen is None:
        if fmt == "pgadmin" and pgadmin_ssh:
            chosen = 5432  # unused: pgAdmin connects to the endpoint through its own tunnel
        else:
            raise _no_port(name)
    if write:
        _write(profile, fmt, chosen, path, pgadmin_ssh)
        return
    if path is not None:
        raise click.UsageError("--file goes with --write")
    sys.stdout.write(clients.render(fmt, profile, chosen, pgadmin_ssh=pgadmin_ssh))
    if fmt not in clients.COMMENTED_FORMATS:
        for note in clients.notes(fmt, profile, chosen):
            err(f"tunnelman: note: {note}")


def _write(profile: Profile, fmt: str, port: int, path: str | None, pgadmin_ssh: bool) -> None:
    from pathlib import Path

    from tunnelman.core import client_files

    target = Path(path).expanduser() if path else None
    if fmt == "pg-service":
        result = client_files.write_service(profile, port, path=target)
    elif fmt == "pgpass":
        if profile.password == "none":
            raise CredentialError(
                f"profile '{profile.name}' has password = \"none\": tunnelman has no password to write"
            )
        if profile.password == "iam":
            raise CredentialError(
                "an IAM token expires after 15 minutes, so a .pgpass cannot hold it",
                hint=f"use `tunnelman psql {profile.name}` or `tunnelman exec {profile.name} -- CMD`",
            )
        if profile.password == "prompt" and not interactive():
            raise CredentialError("the profile asks for its password, but there is no terminal")
        login = login_for(profile)
        assert login.password is not None
        result = client_files.write_pgpass(
            profile, port, login.password, user=login.user, path=target
        )
    elif fmt in ("pgadmin", "qgis-xml"):
        if target is None:
            raise click.UsageError(f"--write --format {fmt} needs --file PATH")
        if fmt == "pgadmin":
            result = client_files.write_pgadmin(profile, port, target, pgadmin_ssh=pgadmin_ssh)
        else:
            result = client_files.write_qgis_xml(profile, port, target)
    else:
        raise click.UsageError(f"--write works with {', '.join(_WRITABLE)}; print {fmt} instead")
    out(result.describe())
    if fmt in ("pg-service", "pgpass"):
        warning = paths.store_python_warning(result.path)
        if warning:
            err(f"tunnelman: warning: {warning}")
    if fmt == "pgadmin":
        err(
            f"tunnelman: import it in pgAdmin: Tools > Import/Export Servers > Import > {result.path}"
        )
    elif fmt == "qgis-xml":
        err(
            "tunnelman: load it in QGIS: Browser > right-click PostgreSQL > Load Connections… > "
            f"{result.path}"
        )
