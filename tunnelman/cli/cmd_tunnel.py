"""`tunnelman up NAME`: hold a profile's tunnel on 127.0.0.1 in the foreground until Ctrl-C.

Prints the local address and a ready psql command (never a password), reports reconnects on
stderr, and closes cleanly on SIGINT or SIGTERM (exit 0). `--detach` hands the tunnel to the
background agent instead (`detach_up`; the agent's own commands are in cmd_agent). `--json`
prints the tunnel object (`tunnel_object`) as one line on stdout once it is up, and every human
line on stderr. A failure exits with its family's code (`tunnelman.core.errors.EXIT_CODES`).
"""

from __future__ import annotations

import queue
import threading
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from tunnelman.cli.common import (
    accept_new_host_key_option,
    connecting_text,
    json_option,
    load_profile,
    psql_command,
)
from tunnelman.cli.main import exit_code_help, get_ctx
from tunnelman.cli.output import err, json_line, out, progress
from tunnelman.cli.prompts import host_key_policy, passphrase_prompt
from tunnelman.cli.signals import interrupt, routed
from tunnelman.cli.wake import prepare, start_cluster_option
from tunnelman.core import profiles as prof
from tunnelman.core.errors import AgentError, TunnelError
from tunnelman.core.profiles import Profile

if TYPE_CHECKING:
    from tunnelman.core.tunnel import TunnelStatus


def tunnel_object(profile: Profile, status: TunnelStatus, *, detached: bool) -> dict[str, object]:
    """What `up --json` prints: `status --json`'s object plus where it leads and who holds it."""
    port = status.local_port
    return {
        **status.to_json(),
        "address": f"127.0.0.1:{port}" if port else None,
        "engine": profile.engine,
        "bastion": str(profile.bastion) if profile.bastion else None,
        "endpoint": str(profile.endpoint) if profile.endpoint else None,
        "database": profile.database,
        "user": profile.user,
        "detached": detached,
    }


def detach_up(
    ctx: click.Context, name: str, port: int | None, accept_new: bool, *, as_json: bool = False
) -> None:
    """`tunnelman up NAME --detach`: hand the tunnel to the agent, return once its port is ready.

    The host-key question is asked here, on the terminal that ran `up`, before the agent opens
    the tunnel (the agent itself can ask nobody). `as_json`: the tunnel object on stdout (one
    line), the human lines on stderr.
    """
    from tunnelman.agent.client import AgentClient

    config = prof.config_path(get_ctx(ctx).config).expanduser().absolute()
    # Load here too: profile errors come out exactly as for every other command.
    profile = prof.load(config, missing_ok=False).get(name)
    target = str(profile.endpoint) if profile.endpoint else "?"
    client = AgentClient(notify=err)
    progress(f"{connecting_text(profile)} … (database {target}; held by the agent)")
    status = client.up(name, config, port, host_keys=host_key_policy(accept_new))
    bound = status.local_port
    if bound is None:
        raise AgentError(f"the agent opened '{name}' but reports no local port")
    say = err if as_json else out
    if as_json:
        json_line(tunnel_object(profile, status, detached=True))
    say(f"Tunnel '{name}' is up: 127.0.0.1:{bound} → {target} (via {profile.route})")
    say(f"  {psql_command(profile, bound)}")
    err(
        "The background agent holds it: it outlives this terminal. "
        f"`tunnelman status` shows it, `tunnelman down {name}` closes it."
    )


@click.command("up", epilog=exit_code_help())
@click.argument("name")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    metavar="N",
    help="Local port on 127.0.0.1 (default: the profile's local_port, else a free one; 0: free).",
)
@accept_new_host_key_option
@click.option(
    "--detach",
    is_flag=True,
    help="Hand the tunnel to the background agent and return (see `tunnelman status`).",
)
@start_cluster_option
@json_option("Once it is up, print the tunnel as one JSON line on stdout (messages go to stderr).")
@click.pass_context
def up_cmd(
    ctx: click.Context,
    name: str,
    port: int | None,
    accept_new_host_key: bool,
    detach: bool,
    start_cluster: bool,
    as_json: bool,
) -> None:
    """Open NAME's tunnel on 127.0.0.1 and hold it until Ctrl-C.

    Prints the local address and a ready psql command; point QGIS, pgAdmin or ArcGIS at the same
    address. The tunnel reconnects by itself if the bastion drops, keeping the port. A stopped
    cluster: asked whether to start it (--start-cluster: started without asking), then waited for.

    \b
    JSON (--json): {name, state, local_port, since, reconnects, error, connections,
    bytes_sent, bytes_received, rate_sent, rate_received, address, engine, bastion, endpoint,
    database, user, detached}, one line, printed
    when the tunnel is up (with --detach: then it exits; without: it holds until Ctrl-C).
    """
    if detach:
        prepare(ctx, load_profile(ctx, name), start_cluster=start_cluster, announce=False)
        detach_up(ctx, name, port, accept_new_host_key, as_json=as_json)
        return
    profile = prepare(ctx, load_profile(ctx, name), start_cluster=start_cluster)
    from tunnelman.core.tunnel import TunnelState, open_tunnel
    from tunnelman.core.tunnel.events import EventRecorder, events_path

    events: queue.Queue[TunnelStatus | None] = queue.Queue()
    recorder = EventRecorder(events_path())  # `tunnelman log` shows this tunnel's events too

    def on_status(status: TunnelStatus) -> None:
        recorder.status(status)
        events.put(status)

    tunnel = open_tunnel(
        profile,
        local_port=port,
        host_keys=host_key_policy(accept_new_host_key),
        passphrase=passphrase_prompt(),
        on_status=on_status,
        supervise=True,
    )
    tunnel.on_client = recorder.client
    target = str(profile.endpoint) if profile.endpoint else "?"
    progress(f"{connecting_text(profile)} … (database {target})")
    # Until the tunnel is up, Ctrl-C and SIGTERM interrupt whatever blocks (a prompt included).
    with routed(interrupt):
        try:
            bound = tunnel.start()
        except KeyboardInterrupt:
            tunnel.stop()
            raise
    stop = threading.Event()

    def request_stop(_sig: int, _frame: FrameType | None) -> None:
        stop.set()
        events.put(None)

    with routed(request_stop):
        say = err if as_json else out
        if as_json:
            json_line(tunnel_object(profile, tunnel.status, detached=False))
        say(f"Tunnel '{name}' is up: 127.0.0.1:{bound} → {target} (via {profile.route})")
        say(f"  {psql_command(profile, bound)}")
        err("Press Ctrl-C to close it.")
        failure = _hold(events, stop, TunnelState)
        tunnel.stop()
    if failure is not None:
        raise TunnelError(f"tunnel closed: {failure}")
    err(f"Closed the tunnel on 127.0.0.1:{bound}.")


def _hold(events: queue.Queue[Any], stop: threading.Event, states: Any) -> str | None:
    """Report state changes until asked to stop; the failure reason if the tunnel failed."""
    last = states.UP
    while not stop.is_set():
        try:
            status = events.get(timeout=1.0)
        except queue.Empty:
            continue
        if status is None or status.state == last:
            continue
        if status.state == states.RECONNECTING:
            reason = f" ({status.error})" if status.error else ""
            err(f"Lost the bastion{reason}; reconnecting, the local port stays open …")
        elif status.state == states.UP and last == states.RECONNECTING:
            err("Reconnected.")
        elif status.state == states.FAILED:
            return str(status.error or "failed")
        last = status.state
    return None
