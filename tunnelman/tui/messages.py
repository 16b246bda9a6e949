"""What the TUI's workers tell the app: tunnel news, cluster status, health, a notice, a failure.

Workers run in threads and never touch the state model or widgets; they post one of these and the
app's handlers (on the UI thread) update `UIState` and redraw.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from textual.message import Message

if TYPE_CHECKING:
    from tunnelman.core.aws import Database, Discovery
    from tunnelman.core.health import Health
    from tunnelman.core.tunnel import TunnelStatus


class TunnelChanged(Message):
    """A tunnel's state changed (from the tunnel's thread, a worker, or a poll); None: gone."""

    def __init__(self, name: str, status: TunnelStatus | None) -> None:
        super().__init__()
        self.name = name
        self.status = status


class ConnectFinished(Message):
    """The worker opening a tunnel is done, whatever the outcome."""

    def __init__(self, name: str, cancel: threading.Event) -> None:
        super().__init__()
        self.name = name
        self.cancel = cancel


class ClusterLoaded(Message):
    """Cluster status arrived from AWS."""

    def __init__(self, name: str, status: Database) -> None:
        super().__init__()
        self.name = name
        self.status = status


class Discovered(Message):
    """Discovery results (clusters, instances, bastions), for the discover screen."""

    def __init__(self, found: Discovery) -> None:
        super().__init__()
        self.found = found


class Notice(Message):
    """A worker's success, to show as a notification (and maybe reload profiles)."""

    def __init__(self, text: str, *, reload: bool = False, select: str | None = None) -> None:
        super().__init__()
        self.text = text
        self.reload = reload
        self.select = select


class TaskFailed(Message):
    """A worker failed: `kind` is its subject (tunnel, cluster, write, …), `name` its profile."""

    def __init__(self, kind: str, name: str, error: Exception) -> None:
        super().__init__()
        self.kind = kind
        self.name = name
        self.error = error


class HealthChecked(Message):
    """A health check of the database behind `name`'s tunnel (up since `since`) is done."""

    def __init__(self, name: str, since: float | None, health: Health) -> None:
        super().__init__()
        self.name = name
        self.since = since
        self.health = health


class ClusterProgress(Message):
    """A cluster start / stop being waited for: its status now (`done`: the wait is over)."""

    def __init__(self, name: str, status: str, *, done: bool = False) -> None:
        super().__init__()
        self.name = name
        self.status = status
        self.done = done


class RatesKnown(Message):
    """The host's own record of a tunnel's last rates (the agent kept them while no TUI ran)."""

    def __init__(self, name: str, rates: list[float]) -> None:
        super().__init__()
        self.name = name
        self.rates = rates
