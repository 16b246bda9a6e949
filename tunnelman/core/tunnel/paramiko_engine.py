"""The default engine (`engine = "sshtunnel"`): paramiko for SSH, sshtunnel's forwarder for the port.

Built by `tunnelman.core.tunnel.open_tunnel`; the state machine, reconnect loop and status are the
base's (`base.Tunnel`). The SSH connection is made by `tunnelman.core.ssh` (precise errors, host
key checked before authenticating, only the profile's key or the agent, jump hosts); the
authenticated paramiko Transport is then handed to a small `sshtunnel.SSHTunnelForwarder`
subclass that serves the local port, with our relay (`relay.py`) moving the bytes. Before
`start()` returns, one test channel to the endpoint is opened and closed, so "forwarding refused"
and "database unreachable from the bastion" show up at `up` rather than at the first psql.

Supervision: a thread watches the transport and asks the bastion for a keepalive reply (a silent
link is noticed within ~15 s by default). Without `supervise` a dead transport means FAILED and
the port closes. With it, the port stays bound while the base reconnects with backoff; local
connections made meanwhile wait for the new transport instead of being refused. A changed host
key or a refused login on reconnect is final. A wall-clock jump (suspend/resume) triggers an
immediate make-before-break reconnect.

sshtunnel's private API used, and why (sshtunnel has no public hook for any of these; each is a
method its own code overrides in the same way): `_consolidate_auth` and `_connect_to_gateway`
(we authenticate ourselves and hand it the Transport), `_make_ssh_forward_handler_class` (our
relay and the wait-for-transport), `_make_ssh_forward_server` (a bind error keeps its errno,
backlog 128, exclusive bind on Windows), `_server_list` / `_transport` (closing the listener at
once, and swapping in the reconnected Transport).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from tunnelman.core import ssh
from tunnelman.core.errors import TunnelmanError
from tunnelman.core.logs import get_logger
from tunnelman.core.platform import net
from tunnelman.core.ssh.known_hosts import HostKeyPolicy
from tunnelman.core.tunnel import ports, relay
from tunnelman.core.tunnel.base import FINAL_ERRORS, Capabilities, Tunnel

if TYPE_CHECKING:
    import paramiko

__all__ = ["ParamikoTunnel", "probe_timing"]

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


def _make_forwarder_class() -> type[Any]:
    """Built on first use: importing sshtunnel (and paramiko) costs ~0.3 s."""
    import sshtunnel

    class Forwarder(sshtunnel.SSHTunnelForwarder):  # type: ignore[misc]
        """SSHTunnelForwarder serving our already-authenticated Transport.

        sshtunnel's own gateway connection swallows every error into "Could not establish session
        to SSH gateway", checks no host key and loads every key in ~/.ssh: we bypass all of it.
        """

        def __init__(self, owner: ParamikoTunnel, **kwargs: Any) -> None:
            self._owner = owner
            super().__init__(**kwargs)

        @staticmethod
        def _consolidate_auth(*_args: Any, **_kwargs: Any) -> tuple[None, list[Any]]:
            return None, []  # authentication is done by tunnelman.core.ssh, with one key

        def _connect_to_gateway(self) -> None:
            self._transport = self._owner._transport

        def _make_ssh_forward_handler_class(self, remote_address_: Any) -> type[Any]:
            owner = self._owner
            # Our relay instead of sshtunnel's 16 KiB select loop (see tunnelman/core/tunnel/relay.py).
            base = relay.handler_base()

            class Handler(base):  # type: ignore[misc,valid-type]
                remote_address = remote_address_
                logger = self.logger
                traffic = owner._traffic

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


class ParamikoTunnel(Tunnel):
    """The default engine. See the module docstring."""

    capabilities = Capabilities(
        engine="sshtunnel",
        instance_connect=True,
        decrypts_keys=True,
        serves_checked_transport=True,
        counts_connections=True,
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._identity: ssh.Identity | None = None
        self._pinned: bytes | None = None
        self._transport: paramiko.Transport | None = None
        self._channels: dict[int, int] = {}  # id(transport) -> open forwarded connections
        self._retired: list[paramiko.Transport] = []
        self._server: Any = None  # the Forwarder
        self._probe: _Probe | None = None
        self._handlers: set[threading.Thread] = set()
        # A transport with a cap (EICE's hour): when the current connection began, and when a
        # failed renewal may be tried again.
        self._lifetime: float | None = None
        self._connected_at = 0.0
        self._renew_not_before = 0.0

    def adopt(self, transport: paramiko.Transport, identity: ssh.Identity) -> int:
        """Serve an already connected, host-key-checked and authenticated transport.

        For `tunnelman check`, which runs the connection steps one by one to report each; the
        identity is kept for reconnects. Otherwise as `start()`.
        """

        def body() -> int:
            self._require_route()
            self._apply_ssh_config()
            return self._serve(transport, identity, self._local_port_wanted())

        return self._run_start(body)

    # ------------------------------------------------------------------------- starting

    def _start(self) -> int:
        self._require_route()
        profile = self._apply_ssh_config()
        port = self._local_port_wanted()
        ports.ensure_port_free(port)  # milliseconds, before any SSH work
        identity = ssh.load_identity(profile, self._passphrase)
        self._check_cancel()
        transport, _info = ssh.connect(profile, identity, self._host_keys, cancel=self._cancel)
        return self._serve(transport, identity, port)

    def _serve(self, transport: paramiko.Transport, identity: ssh.Identity, port: int) -> int:
        profile = self.profile
        assert profile.endpoint is not None
        if profile.transport != "ssh":
            from tunnelman.core import transport as transports

            self._lifetime = transports.lifetime(profile)
        with self._lock:
            self._identity = identity
            self._pinned = transport.get_remote_server_key().asbytes()
            self._transport = transport
            self._connected_at = time.monotonic()
        self._check_cancel()
        ssh.test_forward(transport, profile.endpoint, float(profile.connect_timeout))
        self._check_cancel()
        self._server = self._make_server(port)
        try:
            self._server.start()
        except OSError as exc:
            raise ports.bind_error(port, exc) from None
        self._came_up(int(self._server.local_bind_port))
        assert self._port is not None
        return self._port

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
        chosen: list[paramiko.Transport] = []

        def ready() -> bool:
            transport = self._transport
            if transport is None or not transport.is_active():
                return False
            chosen.append(transport)
            return True

        with self._lock:
            self._handlers.add(me)
            if self._await_up(ready):
                transport = chosen[-1]
                self._channels[id(transport)] = self._channels.get(id(transport), 0) + 1
                return transport
            self._handlers.discard(me)
        return None

    def _leave_connection(self, transport: paramiko.Transport) -> None:
        with self._lock:
            self._client_left()
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
                    if self._renewal_due():
                        self._renew()
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

    def _renewal_due(self) -> bool:
        """The transport's cap (EICE: an hour) is near: time to open the next connection."""
        if self._lifetime is None:
            return False
        from tunnelman.core.transport import renew_after

        now = time.monotonic()
        due = self._connected_at + renew_after(self._lifetime)
        return now >= due and now >= self._renew_not_before

    def _renew(self) -> None:
        """Make-before-break before the cap: new client connections go over a new connection
        at once; the ones open on the old one keep it until they end (or the cap ends it)."""
        self._log.info(
            "renewing the connection to the bastion before its %s's %.0f-minute cap",
            self.profile.transport,
            (self._lifetime or 0) / 60,
        )
        try:
            transport = self._connect_again()
        except FINAL_ERRORS as exc:
            self._fail(str(exc))  # a changed host key is never served, renewal or not
            return
        except TunnelmanError as exc:
            self._log.info("renewal failed (the current connection keeps serving): %s", exc)
            self._renew_not_before = time.monotonic() + 30.0
            return
        if self._stopping.is_set():
            transport.close()
            return
        self._swap(transport)
        self._close_idle_retired()
        self._log.info("renewed: new client connections go over the new connection")

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

    def _swap(self, transport: paramiko.Transport) -> None:
        """Serve new connections over `transport`; the old one closes once its last one ends."""
        with self._lock:
            old = self._transport
            self._transport = transport
            self._connected_at = time.monotonic()
            if self._server is not None:
                self._server._transport = transport
            if old is not None and old is not transport:
                self._retired.append(old)

    def _reconnect_once(self) -> bool:
        transport = self._connect_again()
        if self._stopping.is_set():
            transport.close()
            return False
        self._swap(transport)
        self._close_idle_retired()
        return True

    def _refresh(self) -> bool:
        """Make-before-break after a clock jump: True when a new transport replaced the old one."""
        try:
            transport = self._connect_again()
        except FINAL_ERRORS as exc:
            self._fail(str(exc))
            return True
        except TunnelmanError as exc:
            self._log.info("reconnect after clock jump failed: %s", exc)
            return False
        if self._stopping.is_set():
            transport.close()
            return True
        self._swap(transport)
        self._back_up()
        self._close_idle_retired()
        return True

    def _close_for_failure(self) -> None:
        self._close_server()
        self._close_transports()

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
        self._backoff.wake()
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
