"""Pure text for the TUI: state badges, durations, the detail pane's lines, cluster status.

No Textual here beyond Rich `Text`, so it is quick to test and the snapshots stay stable: every
time-dependent value takes `now` from the app's clock.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import fields, is_dataclass
from typing import TYPE_CHECKING, Any

from rich.text import Text

from tunnelman.core.profiles import printable

if TYPE_CHECKING:
    from tunnelman.core.profiles import Profile
    from tunnelman.tui.hosts import TunnelView

BADGES: dict[str, tuple[str, str]] = {
    "stopped": ("○ closed", "dim"),
    "connecting": ("◌ connecting…", "bold yellow"),
    "starting": ("◌ connecting…", "bold yellow"),
    "up": ("● up", "bold green"),
    "reconnecting": ("↻ reconnecting", "bold yellow"),
    "failed": ("✗ failed", "bold red"),
    "closing": ("◌ closing…", "yellow"),
}


def badge(state: str) -> Text:
    """The coloured state word of the profile list."""
    label, style = BADGES.get(state, (state, ""))
    return Text(label, style=style)


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
    view: TunnelView | None, *, connecting: bool, last_error: str | None, now: float
) -> Text:
    """Tunnel state: up since, port, open connections, reconnects, last error."""
    text = Text()
    state = "connecting" if connecting else (view.state if view else "stopped")
    if state == "stopped" and last_error:
        state = "failed"
    _row(text, "tunnel", badge(state))
    if connecting:
        _row(text, "", "press enter or esc to cancel", "dim")
    if view is not None and view.is_open:
        if view.local_port:
            _row(text, "listening", f"127.0.0.1:{view.local_port}", "bold")
        if view.since:
            _row(text, "up since", f"{clock_time(view.since)}  ({duration(now - view.since)} ago)")
        _row(text, "connections", str(view.connections))
        if view.reconnects:
            _row(text, "reconnects", str(view.reconnects))
    error = (view.error if view is not None else None) or last_error
    if error:
        _row(text, "last error", error, "red")
    return text


# ----------------------------------------------------------------------------- cluster status


def _get(obj: Any, *names: str) -> Any:
    """The first present attribute / key of `names` on a dataclass, object or mapping."""
    for name in names:
        if isinstance(obj, Mapping):
            if obj.get(name) is not None:
                return obj[name]
        elif getattr(obj, name, None) is not None:
            return getattr(obj, name)
    return None


def _as_items(obj: Any) -> Iterable[Any]:
    if obj is None:
        return ()
    if isinstance(obj, str | bytes) or not isinstance(obj, Iterable):
        return (obj,)
    return obj if not isinstance(obj, Mapping) else obj.items()


def cluster_text(status: Any) -> Text:
    """Status, engine and mode, capacity or paused, endpoints and members of a cluster."""
    text = Text()
    state = str(_get(status, "status", "Status") or "unknown")
    style = {"available": "bold green", "stopped": "bold red"}.get(state, "bold yellow")
    ident = _get(status, "id", "cluster", "DBClusterIdentifier")
    _row(text, "cluster", str(ident or "?"))
    _row(text, "status", state, style)
    engine = _get(status, "engine", "Engine")
    version = _get(status, "engine_version", "EngineVersion")
    mode = _get(status, "engine_mode", "EngineMode")
    if engine or mode:
        parts = [str(engine or "?") + (f" {version}" if version else ""), f"mode {mode or '?'}"]
        _row(text, "engine", ", ".join(parts))
    capacity_text = _get(status, "capacity_text")
    if capacity_text is not None:
        kind = _get(status, "type_text")
        paused = _get(status, "paused")
        if paused:
            capacity_text = f"{capacity_text}: paused, the first connection resumes it"
        _row(text, "capacity", f"{capacity_text}" + (f"  ({kind})" if kind else ""))
    else:
        capacity = _get(status, "capacity", "Capacity")
        acu_min = _get(status, "acu_min", "min_capacity", "MinCapacity")
        acu_max = _get(status, "acu_max", "max_capacity", "MaxCapacity")
        words = []
        if capacity == 0:
            words.append("paused (0 ACU): the first connection resumes it")
        elif capacity is not None:
            words.append(f"{capacity} ACU")
        if acu_min is not None or acu_max is not None:
            words.append(f"range {acu_min}–{acu_max} ACU")
        if words:
            _row(text, "capacity", ", ".join(words))
    for label, names in (
        ("writer", ("endpoint", "Endpoint")),
        ("reader", ("reader_endpoint", "ReaderEndpoint")),
    ):
        value = _get(status, *names)
        if value:
            port = _get(status, "port", "Port")
            _row(text, label, f"{value}:{port}" if port else str(value))
    for custom in _as_items(_get(status, "custom_endpoints", "CustomEndpoints")):
        _row(text, "custom", str(_get(custom, "endpoint", "Endpoint") or custom))
    members = list(_as_items(_get(status, "members", "DBClusterMembers")))
    for i, member in enumerate(members):
        _row(text, "members" if i == 0 else "", member_text(member))
    return text


def member_text(member: Any) -> str:
    """`id (writer)` from a member given as a dataclass, mapping or `(id, role)` pair."""
    if isinstance(member, tuple) and len(member) == 2:
        ident, role = member
    else:
        ident = _get(member, "id", "instance", "DBInstanceIdentifier") or member
        role = _get(member, "role")
        if role is None:
            writer = _get(member, "writer", "is_writer", "IsClusterWriter")
            role = None if writer is None else ("writer" if writer else "reader")
    extra = _get(member, "status") if not isinstance(member, tuple) else None
    out = f"{ident}" + (f" ({role})" if role else "")
    return out + (f", {extra}" if extra else "")


def public_fields(obj: Any) -> dict[str, Any]:
    """A dataclass or mapping as a plain dict (for discovery rows)."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name) for f in fields(obj)}
    if isinstance(obj, Mapping):
        return dict(obj)
    return {k: v for k, v in vars(obj).items() if not k.startswith("_")}
