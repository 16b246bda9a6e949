"""What happened to each tunnel, as a log people read: opened, clients, reconnecting, back up, failed.

`EventRecorder` turns a tunnel's successive statuses (the `on_status` callbacks) and its clients
(`Tunnel.on_client`) into `TunnelEvent`s and appends each, as one JSON line, to the events file
(`events_path()`: `events.jsonl` beside tunnelman's log, so it outlives the agent and the TUI;
`tunnelman log` and the TUI read it). The agent records the tunnels it holds, `tunnelman up` the
one it holds in the foreground, the TUI the cluster states it sees change (`cluster`). A client
connection shorter than `BRIEF` (the TUI's health check every 30 s, a quick `psql -c`) is not
listed, so the log keeps what matters for days. One line is one `write` on a file opened for
appending, so writers in several processes do not interleave; the file is rotated at `MAX_BYTES`
(one old file kept).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunnelman.core.tunnel.base import TunnelState

if TYPE_CHECKING:
    from tunnelman.core.tunnel.base import TunnelStatus

__all__ = [
    "KINDS",
    "EventRecorder",
    "TunnelEvent",
    "events_path",
    "read_backlog",
    "read_events",
    "tail_events",
]

MAX_BYTES = 1 << 20
BRIEF = 2.0  # seconds: a client connection shorter than this is not listed
KINDS = (
    "opened",
    "client-connected",
    "client-disconnected",
    "reconnecting",
    "retrying",
    "back-up",
    "failed",
    "closed",
    "cluster",
)


def events_path() -> Path:
    """`events.jsonl` beside tunnelman's log file (`$TUNNELMAN_LOG` moves both)."""
    from tunnelman.core.logs import default_log_path

    return default_log_path().with_name("events.jsonl")


@dataclass(frozen=True)
class TunnelEvent:
    """One thing that happened to the tunnel of profile `name` at `time` (epoch seconds)."""

    time: float
    name: str
    kind: str  # one of KINDS
    message: str
    extra: dict[str, Any] = field(default_factory=dict)  # port, connections, after (s), …

    def to_json(self) -> dict[str, Any]:
        return {
            "time": dt.datetime.fromtimestamp(self.time, tz=dt.UTC).isoformat(),
            "name": self.name,
            "event": self.kind,
            "message": self.message,
            **self.extra,
        }

    @classmethod
    def from_json(cls, data: object) -> TunnelEvent | None:
        """The event a line of the file holds; None for anything else (a torn or foreign line)."""
        if not isinstance(data, dict):
            return None
        name, kind, message, when = (data.get(k) for k in ("name", "event", "message", "time"))
        if not (isinstance(name, str) and isinstance(kind, str) and isinstance(message, str)):
            return None
        try:
            stamp = dt.datetime.fromisoformat(str(when)).timestamp()
        except ValueError:
            return None
        known = {"time", "name", "event", "message"}
        return cls(stamp, name, kind, message, {k: v for k, v in data.items() if k not in known})


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds // 60:.0f} min {seconds % 60:.0f} s"


class EventRecorder:
    """Events from statuses and clients, appended to `path` (None: kept in `recent` only)."""

    def __init__(self, path: Path | None, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, TunnelState] = {}
        self._lost_at: dict[str, float] = {}
        self._errors: dict[str, str | None] = {}
        self.recent: list[TunnelEvent] = []  # this recorder's own, newest last (tests, the TUI)
        self._pending: list[TunnelEvent] = []  # "connected" events not yet BRIEF seconds old
        self._timer: threading.Timer | None = None

    def status(self, status: TunnelStatus) -> TunnelEvent | None:
        """Record what this status says happened, if anything (call on every state change)."""
        now = self._clock()
        with self._lock:
            before = self._last.get(status.name)
            self._last[status.name] = status.state
            error_before = self._errors.get(status.name)
            self._errors[status.name] = status.error
            event = self._event_for(status, before, error_before, now)
        if event is not None:
            self._record(event)
        return event

    def _event_for(
        self,
        status: TunnelStatus,
        before: TunnelState | None,
        error_before: str | None,
        now: float,
    ) -> TunnelEvent | None:
        name, state = status.name, status.state
        if state is TunnelState.UP and before is TunnelState.RECONNECTING:
            lost = self._lost_at.pop(name, now)
            return TunnelEvent(
                now,
                name,
                "back-up",
                f"back up after {_duration(now - lost)} on 127.0.0.1:{status.local_port}",
                {"after": round(now - lost, 3), "reconnects": status.reconnects},
            )
        if state is TunnelState.UP and before is not TunnelState.UP:
            return TunnelEvent(
                now, name, "opened", f"listening on 127.0.0.1:{status.local_port}",
                {"port": status.local_port},
            )  # fmt: skip
        if state is TunnelState.RECONNECTING and before is TunnelState.UP:
            self._lost_at[name] = now
            reason = status.error or "the connection to the bastion was lost"
            return TunnelEvent(now, name, "reconnecting", reason)
        if state is TunnelState.RECONNECTING and status.error and status.error != error_before:
            return TunnelEvent(now, name, "retrying", status.error)
        if state is TunnelState.FAILED and before is not TunnelState.FAILED:
            self._lost_at.pop(name, None)
            return TunnelEvent(now, name, "failed", status.error or "the tunnel failed")
        if state is TunnelState.STOPPED and before not in (None, TunnelState.STOPPED):
            self._lost_at.pop(name, None)
            return TunnelEvent(now, name, "closed", "closed")
        return None

    def client(self, status: TunnelStatus, arrived: bool) -> TunnelEvent | None:
        """A local client connected (`arrived`) or went; `status.connections` are open now.

        A connection shorter than `BRIEF` seconds (the TUI's health check, a quick `psql -c`) is
        not listed: its "connected" waits that long, and is dropped with its "disconnected" when
        it ends sooner. Returns the event recorded now, if any.
        """
        now = self._clock()
        if arrived:
            event = TunnelEvent(
                now,
                status.name,
                "client-connected",
                f"a client connected ({status.connections} open)",
                {"connections": status.connections},
            )
            with self._lock:
                self._pending.append(event)
            self._schedule_flush()
            return None
        with self._lock:
            brief = next(
                (e for e in self._pending if e.name == status.name and now - e.time < BRIEF),
                None,
            )
            if brief is not None:
                self._pending.remove(brief)
                return None
        self.flush()
        event = TunnelEvent(
            now,
            status.name,
            "client-disconnected",
            f"a client disconnected ({status.connections} open)",
            {"connections": status.connections},
        )
        self._record(event)
        return event

    def flush(self) -> None:
        """Record the "connected" events of connections open for `BRIEF` seconds by now."""
        now = self._clock()
        with self._lock:
            # A timer may fire a hair early: what is nearly due is due.
            due = [e for e in self._pending if now - e.time >= BRIEF - 0.05]
            self._pending = [e for e in self._pending if e not in due]
        for event in due:
            self._record(event)

    def _schedule_flush(self) -> None:
        with self._lock:
            if self._timer is not None:
                return
            self._timer = threading.Timer(BRIEF, self._timed_flush)
            self._timer.daemon = True
            self._timer.start()

    def _timed_flush(self) -> None:
        with self._lock:
            self._timer = None
        self.flush()
        with self._lock:
            again = bool(self._pending)
        if again:
            self._schedule_flush()

    def cluster(self, name: str, status_text: str, message: str) -> TunnelEvent:
        """The cluster of profile `name` is now `status_text` (an RDS status word), as seen by
        whoever asked AWS (the TUI); `message` says it for people."""
        event = TunnelEvent(self._clock(), name, "cluster", message, {"status": status_text})
        self._record(event)
        return event

    def _record(self, event: TunnelEvent) -> None:
        with self._lock:
            self.recent.append(event)
            del self.recent[:-1000]
        if self.path is not None:
            append(self.path, event)


def append(path: Path, event: TunnelEvent) -> None:
    """One line, one write; never raises (a log that cannot be written must not stop a tunnel)."""
    line = (json.dumps(event.to_json(), ensure_ascii=False) + "\n").encode("utf-8")
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(OSError):
            if path.stat().st_size + len(line) > MAX_BYTES:
                os.replace(path, path.with_name(path.name + ".1"))
        fd = os.open(
            path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o600
        )
        try:
            os.write(fd, line)
        finally:
            os.close(fd)


def _parse(lines: list[bytes]) -> Iterator[TunnelEvent]:
    for raw in lines:
        try:
            event = TunnelEvent.from_json(json.loads(raw))
        except ValueError:
            continue
        if event is not None:
            yield event


def read_events(path: Path, name: str | None = None) -> list[TunnelEvent]:
    """Every event in the file (and the rotated one before it), oldest first; of `name` only."""
    return read_backlog(path, name)[0]


def read_backlog(path: Path, name: str | None = None) -> tuple[list[TunnelEvent], int]:
    """`read_events`, and the offset in `path` they end at: `tail_events(…, offset=)` follows on
    from there, so nothing appended between the two calls is lost or listed twice."""
    events: list[TunnelEvent] = []
    end = 0
    for part in (path.with_name(path.name + ".1"), path):
        try:
            data = part.read_bytes()
        except OSError:
            continue
        if part == path:
            end = data.rfind(b"\n") + 1  # a line being written is left to the tail
            data = data[:end]
        events.extend(e for e in _parse(data.splitlines()) if name is None or e.name == name)
    return events, end


def tail_events(
    path: Path,
    name: str | None,
    stop: threading.Event,
    *,
    interval: float = 0.25,
    offset: int | None = None,
) -> Iterator[TunnelEvent]:
    """Events appended to the file from now on (or from byte `offset`), until `stop` (follows a
    rotation)."""
    offset = _size(path) if offset is None else offset
    inode = _inode(path)
    pending = b""
    while not stop.wait(interval):
        if _inode(path) != inode or _size(path) < offset:
            inode, offset, pending = _inode(path), 0, b""  # rotated: read the new file whole
        try:
            with path.open("rb") as fh:
                fh.seek(offset)
                chunk = fh.read()
        except OSError:
            continue
        offset += len(chunk)
        pending += chunk
        *lines, pending = pending.split(b"\n")
        yield from (e for e in _parse(lines) if name is None or e.name == name)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except OSError:
        return None
