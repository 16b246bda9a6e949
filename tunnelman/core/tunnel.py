"""The tunnel engine: one profile's 127.0.0.1 port forwarded through the bastion, and its life.

Called by the CLI (`up`, one-shot `psql`/`exec`, `check`), the agent (`supervise=True`) and the TUI.
The SSH connection is made by `tunnelman.core.ssh` (precise errors, host key checked before
authenticating, only the profile's key or the agent); the authenticated paramiko Transport is then
handed to a small `sshtunnel.SSHTunnelForwarder` subclass that serves the local port. Before `start()`
returns, one test channel to the endpoint is opened and closed, so "forwarding refused" and
"database unreachable from the bastion" show up at `up` rather than at the first psql.

Supervision: a thread watches the transport. Without `supervise` a dead transport means FAILED and
the port closes. With it, the port stays bound while we reconnect with backoff (0.5 s doubling to
30 s, with jitter); local connections made meanwhile wait for the new transport instead of being
refused. A changed host key or a refused login on reconnect is final (FAILED, port closed, so nothing
is forwarded to the wrong host). A wall-clock jump (suspend/resume) triggers an immediate reconnect.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from tunnelman.core import netcheck, relay, ssh
from tunnelman.core.errors import (
    AuthenticationFailed,
    ConfigError,
    HostKeyError,
    SSHKeyError,
    TunnelError,
    TunnelmanError,
)
from tunnelman.core.known_hosts import HostKeyPolicy
from tunnelman.core.logs import get_logger
from tunnelman.core.platform import net
from tunnelman.core.ssh import PassphrasePrompt

if TYPE_CHECKING:
    import paramiko

    from tunnelman.core.profiles import Profile

__all__ = ["Tunnel", "TunnelState", "TunnelStatus"]

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
CLOCK_JUMP = 5.0  # seconds of wall-clock vs monotonic drift that mean "we were asleep"
WATCH_INTERVAL = 0.2
KEEPALIVE_REQUEST = "keepalive@openssh.com"  # what OpenSSH's ServerAliveInterval sends


def probe_timing(keepalive: int) -> tuple[float, float]:
    """(seconds between liveness probes, seconds a probe may go unanswered) for a keepalive.

    paramiko's own keepalive never waits for a reply, so a silently dead link (a cut cable, a
    laptop that slept) would only be noticed by TCP after minutes. We ask the bastion for a reply
    instead: with the default keepalive of 15 s a dead link is noticed within 15 s at worst
    (5 s between probes + 10 s without an answer).
    """
    return max(1.0, keepalive / 3), max(3.0, keepalive * 2 / 3)


class _Probe:
    """One SSH global request with want-reply, run on its own short-lived thread."""

    def __init__(self, transport: paramiko.Transport) -> None:
        self.transport = transport
        self.started = time.monotonic()
        self.answered = threading.Event()
        self.thread = threading.Thread(target=self._ask, name="tunnelman-probe", daemon=True)
        self.thread.start()

    def _ask(self) -> None:
        # Returns on the reply (OpenSSH answers "request failure", which is an answer) or as soon
        # as the transport closes; errors mean the transport is going away anyway.
        with contextlib.suppress(Exception):
            self.transport.global_request(KEEPALIVE_REQUEST, wait=True)
            if self.transport.is_active():
                self.answered.set()


_FINAL_ERRORS = (HostKeyError, AuthenticationFailed, SSHKeyError, ConfigError)


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
        }


def _make_forwarder_class() -> type[Any]:
    """Built on first use: importing sshtunnel (and paramiko) costs ~0.3 s."""
    import sshtunnel

    class Forwarder(sshtunnel.SSHTunnelForwarder):  # type: ignore[misc]
        """SSHTunnelForwarder serving our already-authenticated Transport.

        sshtunnel's own gateway connection swallows every error into "Could not establish session
        to SSH gateway", checks no host key and loads every key in ~/.ssh: we bypass all of it.
        """

        def __init__(self, owner: Tunnel, **kwargs: Any) -> None:
            self._owner = owner
            super().__init__(**kwargs)

        @staticmethod
        def _consolidate_auth(*_args: Any, **_kwargs: Any) -> tuple[None, list[Any]]:
            return None, []  # authentication is done by tunnelman.core.ssh, with one key

        def _connect_to_gateway(self) -> None:
            self._transport = self._owner._transport

        def _make_ssh_forward_handler_class(self, remote_address_: Any) -> type[Any]:
            owner = self._owner
            # Our relay instead of sshtunnel's 16 KiB select loop (see tunnelman/core/relay.py).
            base = relay.handler_base()

            class Handler(base):  # type: ignore[misc,valid-type]
                remote_address = remote_address_
                logger = self.logger

                def handle(self) -> None:
                    transport = owner._enter_connection()
                    if transport is None:
                        return
                    self.ssh_transport = transport
                    try:
                        super().handle()
                    finally:
                        owner._leave_connection(transport)

            return Handler

        def _make_ssh_forward_server(self, remote_address: Any, local_bind_address: Any) -> None:
            # As sshtunnel's, but a failed bind raises OSError (errno intact) instead of being
            # logged and turned into "An error occurred while opening tunnels".
            handler = self._make_ssh_forward_handler_class(remote_address)
            base_class = self._make_ssh_forward_server_class(remote_address)

            class ForwardServer(base_class):  # type: ignore[misc,valid-type]
                # GIS clients open connections in bursts: socketserver's default backlog is 5.
                request_queue_size = 128
                # Windows: SO_EXCLUSIVEADDRUSE instead of SO_REUSEADDR, so a busy port is refused
                # rather than silently shared (tunnelman/core/platform/net.py).
                allow_reuse_address = net.REUSE_ADDRESS

                def server_bind(self) -> None:
                    net.exclusive_listener(self.socket)
                    super().server_bind()

            server = ForwardServer(local_bind_address, handler, logger=self.logger)
            server.daemon_threads = self.daemon_forward_servers
            self._server_list.append(server)
            self.tunnel_is_up[server.server_address] = False

    return Forwarder


_forwarder_class: type[Any] | None = None


def _forwarder() -> type[Any]:
    global _forwarder_class
    if _forwarder_class is None:
        _forwarder_class = _make_forwarder_class()
    return _forwarder_class


class Tunnel:
    """127.0.0.1:port → bastion → endpoint for one profile. See the module docstring."""

    def __new__(cls, profile: Profile, *args: Any, **kwargs: Any) -> Tunnel:
        # engine = "openssh": the same class interface over the system ssh, so every caller
        # (up, one-shot, agent, TUI) gets it (tunnelman/core/openssh_engine.py).
        if cls is Tunnel and profile.engine == "openssh":
            from tunnelman.core.openssh_engine import OpenSSHTunnel

            return object.__new__(OpenSSHTunnel)
        return object.__new__(cls)

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
        self._port: int | None = None

        self._identity: ssh.Identity | None = None
        self._pinned: bytes | None = None
        self._transport: paramiko.Transport | None = None
        self._channels: dict[int, int] = {}  # id(transport) -> open forwarded connections
        self._retired: list[paramiko.Transport] = []
        self._server: Any = None  # the Forwarder
        self._watcher: threading.Thread | None = None
        self._probe: _Probe | None = None
        self._handlers: set[threading.Thread] = set()
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._last_attempt = 0.0
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
        """Connect, check the forward, listen on 127.0.0.1; return the port. See the docstring."""
        return self._run_start(self._start)

    def adopt(self, transport: paramiko.Transport, identity: ssh.Identity) -> int:
        """Serve an already connected, host-key-checked and authenticated transport.

        For `tunnelman check`, which runs the connection steps one by one to report each; the
        identity is kept for reconnects. Otherwise as `start()`.
        """

        def body() -> int:
            self._apply_ssh_config()
            return self._serve(transport, identity, self._local_port_wanted())

        return self._run_start(body)

    def _run_start(self, body: Callable[[], int]) -> int:
        with self._lock:
            if self._started or self._stopping.is_set():
                raise TunnelError(f"tunnel '{self.profile.name}' was already started or stopped")
            self._started = True
        self._set_state(TunnelState.STARTING)
        try:
            return body()
        except BaseException as exc:
            self._teardown()
            if isinstance(exc, TunnelmanError):
                self._set_state(TunnelState.FAILED, error=str(exc))
            elif isinstance(exc, KeyboardInterrupt):
                self._set_state(TunnelState.FAILED, error="interrupted")
            else:
                self._set_state(TunnelState.FAILED, error=f"internal error: {exc!r}")
            raise

    def stop(self) -> None:
        """Close the port and the SSH session; wait for our threads. Idempotent, fast."""
        with self._lock:
            if self._state == TunnelState.STOPPED and self._stopping.is_set():
                return
        self._teardown()
        if self._started:
            self._set_state(TunnelState.STOPPED)

    # ------------------------------------------------------------------------- starting

    def _local_port_wanted(self) -> int:
        return self._requested_port or 0

    def _require_route(self) -> None:
        """Both ends of the forward must be known before any work (every engine)."""
        profile = self.profile
        if profile.endpoint is None:
            raise ConfigError(
                f"profile '{profile.name}' has no endpoint",
                hint='add endpoint = "HOST[:PORT]" (the database as the bastion sees it)',
            )
        if profile.bastion is None:
            raise ConfigError(
                f"profile '{profile.name}' has no bastion",
                hint='add bastion = "user@host" to the profile',
            )

    def _apply_ssh_config(self) -> Profile:
        """The profile with ~/.ssh/config applied (HostName, Port, User, ProxyJump…), kept."""
        from tunnelman.core import ssh_config

        self.profile, notes = ssh_config.effective(self.profile)
        for line in notes:
            self._log.info("ssh_config: %s", line)
        return self.profile

    def _start(self) -> int:
        self._require_route()
        profile = self._apply_ssh_config()
        port = self._local_port_wanted()
        netcheck.ensure_port_free(port)  # milliseconds, before any SSH work
        identity = ssh.load_identity(profile, self._passphrase)
        self._check_cancel()
        transport, _info = ssh.connect(profile, identity, self._host_keys, cancel=self._cancel)
        return self._serve(transport, identity, port)

    def _serve(self, transport: paramiko.Transport, identity: ssh.Identity, port: int) -> int:
        profile = self.profile
        assert profile.endpoint is not None
        with self._lock:
            self._identity = identity
            self._pinned = transport.get_remote_server_key().asbytes()
            self._transport = transport
        self._check_cancel()
        ssh.test_forward(transport, profile.endpoint, float(profile.connect_timeout))
        self._check_cancel()
        self._server = self._make_server(port)
        try:
            self._server.start()
        except OSError as exc:
            raise netcheck.bind_error(port, exc) from None
        bound = int(self._server.local_bind_port)
        with self._lock:
            self._port = bound
            self._since = self._wall()
        self._watcher = threading.Thread(
            target=self._watch, name=f"tunnelman-watch-{profile.name}", daemon=True
        )
        self._watcher.start()
        self._set_state(TunnelState.UP)
        self._log.info(
            "tunnel %s up: 127.0.0.1:%d -> %s -> %s",
            profile.name,
            bound,
            profile.bastion,
            profile.endpoint,
        )
        return bound

    def _check_cancel(self) -> None:
        if self._cancel is not None and self._cancel.is_set():
            raise TunnelError("cancelled")

    def _make_server(self, port: int) -> Any:
        profile = self.profile
        assert profile.bastion is not None
        assert profile.endpoint is not None
        return _forwarder()(
            self,
            ssh_address_or_host=(profile.bastion.host, profile.bastion.port),
            ssh_config_file=None,  # never read ~/.ssh/config behind the profile's back
            ssh_username=profile.bastion.login,
            ssh_proxy_enabled=False,
            allow_agent=False,
            host_pkey_directories=[],  # never load every key in ~/.ssh
            local_bind_address=("127.0.0.1", port),  # loopback only, never 0.0.0.0
            remote_bind_address=(profile.endpoint.host, profile.endpoint.port),
            set_keepalive=float(profile.keepalive),
            logger=get_logger("sshtunnel"),
            mute_exceptions=False,
        )

    # ------------------------------------------------------------------------- connections

    def _enter_connection(self) -> paramiko.Transport | None:
        """A local client arrived: the transport to use, waiting through a reconnect if needed."""
        me = threading.current_thread()
        deadline = time.monotonic() + self.profile.connect_timeout
        with self._lock:
            self._handlers.add(me)
            while True:
                if self._stopping.is_set() or self._state in (
                    TunnelState.FAILED,
                    TunnelState.STOPPED,
                ):
                    break
                transport = self._transport
                if (
                    self._state == TunnelState.UP
                    and transport is not None
                    and transport.is_active()
                ):
                    self._connections += 1
                    self._channels[id(transport)] = self._channels.get(id(transport), 0) + 1
                    return transport
                self._wake.set()  # someone needs the tunnel now: retry without waiting
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(min(remaining, 0.5))
            self._handlers.discard(me)
        return None

    def _leave_connection(self, transport: paramiko.Transport) -> None:
        with self._lock:
            self._connections -= 1
            key = id(transport)
            self._channels[key] = self._channels.get(key, 1) - 1
            self._handlers.discard(threading.current_thread())

    # ------------------------------------------------------------------------- supervision

    def _watch(self) -> None:
        offset = self._wall() - self._mono()
        while not self._stopping.wait(WATCH_INTERVAL):
            self._close_idle_retired()
            now_offset = self._wall() - self._mono()
            jumped = abs(now_offset - offset) > CLOCK_JUMP
            offset = now_offset
            transport = self._transport
            alive = transport is not None and transport.is_active()
            if alive and not jumped:
                assert transport is not None
                if not self._unanswered(transport):
                    continue
                transport.close()  # silent link: treat it as lost, reconnect below
                alive = False
            if not self._supervise:
                self._fail("the connection to the bastion was lost")
                return
            if jumped:
                self._log.info("wall clock jumped (suspend/resume?): reconnecting now")
                if alive and self._refresh():
                    continue
            if not self._reconnect_loop():
                return

    def _unanswered(self, transport: paramiko.Transport) -> bool:
        """Keep a liveness probe going; True when the bastion left one unanswered too long."""
        interval, timeout = probe_timing(self.profile.keepalive)
        probe, now = self._probe, time.monotonic()
        if probe is not None and probe.transport is transport and not probe.answered.is_set():
            if now - probe.started <= timeout:
                return False
            self._log.info(
                "the bastion left a keepalive unanswered for %.0f s: the link is dead", timeout
            )
            return True
        if probe is None or probe.transport is not transport or now - probe.started >= interval:
            self._probe = _Probe(transport)
        return False

    def _connect_again(self) -> paramiko.Transport:
        assert self._identity is not None
        # Nobody is asked on a reconnect: the key must be the one this tunnel started with.
        transport, _info = ssh.connect(
            self.profile,
            self._identity,
            HostKeyPolicy(),
            pinned=self._pinned,
            cancel=self._stopping,
        )
        return transport

    def _install(self, transport: paramiko.Transport) -> None:
        with self._lock:
            old = self._transport
            self._transport = transport
            if self._server is not None:
                self._server._transport = transport
            if old is not None and old is not transport:
                self._retired.append(old)
            self._reconnects += 1
            self._since = self._wall()
            self._error = None
        self._set_state(TunnelState.UP)
        self._close_idle_retired()

    def _refresh(self) -> bool:
        """Make-before-break after a clock jump: True when a new transport replaced the old one."""
        try:
            transport = self._connect_again()
        except _FINAL_ERRORS as exc:
            self._fail(str(exc))
            return True
        except TunnelmanError as exc:
            self._log.info("reconnect after clock jump failed: %s", exc)
            return False
        if self._stopping.is_set():
            transport.close()
            return True
        self._install(transport)
        return True

    def _reconnect_loop(self) -> bool:
        """Reconnect until it works (True) or must stop (False: stopped or failed for good)."""
        self._set_state(TunnelState.RECONNECTING, error="the connection to the bastion was lost")
        delay = BACKOFF_FIRST
        while not self._stopping.is_set():
            self._wake.clear()
            self._last_attempt = time.monotonic()
            try:
                transport = self._connect_again()
            except _FINAL_ERRORS as exc:
                self._fail(str(exc))
                return False
            except TunnelmanError as exc:
                self._log.info("reconnect of %s failed: %s", self.profile.name, exc)
                self._set_state(TunnelState.RECONNECTING, error=str(exc))
            except Exception as exc:  # a bug or an odd paramiko error: keep trying
                self._log.exception("reconnect of %s failed", self.profile.name)
                self._set_state(TunnelState.RECONNECTING, error=f"reconnect failed: {exc}")
            else:
                if self._stopping.is_set():
                    transport.close()
                    return False
                self._install(transport)
                self._log.info("tunnel %s reconnected", self.profile.name)
                return True
            pause = min(delay, BACKOFF_MAX) * random.uniform(0.8, 1.2)
            delay = min(delay * 2, BACKOFF_MAX)
            deadline = time.monotonic() + pause
            while not self._stopping.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                # A waiting local client cuts the pause short (but not below 0.5 s between tries).
                if self._wake.wait(remaining):
                    self._wake.clear()
                    if time.monotonic() - self._last_attempt >= BACKOFF_FIRST:
                        break
                    self._stopping.wait(BACKOFF_FIRST)
                    break
        return False

    def _fail(self, reason: str) -> None:
        """Give up for good: close the port so nothing is forwarded anywhere, report why."""
        self._log.warning("tunnel %s failed: %s", self.profile.name, reason)
        # Port closed before FAILED is reported: whoever reacts to it finds nothing listening.
        self._close_server()
        self._close_transports()
        self._set_state(TunnelState.FAILED, error=reason)

    def _close_idle_retired(self) -> None:
        with self._lock:
            idle = [t for t in self._retired if self._channels.get(id(t), 0) <= 0]
            self._retired = [t for t in self._retired if t not in idle]
            for t in idle:
                self._channels.pop(id(t), None)
        for t in idle:
            with contextlib.suppress(Exception):
                t.close()

    # ------------------------------------------------------------------------- teardown

    def _close_server(self) -> None:
        with self._lock:
            server, self._server = self._server, None
        if server is None:
            return
        with contextlib.suppress(Exception):
            for srv in list(server._server_list):
                # Wake serve_forever's select now rather than at its next 0.1 s poll, which
                # shutdown() would wait for (50 ms on average, paid by every one-shot command).
                with contextlib.suppress(OSError):
                    srv.socket.shutdown(socket.SHUT_RDWR)
                srv.shutdown()
                srv.server_close()
            server._server_list = []
            server.is_alive = False
        # Let handlers still waiting for a transport give up now.
        with self._lock:
            self._changed.notify_all()

    def _close_transports(self) -> None:
        with self._lock:
            transports = [t for t in (self._transport, *self._retired) if t is not None]
            self._retired = []
        for t in transports:
            with contextlib.suppress(Exception):
                t.close()

    def _teardown(self) -> None:
        self._stopping.set()
        self._wake.set()
        with self._lock:
            self._changed.notify_all()
        watcher = self._watcher
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join(timeout=self.profile.connect_timeout + 5)
        self._close_server()
        self._close_transports()
        deadline = time.monotonic() + 3.0
        probe = self._probe
        if probe is not None:
            probe.thread.join(timeout=1.0)  # exits within 0.1 s of its transport closing
        with self._lock:
            handlers = list(self._handlers)
        for thread in handlers:
            if thread is not threading.current_thread():
                thread.join(timeout=max(0.0, deadline - time.monotonic()))
        port = self._port
        if port:
            for thread in threading.enumerate():
                if thread.name == f"Srv-{port}" and thread is not threading.current_thread():
                    thread.join(timeout=max(0.1, deadline - time.monotonic()))

    # ------------------------------------------------------------------------- status

    def _snapshot(self) -> TunnelStatus:
        return TunnelStatus(
            name=self.profile.name,
            state=self._state,
            local_port=self._port,
            since=self._since,
            reconnects=self._reconnects,
            error=self._error,
            connections=max(0, self._connections),
        )

    def _set_state(self, state: TunnelState, *, error: str | None = None) -> None:
        with self._lock:
            changed = (state, error) != (self._state, self._error)
            self._state = state
            if state in (TunnelState.UP, TunnelState.STARTING):
                self._error = None
            elif error is not None:
                self._error = error
            snapshot = self._snapshot()
            self._changed.notify_all()
        if changed and self._on_status is not None:
            try:
                self._on_status(snapshot)
            except Exception:
                self._log.exception("on_status callback failed")


def free_local_port() -> int:
    """A port 127.0.0.1 can listen on right now (for callers that must know it in advance)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
