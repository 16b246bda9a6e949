"""Commands around the background agent: `status`, `down`, `agent run|stop|status`.

Each is a few lines over `tunnelman.agent.client.AgentClient`. `status` and `down` never start an
agent; `up --detach` (`cmd_tunnel.detach_up`) does.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import TYPE_CHECKING

import click

from tunnelman.agent.client import AgentClient
from tunnelman.cli.common import json_option
from tunnelman.cli.output import err, json_out, out, table
from tunnelman.core.errors import AgentError

if TYPE_CHECKING:
    from tunnelman.core.tunnel import TunnelStatus


# ----------------------------------------------------------------------------- status


def _ago(epoch: float | None) -> str:
    if epoch is None:
        return ""
    seconds = max(0, int(time.time() - epoch))
    if seconds < 60:
        return f"{seconds} s ago"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min ago"
    return dt.datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M")


def _traffic(status: TunnelStatus) -> str:
    """ "298 B / 19.2 MB": sent to the database / received from it ("" where not counted)."""
    if status.bytes_sent is None or status.bytes_received is None:
        return ""
    from tunnelman.core.tunnel.traffic import human_bytes

    return f"{human_bytes(status.bytes_sent)} / {human_bytes(status.bytes_received)}"


def _state(status: TunnelStatus) -> str:
    """ "up", or "up (9 min left)" for a one-shot's tunnel lingering with the agent (short: the
    table fits 100 columns)."""
    if status.linger_until is None:
        return str(status.state)
    left = max(0, round(status.linger_until - time.time()))
    shown = f"{left} s" if left < 60 else f"{(left + 59) // 60} min"
    return f"{status.state} ({shown} left)"


def _rows(statuses: list[TunnelStatus]) -> list[list[object]]:
    return [
        [
            s.name,
            _state(s),
            f"127.0.0.1:{s.local_port}" if s.local_port else "",
            _ago(s.since),
            s.reconnects,
            s.connections,
            _traffic(s),
            s.error or "",
        ]
        for s in statuses
    ]


@click.command("status")
@json_option("A JSON list of tunnels, for scripts.")
def status_cmd(as_json: bool) -> None:
    """Show the tunnels the background agent holds (never starts the agent).

    \b
    JSON: [{name, state, local_port, since, reconnects, error, connections, bytes_sent,
    bytes_received, rate_sent, rate_received, linger_until}], state one of starting, up, reconnecting,
    failed, stopped; since is when it last came up (ISO 8601); connections is how many client
    connections are open through it; bytes_* what it carried to (sent) and from (received)
    the database, rate_* in bytes per second over the last seconds (null where not counted);
    linger_until: when the agent closes a one-shot's lingering tunnel unless a client connects
    first (ISO 8601; null: held until `down`). Such a tunnel shows "(9 min left)" in the table.
    """
    client = AgentClient()
    statuses = client.status()
    if as_json:
        json_out([s.to_json() for s in statuses])
        return
    if statuses:
        table(
            [
                "NAME",
                "STATE",
                "ADDRESS",
                "UP SINCE",
                "RECONNECTS",
                "CONNECTIONS",
                "SENT / RECEIVED",
                "ERROR",
            ],
            _rows(statuses),
        )
        return
    if client.ping() is not None:
        out("No tunnels (the agent holds none).")
        return
    crash = client.crashed()
    if crash is not None and crash.tunnels:
        held = ", ".join(crash.tunnels)
        out(f"No tunnels (the agent had stopped unexpectedly; it held: {held}).")
    else:
        out("No tunnels (the agent is not running).")


# ----------------------------------------------------------------------------- down


def _cut(count: int) -> str:
    if count == 0:
        return "no client connection was open"
    return f"cut {count} open client connection{'' if count == 1 else 's'}"


def _closed_line(status: TunnelStatus) -> str:
    where = f" (127.0.0.1:{status.local_port})" if status.local_port else ""
    return f"Closed '{status.name}'{where}; {_cut(status.connections)}."


def _closed_json(status: TunnelStatus) -> dict[str, object]:
    return {**status.to_json(), "cut": status.connections}


@click.command("down")
@click.argument("name", required=False)
@click.option("--all", "all_", is_flag=True, help="Close every tunnel the agent holds.")
@json_option("What was closed, as JSON, for scripts.")
def down_cmd(name: str | None, all_: bool, as_json: bool) -> None:
    """Close NAME's tunnel held by the background agent (or every one with --all).

    Says how many client connections (QGIS, psql, …) were still open and got cut.

    \b
    JSON: the closed tunnel (a list with --all) as `status --json` shows it, with
    `cut` (and `connections`) the number of client connections it cut.
    """
    if bool(name) == all_:
        raise click.UsageError("give a profile NAME or --all")
    client = AgentClient()
    if all_:
        closed = client.down_all()
        if as_json:
            json_out([_closed_json(s) for s in closed])
            return
        if not closed:
            out("No tunnels to close.")
        for status in closed:
            out(_closed_line(status))
        return
    assert name is not None
    status = client.down(name)
    if as_json:
        json_out(_closed_json(status))
        return
    out(_closed_line(status))


# ----------------------------------------------------------------------------- agent


@click.group("agent")
def agent_group() -> None:
    """The background agent that holds detached tunnels (`up --detach`, the TUI).

    It starts by itself when needed and exits after a while with no tunnels
    (TUNNELMAN_AGENT_IDLE seconds, default 600; 0 never).
    """


@agent_group.command("run")
@click.option(
    "--idle-timeout",
    type=click.FloatRange(min=0),
    default=None,
    metavar="SECONDS",
    help="Exit after this long with no tunnels (default: $TUNNELMAN_AGENT_IDLE, else 600; 0: never).",
)
def agent_run_cmd(idle_timeout: float | None) -> None:
    """Run the agent in the foreground, logging to this terminal too (for debugging).

    Ctrl-C closes its tunnels and stops it.
    """
    from tunnelman.agent.server import run

    info = AgentClient().ping()
    if info is not None:
        raise AgentError(
            f"an agent is already running (pid {info.pid})",
            hint="`tunnelman agent stop` stops it (its tunnels close)",
        )

    def ready(agent: object) -> None:
        address = getattr(agent, "files", None)
        err(f"Agent running (Ctrl-C stops it); socket directory {getattr(address, 'dir', '?')}.")

    run(idle_timeout=idle_timeout, log_to_stderr=True, on_ready=ready)
    err("Agent stopped.")


@agent_group.command("stop")
def agent_stop_cmd() -> None:
    """Stop the agent; every tunnel it holds closes."""
    info = AgentClient().shutdown()
    if info is None:
        out("The agent is not running.")
        return
    tunnels = f", closed {info.tunnels} tunnel(s)" if info.tunnels else ""
    out(f"Stopped the agent (pid {info.pid}{tunnels}).")


@agent_group.command("status")
@json_option("JSON, for scripts.")
def agent_status_cmd(as_json: bool) -> None:
    """Whether the agent runs: pid, address, tunnels, log file."""
    from tunnelman.agent.paths import log_path

    info = AgentClient().ping()
    if as_json:
        json_out(
            {"running": False, "log": str(log_path())}
            if info is None
            else {
                "running": True,
                "pid": info.pid,
                "version": info.version,
                "started": dt.datetime.fromtimestamp(info.started, tz=dt.UTC).isoformat(),
                "tunnels": info.tunnels,
                "idle_timeout": info.idle_timeout,
                "address": info.address,
                "log": info.log,
            }
        )
        return
    if info is None:
        out(f"The agent is not running (log: {log_path()}).")
        return
    idle = f"{info.idle_timeout:g} s without tunnels" if info.idle_timeout > 0 else "never"
    out(f"Agent pid {info.pid} (tunnelman {info.version}), up since {_ago(info.started)}")
    out(f"  address  {info.address}")
    out(f"  tunnels  {info.tunnels}")
    out(f"  exits    {idle}")
    out(f"  log      {info.log}")
