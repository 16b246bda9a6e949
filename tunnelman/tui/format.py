"""Pure text for the TUI: state badges, durations, the detail pane's lines, cluster status.

No Textual here beyond Rich `Text`, so it is quick to test and the snapshots stay stable: every
time-dependent value takes `now` from the app's clock. The colours are the Textual theme's
(`use_theme`, called by the app on start and on every theme switch): Rich `Text` cannot read
`$error`, so the theme's values are copied in. Under NO_COLOR Textual's own filter greys
everything out, these styles included; the badges' glyphs (● ↻ ✗ ○) still tell states apart.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from rich.text import Text

from tunnelman.core.profiles import printable
from tunnelman.core.transport import describe as describe_transport
from tunnelman.core.tunnel import TunnelState
from tunnelman.core.tunnel.traffic import human_bytes
from tunnelman.tui.state import CONNECTING, is_open

if TYPE_CHECKING:
    from tunnelman.core.aws import Database, Member
    from tunnelman.core.health import Health
    from tunnelman.core.profiles import Profile
    from tunnelman.core.tunnel import TunnelStatus
    from tunnelman.tui.state import Shown

LABELS: dict[str, str] = {
    "stopped": "○ closed",
    "connecting": "◌ connecting…",
    "starting": "◌ connecting…",
    "up": "● up",
    "reconnecting": "↻ reconnecting",
    "failed": "✗ failed",
    "closing": "◌ closing…",
}
# Which theme colour each state wears (Textual's theme variable names).
_STATE_COLOURS = {
    "stopped": "",
    "connecting": "warning",
    "starting": "warning",
    "up": "success",
    "reconnecting": "warning",
    "failed": "error",
    "closing": "warning",
}
# Before any app has said its theme (tests of these functions): Rich's named colours.
_DEFAULT_COLOURS = {"success": "green", "warning": "yellow", "error": "red", "accent": "cyan"}
COLOURS: dict[str, str] = dict(_DEFAULT_COLOURS)
"""The theme's success / warning / error / accent colours, as Rich styles (`use_theme` sets them)."""


def use_theme(variables: Mapping[str, str]) -> None:
    """Take the colours from a Textual theme's variables (`App.theme_variables`)."""
    for key, fallback in _DEFAULT_COLOURS.items():
        COLOURS[key] = variables.get(key) or fallback


def colour(name: str) -> str:
    """The theme colour `name` (success, warning, error, accent) as a Rich style."""
    return COLOURS.get(name, "")


def state_style(state: Shown | str) -> str:
    """The Rich style of a state word: bold in the theme's colour, `dim` for closed."""
    name = _STATE_COLOURS.get(state, "")
    if not name:
        return "dim"
    return ("" if state == "closing" else "bold ") + colour(name)


def badge(state: Shown) -> Text:
    """The coloured state word of the profile list."""
    return Text(LABELS.get(state, state), style=state_style(state))


SUMMARY_ORDER = ("up", "connecting", "reconnecting", "failed")


def summary_text(states: Iterable[Shown]) -> Text:
    """The header line: `2 up · 1 failed` (each count in its state's colour), or `no tunnel open`."""
    counts: dict[str, int] = {}
    for state in states:
        key = "connecting" if state == "starting" else str(state)
        counts[key] = counts.get(key, 0) + 1
    text = Text()
    for key in SUMMARY_ORDER:
        if counts.get(key):
            if text:
                text.append(" · ", style="dim")
            text.append(f"{counts[key]} {key}", style=state_style(key))
    if not text:
        text.append("no tunnel open", style="dim")
    elif counts.get("failed"):
        text.append("   h on a failed row: its error and hint", style="dim")
    return text


def duration(seconds: float) -> str:
    """`45s`, `3m 12s`, `2h 05m`, `3d 4h`."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def clock_time(epoch: float) -> str:
    """Local wall-clock time of an epoch, `HH:MM:SS`."""
    return time.strftime("%H:%M:%S", time.localtime(epoch))


SPARKS = "▁▂▃▄▅▆▇█"
SPARK_COLUMNS = 50
"""The sparkline's width: five minutes of one-a-second samples, six seconds a column."""
SPARK_FLOOR = 16 * 1024.0
"""Bytes/s the top of the sparkline stands for at least: an idle tunnel's few bytes (the health
check's) stay low bars instead of filling the scale."""
IDLE_RATE = 1024.0
"""Below this many bytes/s the list's rate column is blank."""
HEALTH_COLOURS = {"ok": "success", "warning": "warning", "error": "error"}
"""Health level -> theme colour (`colour`); an error is bold too."""


def sparkline(
    values: Sequence[float], columns: int = SPARK_COLUMNS, per: int = 6, floor: float = SPARK_FLOOR
) -> str:
    """The last `columns` × `per` values as bars, newest on the right; each bar the highest of
    its `per` values, scaled to the highest of all (at least `floor`). "" for no values."""
    if not values:
        return ""
    recent = list(values)[-columns * per :]
    start = len(recent) % per
    buckets = [max(recent[:start])] if start else []
    buckets += [max(recent[i : i + per]) for i in range(start, len(recent), per)]
    top = max(*buckets, floor)
    steps = len(SPARKS) - 1
    return "".join(SPARKS[min(steps, round(v / top * steps))] for v in buckets)


def rate_cell(rate: float | None) -> str:
    """The list's rate column: "2.1 MB/s", blank when idle or not counted."""
    if rate is None or rate < IDLE_RATE:
        return ""
    return f"{human_bytes(rate)}/s"


def health_line(health: Health | None, *, checking: bool) -> Text:
    """The detail pane's "health" row: the last check, or that one is under way."""
    if health is None:
        return Text("checking…" if checking else "not checked yet", style="dim italic")
    return Text(
        health.summary(),
        style=("bold " if health.level == "error" else "") + colour(HEALTH_COLOURS[health.level]),
    )


def _row(text: Text, label: str, value: str | Text, style: str = "") -> None:
    text.append(f"{label:<12}", style="bold")
    if isinstance(value, Text):
        text.append_text(value)
    else:
        text.append(value, style=style)
    text.append("\n")


def profile_text(profile: Profile) -> Text:
    """Bastion, endpoint, database/user and the rest of what a profile says."""
    text = Text()
    text.append(profile.name, style="bold underline")
    if profile.description:
        text.append(f" — {printable(profile.description)}", style="italic")
    text.append("\n")
    _row(text, "bastion", str(profile.bastion) if profile.bastion else "— (none)")
    if profile.transport != "ssh":
        _row(text, "transport", printable(describe_transport(profile)))
    if profile.identity_file:
        _row(text, "key", str(profile.identity_file))
    _row(text, "endpoint", str(profile.endpoint) if profile.endpoint else "— (from the cluster)")
    _row(text, "database", f"{profile.database} as {profile.user}")
    _row(text, "password", profile.password)
    _row(text, "local port", str(profile.local_port) if profile.local_port else "any free port")
    if profile.cluster:
        where = " ".join(x for x in (profile.region, profile.aws_profile) if x)
        _row(text, "cluster", f"{profile.cluster}" + (f"  ({where})" if where else ""))
    return text


def tunnel_text(
    view: TunnelStatus | None,
    *,
    connecting: bool,
    last_error: str | None,
    now: float,
    history: Sequence[float] = (),
    health: Health | None = None,
    health_checking: bool = False,
) -> Text:
    """Tunnel state: up since, port, the database's health, open connections, traffic with its
    sparkline (`history`: bytes/s a second, oldest first), reconnects, last error."""
    text = Text()
    state: Shown = CONNECTING if connecting else (view.state if view else TunnelState.STOPPED)
    if state == TunnelState.STOPPED and last_error:
        state = TunnelState.FAILED
    _row(text, "tunnel", badge(state))
    if connecting:
        _row(text, "", "press enter or esc to cancel", "dim")
    if view is not None and is_open(view):
        if view.local_port:
            _row(text, "listening", f"127.0.0.1:{view.local_port}", "bold")
        if view.since:
            _row(text, "up since", f"{clock_time(view.since)}  ({duration(now - view.since)} ago)")
        if view.state is TunnelState.UP and (health is not None or health_checking):
            _row(text, "health", health_line(health, checking=health_checking))
        _row(text, "connections", str(view.connections))
        if view.bytes_sent is not None and view.bytes_received is not None:
            _row(
                text,
                "traffic",
                f"↑ {human_bytes(view.bytes_sent)} sent  ↓ {human_bytes(view.bytes_received)} received",
            )
            rate = f"↑ {human_bytes(view.rate_sent or 0)}/s  ↓ {human_bytes(view.rate_received or 0)}/s"
            if history:  # the history is sampled apart from this status: it may lag it
                now_rate = (view.rate_sent or 0) + (view.rate_received or 0)
                rate += f"  (peak {human_bytes(max(*history, now_rate))}/s)"
            _row(text, "rate", rate)
            if history:
                spark = Text(sparkline(history), style=colour("accent"))
                spark.append("  5 min", style="dim")
                _row(text, "activity", spark)
        if view.reconnects:
            _row(text, "reconnects", str(view.reconnects))
    error = (view.error if view is not None else None) or last_error
    if error:
        _row(text, "last error", error, colour("error"))
    return text


# ----------------------------------------------------------------------------- cluster status


def cluster_text(status: Database) -> Text:
    """Status, engine and mode, capacity or paused, endpoints and members of a cluster."""
    text = Text()
    state = status.status or "unknown"
    style = "bold " + colour({"available": "success", "stopped": "error"}.get(state, "warning"))
    _row(text, "cluster", status.id or "?")
    _row(text, "status", state, style)
    engine, version, mode = status.engine, status.engine_version, status.engine_mode
    if engine or mode:
        parts = [(engine or "?") + (f" {version}" if version else ""), f"mode {mode or '?'}"]
        _row(text, "engine", ", ".join(parts))
    capacity = status.capacity_text
    if status.paused:
        capacity = f"{capacity}: paused, the first connection resumes it"
    kind = status.type_text
    _row(text, "capacity", capacity + (f"  ({kind})" if kind else ""))
    for label, value in (("writer", status.endpoint), ("reader", status.reader_endpoint)):
        if value:
            _row(text, label, f"{value}:{status.port}" if status.port else value)
    for custom in status.custom_endpoints:
        _row(text, "custom", custom.endpoint)
    for i, member in enumerate(status.members):
        _row(text, "members" if i == 0 else "", member_text(member))
    return text


def member_text(member: Member) -> str:
    """`id (writer), status`."""
    out = f"{member.id} ({member.role})"
    return out + (f", {member.status}" if member.status else "")
