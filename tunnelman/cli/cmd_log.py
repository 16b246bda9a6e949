"""`tunnelman log [NAME] [--follow] [--json]`: what happened to the tunnels, from the events file.

The agent (and `tunnelman up` in the foreground) append every tunnel's events to one file
(`tunnelman.core.tunnel.events`), so the log needs no running agent and shows what happened while
nothing was watching.
"""

from __future__ import annotations

import datetime as dt
import threading
from typing import TYPE_CHECKING

import click

from tunnelman.cli.common import json_option
from tunnelman.cli.output import err, json_line, json_out, out

if TYPE_CHECKING:
    from tunnelman.core.tunnel.events import TunnelEvent


def _line(event: TunnelEvent) -> str:
    when = dt.datetime.fromtimestamp(event.time).strftime("%Y-%m-%d %H:%M:%S")
    return f"{when}  {event.name}  {event.kind}: {event.message}"


@click.command("log")
@click.argument("name", required=False)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new events until Ctrl-C.")
@click.option(
    "-n",
    "--lines",
    "count",
    type=click.IntRange(min=0),
    default=50,
    show_default=True,
    help="How many of the latest events to show first (0: all).",
)
@json_option("JSON: a list of events; with --follow, one JSON object per line.")
def log_cmd(name: str | None, follow: bool, count: int, as_json: bool) -> None:
    """Show what happened to the tunnels (all, or NAME's): opened, clients, reconnecting, back up,
    failed, closed, cluster state changes seen by the TUI, with the time and the reason.

    Kept by the agent for the tunnels it holds, and by `tunnelman up` in the foreground, in
    events.jsonl beside tunnelman's log file; it outlives the agent and the TUI. A client
    connection shorter than 2 s (a health check, a quick `psql -c`) is not listed.

    \b
    JSON: [{time, name, event, message, ...}], event one of opened, client-connected,
    client-disconnected, reconnecting, retrying, back-up, failed, closed, cluster; time in
    ISO 8601; opened has port, back-up after (seconds) and reconnects, client-* connections,
    cluster status (the RDS status word).
    """
    from tunnelman.core.tunnel.events import events_path, read_events, tail_events

    path = events_path()
    events = read_events(path, name)
    if count:
        events = events[-count:]
    if as_json and not follow:
        json_out([e.to_json() for e in events])
        return
    for event in events:
        if as_json:
            json_line(event.to_json())
        else:
            out(_line(event))
    if not follow:
        if not events:
            who = f"tunnel '{name}'" if name else "any tunnel"
            err(f"No events for {who} yet ({path}).")
        return
    stop = threading.Event()
    try:
        for event in tail_events(path, name, stop):
            if as_json:
                json_line(event.to_json())
            else:
                out(_line(event))
    except KeyboardInterrupt:
        stop.set()
