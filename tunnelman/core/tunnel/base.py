"""What every engine shares: the state machine, status, callbacks, start guard, teardown contract,
the reconnect loop with its one backoff, the route check, and the local clients' wait for "up".

An engine (`paramiko_engine.ParamikoTunnel`, `openssh.OpenSSHTunnel`) supplies four things:
- `_start()`: connect, test the forward, bind 127.0.0.1:port; return the bound port. Runs under
  the start guard, which turns any exception into FAILED (after `_teardown()`) and re-raises it.
- `_reconnect_once()`: one attempt to get the link back (supervised tunnels); True once it is
  back, False when stopping; raises TunnelmanError when this attempt failed.
- `_close_for_failure()`: close the port and the link (before FAILED is reported, so whoever
  reacts to it finds nothing listening and nothing is forwarded to the wrong host).
- `_teardown()`: the stop contract: after it returns, the port is closed, the link is closed and
  our threads have ended or will end within moments; it may run more than once, and from any
  thread (also from the engine's own watcher).

States: STOPPED → STARTING → UP ⇄ RECONNECTING → FAILED | STOPPED. Both engines hold the local
port while reconnecting: a client that connects meanwhile waits (`_await_up`) for up to
connect_timeout and cuts the backoff pause short, so the first query after the bastion or the
link returns is what brings the tunnel back.
"""

from __future__ import annotations

import abc
import datetime as dt
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import TYPE_CHECKING, Self

from tunnelman.core.errors import (
    AuthenticationFailed,
    Cancelled,
    ConfigError,
    HostKeyError,
    SSHKeyError,
    TunnelError,
    TunnelmanError,
)
from tunnelman.core.logs import get_logger
from tunnelman.core.profiles import require_route
from tunnelman.core.ssh.known_hosts import HostKeyPolicy
from tunnelman.core.tunnel.traffic import Traffic

if TYPE_CHECKING:
    import paramiko

    from tunnelman.core.profiles import Profile
    from tunnelman.core.ssh import Identity, PassphrasePrompt

__all__ = [
    "BACKOFF_FIRST",
    "BACKOFF_MAX",
    "FINAL_ERRORS",
    "Backoff",
    "Capabilities",
    "Tunnel",
    "TunnelState",
    "TunnelStatus",
]

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0

# On a reconnect these end the tunnel for good: retrying cannot fix them, and a changed host key
# must never be retried into (the port closes so nothing is forwarded to the wrong host).
FINAL_ERRORS = (HostKeyError, AuthenticationFailed, SSHKeyError, ConfigError)


class TunnelState(StrEnum):
    STARTING = "starting"
    UP = "up"
    RECONNECTING = "reconnecting"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass(frozen=True)
class TunnelStatus:
    """A snapshot of one tunnel, as `status --json` and the TUI show it."""

    name: str
    state: TunnelState
    local_port: int | None
    since: float | None  # epoch of the last time it came UP
    reconnects: int
    error: str | None
    connections: int
    # What the tunnel carried (None: this engine cannot count here, e.g. ssh owns the port on macOS)
    bytes_sent: int | None = None  # client → database, since the tunnel opened
    bytes_received: int | None = None  # database → client
    rate_sent: float | None = None  # bytes per second, over the last few seconds
    rate_received: float | None = None
    # The agent closes a lingering one-shot tunnel at this epoch unless a client connects first.
    linger_until: float | None = None

    def to_json(self) -> dict[str, object]:
        since = (
            dt.datetime.fromtimestamp(self.since, tz=dt.UTC).isoformat()
            if self.since is not None
            else None
        )
        return {
            "name": self.name,
            "state": str(self.state),
            "local_port": self.local_port,
            "since": since,
            "reconnects": self.reconnects,
            "error": self.error,
            "connections": self.connections,
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "rate_sent": None if self.rate_sent is None else round(self.rate_sent),
            "rate_received": None if self.rate_received is None else round(self.rate_received),
            "linger_until": (
                dt.datetime.fromtimestamp(self.linger_until, tz=dt.UTC).isoformat()
                if self.linger_until is not None
                else None
            ),
        }


@dataclass(frozen=True)
class Capabilities:
    """Where the engines differ, for callers that must know (instead of isinstance checks)."""

    engine: str  # the profile's `engine` value
    instance_connect: bool  # can push an EC2 Instance Connect key before logging in
    decrypts_keys: bool  # can ask for a key's passphrase (otherwise the key must be in ssh-agent)
    serves_checked_transport: bool  # `adopt()` forwards over the transport `check` verified
    counts_connections: bool  # status.connections is the number of open client connections


class Backoff:
    """Reconnect pauses: 0.5 s doubling to 30 s, ±20 % jitter; cut short by a waiting client.

    `wake()` (a local client needs the tunnel now) ends the current pause, though never sooner
    than 0.5 s after the previous attempt began, so a burst of clients cannot hammer the bastion.
    """

    def __init__(self, stopping: threading.Event) -> None:
        self._stopping = stopping
        self._woken = threading.Event()
        self._delay = BACKOFF_FIRST
        self._last_attempt = 0.0

    def reset(self) -> None:
        self._delay = BACKOFF_FIRST

    def attempt(self) -> None:
        """Call as an attempt begins."""
        self._woken.clear()
        self._last_attempt = time.monotonic()

    def wake(self) -> None:
        self._woken.set()

    def pause(self) -> None:
        """Sleep before the next attempt (returns at once when stopping)."""
        pause = min(self._delay, BACKOFF_MAX) * random.uniform(0.8, 1.2)
        self._delay = min(self._delay * 2, BACKOFF_MAX)
        deadline = time.monotonic() + pause
        while not self._stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if self._woken.wait(remaining):
                self._woken.clear()
                since = time.monotonic() - self._last_attempt
                if since < BACKOFF_FIRST:
                    self._stopping.wait(BACKOFF_FIRST - since)
                return


class Tunnel(abc.ABC):
    """127.0.0.1:port → bastion → endpoint for one profile. Built by `open_tunnel(profile, …)`."""

    capabilities: Capabilities

    def __init__(
        self,
        profile: Profile,
        *,
        local_port: int | None = None,
        host_keys: HostKeyPolicy = HostKeyPolicy(),  # noqa: B008 - frozen, shared safely
        passphrase: PassphrasePrompt | None = None,
        on_status: Callable[[TunnelStatus], None] | None = None,
        cancel: threading.Event | None = None,
        supervise: bool = False,
    ) -> None:
        self.profile = profile
        self._given = profile  # as the file says, before ssh_config is applied (at start)
        self._requested_port = local_port if local_port is not None else profile.local_port
        self._host_keys = host_keys
        self._passphrase = passphrase
        self._on_status = on_status
        self._cancel = cancel
        self._supervise = supervise
        self._log = get_logger(f"tunnel.{profile.name}")

        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._state = TunnelState.STOPPED
        self._started = False
        self._error: str | None = None
        self._since: float | None = None
        self._reconnects = 0
        self._connections = 0
        # Engines count into it (or give it the kernel's counters); None: they cannot here.
        self._traffic: Traffic | None = Traffic()
        # Told of each local client that connects (True) or goes (False): the event log.
        # Set before start(); engines where ssh accepts the clients itself do not call it.
        self.on_client: Callable[[TunnelStatus, bool], object] | None = None
        self._port: int | None = None
        self._watcher: threading.Thread | None = None
        self._stopping = threading.Event()
        self._backoff = Backoff(self._stopping)
        # Clocks are attributes so tests can simulate a suspend without touching the system clock.
        self._wall: Callable[[], float] = time.time
        self._mono: Callable[[], float] = time.monotonic

    # ------------------------------------------------------------------------- public API

    @property
    def local_port(self) -> int | None:
        return self._port

    @property
    def status(self) -> TunnelStatus:
        with self._lock:
            return self._snapshot()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> int:
        """Connect, check the forward, listen on 127.0.0.1; return the port.

        Raises TunnelmanError subclasses and leaves no port open on failure; `cancel.set()` from
        another thread aborts it (`Cancelled`, a TunnelError saying "cancelled").
        """
        return self._run_start(self._start)

    @abc.abstractmethod
    def adopt(self, transport: paramiko.Transport, identity: Identity) -> int:
        """Start over a transport `tunnelman check` connected and verified step by step."""

    def stop(self) -> None:
        """Close the port and the SSH session; wait for our threads. Idempotent, fast."""
        with self._lock:
            if self._state == TunnelState.STOPPED and self._stopping.is_set():
                return
        self._stopping.set()
        self._backoff.wake()
        with self._lock:
            self._changed.notify_all()
        self._teardown()
        if self._started:
            self._set_state(TunnelState.STOPPED)

    # ------------------------------------------------------------------------- for engines

    @abc.abstractmethod
    def _start(self) -> int: ...

    @abc.abstractmethod
    def _reconnect_once(self) -> bool: ...

    @abc.abstractmethod
    def _close_for_failure(self) -> None: ...

    @abc.abstractmethod
    def _teardown(self) -> None: ...

    def _run_start(self, body: Callable[[], int]) -> int:
        with self._lock:
            if self._started or self._stopping.is_set():
                raise TunnelError(f"tunnel '{self.profile.name}' was already started or stopped")
            self._started = True
        self._set_state(TunnelState.STARTING)
        try:
            return body()
        except BaseException as exc:
            self._stopping.set()
            self._teardown()
            if isinstance(exc, TunnelmanError):
                self._set_state(TunnelState.FAILED, error=str(exc))
            elif isinstance(exc, KeyboardInterrupt):
                self._set_state(TunnelState.FAILED, error="interrupted")
            else:
                self._set_state(TunnelState.FAILED, error=f"internal error: {exc!r}")
            raise

    def _local_port_wanted(self) -> int:
        return self._requested_port or 0

    def _require_route(self) -> None:
        """Both ends of the forward must be known before any work, and the engine must fit."""
        profile = self.profile
        require_route(profile)
        if profile.transport != "ssh" and self.capabilities.engine == "openssh":
            raise ConfigError(
                f"profile '{profile.name}': engine = \"openssh\" cannot use "
                f'transport = "{profile.transport}" yet',
                hint='remove engine = "openssh" from the profile (the built-in engine '
                "runs SSH over the transport, host key checked)",
            )
        if profile.instance_connect and not self.capabilities.instance_connect:
            raise ConfigError(
                f"profile '{profile.name}': engine = \"{self.capabilities.engine}\" cannot use "
                "EC2 Instance Connect",
                hint=f'remove engine = "{self.capabilities.engine}" from the profile (the '
                "built-in engine supports it)",
            )

    def _apply_ssh_config(self) -> Profile:
        """The profile with ~/.ssh/config applied (HostName, Port, User, ProxyJump…), kept."""
        from tunnelman.core.ssh import config as ssh_config

        self.profile, notes = ssh_config.effective(self.profile)
        for line in notes:
            self._log.info("ssh_config: %s", line)
        return self.profile

    def _check_cancel(self) -> None:
        if self._cancel is not None and self._cancel.is_set():
            raise Cancelled()

    def _came_up(self, port: int, how: str = "") -> None:
        """The first UP: record the port, start the watcher, report it."""
        profile = self.profile
        with self._lock:
            self._port = port
            self._since = self._wall()
        self._watcher = threading.Thread(
            target=self._watch, name=f"tunnelman-watch-{profile.name}", daemon=True
        )
        self._watcher.start()
        self._set_state(TunnelState.UP)
        self._log.info(
            "tunnel %s up%s: 127.0.0.1:%d -> %s -> %s",
            profile.name,
            how,
            port,
            profile.bastion,
            profile.endpoint,
        )

    @abc.abstractmethod
    def _watch(self) -> None:
        """The watcher thread: notice a lost link; `_fail` or `_reconnect_loop`."""

    # ------------------------------------------------------------------------- clients

    def _await_up(self, ready: Callable[[], bool]) -> bool:
        """A local client arrived: wait (≤ connect_timeout) until the tunnel is up and `ready()`.

        Counts the client in `connections` when it returns True; the caller then owes one
        `_client_left()`. False: stopped, failed, or not back in time (the client is closed).
        """
        deadline = time.monotonic() + self.profile.connect_timeout
        with self._lock:
            while True:
                if self._stopping.is_set() or self._state in (
                    TunnelState.FAILED,
                    TunnelState.STOPPED,
                ):
                    return False
                if self._state == TunnelState.UP and ready():
                    self._connections += 1
                    snapshot = self._snapshot() if self.on_client is not None else None
                    break
                self._backoff.wake()  # someone needs the tunnel now: retry without waiting
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(min(remaining, 0.5))
        self._tell_client(snapshot, arrived=True)
        return True

    def _tell_client(self, snapshot: TunnelStatus | None, *, arrived: bool) -> None:
        callback = self.on_client
        if callback is None or snapshot is None:
            return
        try:
            callback(snapshot, arrived)
        except Exception:
            self._log.exception("on_client callback failed")

    def _client_left(self) -> None:
        with self._lock:
            self._connections -= 1
            snapshot = self._snapshot() if self.on_client is not None else None
        self._tell_client(snapshot, arrived=False)

    # ------------------------------------------------------------------------- supervision

    def _reconnect_loop(self, reason: str = "the connection to the bastion was lost") -> bool:
        """Reconnect until it works (True) or must stop (False: stopped or failed for good)."""
        self._set_state(TunnelState.RECONNECTING, error=reason)
        self._backoff.reset()
        while not self._stopping.is_set():
            self._backoff.attempt()
            try:
                back = self._reconnect_once()
            except FINAL_ERRORS as exc:
                self._fail(str(exc))
                return False
            except TunnelmanError as exc:
                self._log.info("reconnect of %s failed: %s", self.profile.name, exc)
                self._set_state(TunnelState.RECONNECTING, error=str(exc))
            except Exception as exc:  # a bug or an odd library error: keep trying
                self._log.exception("reconnect of %s failed", self.profile.name)
                self._set_state(TunnelState.RECONNECTING, error=f"reconnect failed: {exc}")
            else:
                if not back or self._stopping.is_set():
                    return False
                self._back_up()
                self._log.info("tunnel %s reconnected", self.profile.name)
                return True
            self._backoff.pause()
        return False

    def _back_up(self) -> None:
        with self._lock:
            self._reconnects += 1
            self._since = self._wall()
            self._error = None
        self._set_state(TunnelState.UP)

    def _fail(self, reason: str) -> None:
        """Give up for good: close the port so nothing is forwarded anywhere, report why."""
        self._log.warning("tunnel %s failed: %s", self.profile.name, reason)
        self._close_for_failure()
        self._set_state(TunnelState.FAILED, error=reason)

    # ------------------------------------------------------------------------- status

    def _snapshot(self) -> TunnelStatus:
        traffic = self._traffic
        sent = received = None
        rates = None
        if traffic is not None:
            sent, received = traffic.totals()
            rates = traffic.rates()
        return TunnelStatus(
            name=self.profile.name,
            state=self._state,
            local_port=self._port,
            since=self._since,
            reconnects=self._reconnects,
            error=self._error,
            connections=max(0, self._connections),
            bytes_sent=sent,
            bytes_received=received,
            rate_sent=None if rates is None else rates.sent,
            rate_received=None if rates is None else rates.received,
        )

    @property
    def traffic(self) -> Traffic | None:
        """The tunnel's byte counts and the last minutes of rates (None: not counted here)."""
        return self._traffic

    def _set_state(self, state: TunnelState, *, error: str | None = None) -> None:
        with self._lock:
            changed = (state, error) != (self._state, self._error)
            self._state = state
            if state in (TunnelState.UP, TunnelState.STARTING):
                self._error = None
            elif error is not None:
                self._error = error
            if self._traffic is not None:
                self._traffic.running(state not in (TunnelState.STOPPED, TunnelState.FAILED))
            snapshot = self._snapshot()
            self._changed.notify_all()
        if changed and self._on_status is not None:
            try:
                self._on_status(snapshot)
            except Exception:
                self._log.exception("on_status callback failed")
