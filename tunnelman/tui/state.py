"""What the TUI knows about each profile: its tunnel, its cluster, what is in progress, what failed.

One `ProfileState` per profile, kept by `UIState`; the app's actions change it through the methods
here and the screens only read it. No Textual: the rules (a cancelled attempt is not a failure, the
worker opening a tunnel has the last word, …) are tested without a Pilot
(tests/test_tui_state.py).
Worker threads only read it (`tunnel_of`); every change happens on the UI thread.
Live figures: `sample_rate()` (once a second) keeps the last five minutes of the tunnel's rate
for the sparkline; `health` is the last check of the database behind an up tunnel
(`core/health.py`), redone every `HEALTH_INTERVAL` and after each time it comes up.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal

from tunnelman.core.errors import Cancelled
from tunnelman.core.tunnel import TunnelState, TunnelStatus

if TYPE_CHECKING:
    from tunnelman.core.aws import Database
    from tunnelman.core.health import Health

CONNECTING: Final = "connecting"
"""The list's word while the TUI's own attempt to open a tunnel is under way."""

Shown = TunnelState | Literal["connecting"]
"""What the profile list shows in the state column."""

OPEN_STATES: Final = frozenset({TunnelState.STARTING, TunnelState.UP, TunnelState.RECONNECTING})
CANCELLED: Final = str(Cancelled())
"""The `error` of a status whose start was cancelled (a status carries text, not the class)."""

RATE_HISTORY: Final = 300
"""Rate samples kept per profile: five minutes at one a second."""
HEALTH_INTERVAL: Final = 30.0
"""Seconds between two health checks of an up tunnel."""

RUNNING: Final = frozenset({"available", "starting", "backing-up", "modifying"})
NOT_RUNNING: Final = frozenset({"stopped", "stopping"})


def is_open(status: TunnelStatus | None) -> bool:
    """Starting, up or reconnecting: something holds (or is getting) the local port."""
    return status is not None and status.state in OPEN_STATES


def stopped(name: str) -> TunnelStatus:
    """The status shown the moment a person closes a tunnel, before the host has done it."""
    return TunnelStatus(
        name=name,
        state=TunnelState.STOPPED,
        local_port=None,
        since=None,
        reconnects=0,
        error=None,
        connections=0,
    )


@dataclass
class ProfileState:
    """One profile's UI state: the last tunnel status, the attempt in progress, the cluster."""

    name: str
    tunnel: TunnelStatus | None = None
    connecting: threading.Event | None = None  # the cancel event of the attempt under way
    last_error: str | None = None
    cluster: Database | None = None
    cluster_error: str | None = None
    cluster_loading: bool = False
    rates: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=RATE_HISTORY)
    )
    """Bytes per second both ways, one sample a second, oldest first (while the tunnel is open)."""
    health: Health | None = None
    health_checking: bool = False
    health_at: float | None = None  # clock time the last check started
    health_since: float | None = None  # the tunnel's `since` that check was for

    # ------------------------------------------------------------------ reading

    @property
    def is_open(self) -> bool:
        return is_open(self.tunnel)

    @property
    def busy(self) -> bool:
        """A tunnel is being opened or the cluster's status is being fetched."""
        return self.connecting is not None or self.cluster_loading

    def shown(self) -> tuple[Shown, int | None]:
        """(state, local port) for the list."""
        if self.connecting is not None:
            return CONNECTING, None
        tunnel = self.tunnel
        if tunnel is None:
            return (TunnelState.FAILED if self.last_error else TunnelState.STOPPED), None
        return tunnel.state, tunnel.local_port if is_open(tunnel) else None

    def cluster_running(self) -> bool | None:
        """True / False when the cluster's status says so; None when unknown or in between."""
        if self.cluster is None:
            return None
        if self.cluster.status in RUNNING:
            return True
        if self.cluster.status in NOT_RUNNING:
            return False
        return None

    def rate(self) -> float | None:
        """The tunnel's current bytes per second both ways; None when not up or not counted."""
        tunnel = self.tunnel
        if tunnel is None or tunnel.state is not TunnelState.UP:
            return None
        if tunnel.rate_sent is None and tunnel.rate_received is None:
            return None
        return (tunnel.rate_sent or 0.0) + (tunnel.rate_received or 0.0)

    def health_shown(self) -> Health | None:
        """The last check, while the tunnel it was made through is still up."""
        tunnel = self.tunnel
        if tunnel is None or tunnel.state is not TunnelState.UP or self.connecting is not None:
            return None
        return self.health if self.health_since == tunnel.since else None

    def wants_cluster(self) -> bool:
        """Nothing known about the cluster yet, and nothing asked: fetch on first look."""
        return self.cluster is None and self.cluster_error is None and not self.cluster_loading

    # ------------------------------------------------------------------ tunnel

    def begin_connect(self) -> threading.Event:
        """A new attempt to open the tunnel; returns its cancel event."""
        cancel = threading.Event()
        self.connecting = cancel
        self.last_error = None
        self.tunnel = None
        return cancel

    def cancel_connect(self) -> bool:
        """Abort the attempt under way; False when there is none."""
        cancel, self.connecting = self.connecting, None
        if cancel is None:
            return False
        cancel.set()
        self.tunnel = None
        return True

    def connect_finished(self, cancel: threading.Event) -> None:
        """The worker of the attempt `cancel` belongs to is done (a newer attempt stays)."""
        if self.connecting is cancel:
            self.connecting = None

    def connect_failed(self, message: str) -> None:
        self.last_error = message
        self.connecting = None

    def closing(self) -> None:
        self.tunnel = stopped(self.name)

    def changed(self, status: TunnelStatus | None) -> bool:
        """News about the tunnel (its thread, the agent, a poll); whether it changed anything.

        None: the host no longer holds it. While the TUI's own attempt runs, its worker has the
        last word (the agent's watch may report that attempt's steps).
        """
        if self.connecting is not None:
            return False
        if status is None or (status.state is TunnelState.FAILED and status.error == CANCELLED):
            self.tunnel = None  # a cancel is not a failure worth showing
            return True
        if status.state is TunnelState.STOPPED and self.tunnel is None:
            return False
        if status.state is TunnelState.STARTING:
            return False  # news from an attempt that was cancelled meanwhile
        self.tunnel = status
        if status.error and status.state is TunnelState.FAILED:
            self.last_error = status.error
        return True

    # ------------------------------------------------------------------ live figures

    def sample_rate(self) -> None:
        """Once a second: the current rate into the history; closed, the history goes."""
        if not self.is_open or self.connecting is not None:
            self.rates.clear()
            return
        self.rates.append(self.rate() or 0.0)

    def wants_health(self, now: float, interval: float = HEALTH_INTERVAL) -> bool:
        """Up, no check running, and none yet since it came up or the last is `interval` old
        (not for a paused cluster; only the first for an idle one that may auto-pause)."""
        tunnel = self.tunnel
        if self.health_checking or self.connecting is not None or tunnel is None:
            return False
        if tunnel.state is not TunnelState.UP or not tunnel.local_port:
            return False
        cluster = self.cluster
        if cluster is not None and cluster.paused:
            return False  # a check would resume a paused Serverless cluster
        if self.health_since != tunnel.since or self.health_at is None:
            return True
        if now - self.health_at < interval:
            return False
        # A check every 30 s would keep a cluster that may auto-pause from ever pausing: while
        # nobody uses the tunnel, its first check is the only one.
        return not (cluster is not None and cluster.may_auto_pause and tunnel.connections == 0)

    def begin_health(self, now: float) -> float | None:
        """A check starts; returns the `since` of the tunnel it checks."""
        self.health_checking = True
        self.health_at = now
        return self.tunnel.since if self.tunnel is not None else None

    def health_checked(self, since: float | None, health: Health) -> None:
        """A check made through the tunnel that came up at `since` is done."""
        self.health_checking = False
        self.health_since = since
        self.health = health

    # ------------------------------------------------------------------ cluster

    def begin_cluster(self) -> None:
        self.cluster_loading = True
        self.cluster_error = None

    def cluster_loaded(self, database: Database) -> None:
        self.cluster_loading = False
        self.cluster = database

    def cluster_failed(self, message: str) -> None:
        self.cluster_loading = False
        self.cluster_error = message

    def forget_cluster(self) -> None:
        """The profile was saved: its cluster may be another one now."""
        self.cluster = None
        self.cluster_error = None


class UIState:
    """Every profile's `ProfileState`, by name (made on first change, kept across reloads)."""

    def __init__(self) -> None:
        self._profiles: dict[str, ProfileState] = {}

    def __getitem__(self, name: str) -> ProfileState:
        """The state of `name`, made if it has none yet (UI thread only)."""
        state = self._profiles.get(name)
        if state is None:
            state = self._profiles[name] = ProfileState(name)
        return state

    def get(self, name: str) -> ProfileState | None:
        return self._profiles.get(name)

    def __iter__(self) -> Iterator[ProfileState]:
        return iter(list(self._profiles.values()))

    def shown(self, name: str) -> tuple[Shown, int | None]:
        state = self._profiles.get(name)
        return state.shown() if state is not None else (TunnelState.STOPPED, None)

    def tunnel_of(self, name: str) -> TunnelStatus | None:
        """The last known status (any thread)."""
        state = self._profiles.get(name)
        return state.tunnel if state is not None else None

    def is_connecting(self, name: str) -> bool:
        state = self._profiles.get(name)
        return state is not None and state.connecting is not None

    def open_tunnels(self) -> list[str]:
        """Profiles whose tunnel is open, then those being opened."""
        states = list(self._profiles.values())
        open_ = [s.name for s in states if s.is_open]
        return open_ + [s.name for s in states if s.connecting is not None and s.name not in open_]

    def cancel_all(self) -> None:
        """Set every attempt's cancel event (the app is going away)."""
        for state in list(self._profiles.values()):
            if state.connecting is not None:
                state.connecting.set()
