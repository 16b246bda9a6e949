"""Each step of an SSH connection to the bastion, with a precise error for each.

Called by `tunnelman.core.tunnel` (which hands the finished paramiko Transport to its engine) and by
the doctor (`tunnelman.core.diagnose`, which runs the steps one by one to show where it breaks). A
connection is: resolve the name, TCP connect, SSH handshake, host key check against known_hosts
(before any authentication: nothing is offered to an unrecognised server), then public-key
authentication with the `Identity` from `tunnelman.core.ssh.keys`. Each failure becomes its own
`TunnelmanError` subclass naming the way out. Blocking calls honour a `cancel` event by closing the
socket under them.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from tunnelman.core.errors import (
    AuthenticationFailed,
    BastionUnreachable,
    Cancelled,
    ForwardingFailed,
    TunnelError,
    TunnelmanError,
)
from tunnelman.core.logs import get_logger
from tunnelman.core.profiles import require_route
from tunnelman.core.ssh.keys import Identity
from tunnelman.core.ssh.known_hosts import (
    HostKeyInfo,
    HostKeyPolicy,
    known_key_types,
)
from tunnelman.core.ssh.known_hosts import verify as verify_host_key
from tunnelman.core.ssh.tcp import open_socket
from tunnelman.core.tunnel import relay

if TYPE_CHECKING:
    import paramiko

    from tunnelman.core.profiles import Bastion, Endpoint, Profile

_log = get_logger("ssh")


class _Canceller:
    """Closes whatever blocking socket/transport is registered when `cancel` is set."""

    def __init__(self, cancel: threading.Event | None) -> None:
        self.cancel = cancel
        self._targets: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        if cancel is not None:
            self._thread = threading.Thread(
                target=self._watch, name="tunnelman-cancel", daemon=True
            )
            self._thread.start()

    def _watch(self) -> None:
        assert self.cancel is not None
        while not self._done.is_set():
            if self.cancel.wait(0.1):
                with self._lock:
                    targets = list(self._targets)
                for close in targets:
                    with contextlib.suppress(Exception):
                        close()
                return

    def register(self, close: Callable[[], None]) -> None:
        with self._lock:
            self._targets.append(close)

    @property
    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()

    def check(self) -> None:
        if self.cancelled:
            raise Cancelled()

    def close(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()


def _preferred_host_key_types(known: list[str], defaults: tuple[str, ...]) -> tuple[str, ...]:
    """Put the algorithms of keys already in known_hosts first, as OpenSSH does."""
    wanted: list[str] = []
    for key_type in known:
        names = ["rsa-sha2-512", "rsa-sha2-256"] if key_type == "ssh-rsa" else [key_type]
        wanted += [n for n in names if n in defaults and n not in wanted]
    return tuple(wanted + [n for n in defaults if n not in wanted])


def start_transport(
    sock: socket.socket,
    profile: Profile,
    timeout: float,
    canceller: _Canceller | None = None,
) -> paramiko.Transport:
    """The SSH handshake (no authentication yet)."""
    import paramiko

    assert profile.bastion is not None
    transport = paramiko.Transport(sock)
    if canceller is not None:
        canceller.register(transport.close)
    transport.daemon = True
    transport.banner_timeout = timeout
    transport.handshake_timeout = timeout
    transport.auth_timeout = timeout
    transport.set_keepalive(profile.keepalive)
    relay.tune_transport(transport)  # AES-GCM first: the cheapest cipher per packet here
    options = transport.get_security_options()
    known = known_key_types(profile.known_hosts, profile.bastion.host, profile.bastion.port)
    if known:
        options.key_types = _preferred_host_key_types(known, tuple(options.key_types))
    where = f"{profile.bastion.host}:{profile.bastion.port}"
    done = threading.Event()
    try:
        transport.start_client(event=done)
        deadline = time.monotonic() + timeout
        while not done.wait(0.05):
            if canceller is not None:
                canceller.check()
            if not transport.is_active():
                break
            if time.monotonic() >= deadline:
                raise BastionUnreachable(
                    f"bastion {where} accepted the connection but the SSH handshake did not "
                    f"finish within {timeout:g} s (timed out)",
                    hint="is it an SSH server? check the port; raise connect_timeout if the link is slow",
                )
        if not transport.is_active():
            exc = transport.get_exception()
            reason = str(exc) if exc is not None else "connection closed"
            if canceller is not None:
                canceller.check()
            if _closed_early(exc, deadline - time.monotonic()):
                # EOF or a reset well before the timeout: the server hung up, it did not stall.
                raise BastionUnreachable(
                    f"bastion {where} closed the connection during the SSH handshake"
                    + (f" ({_reason(exc)})" if _reason(exc) else ""),
                    hint="check that the port is the bastion's SSH port; sshd may be refusing "
                    "new connections (MaxStartups, fail2ban) or a firewall resets them",
                )
            if "banner" in reason.lower():
                raise BastionUnreachable(
                    f"bastion {where} accepted the connection but did not start SSH within "
                    f"{timeout:g} s (timed out waiting for the SSH banner)",
                    hint="check that the port is the bastion's SSH port; raise connect_timeout "
                    "if the link is slow",
                )
            raise BastionUnreachable(
                f"SSH handshake with bastion {where} failed: {reason}",
                hint="check that the port is the bastion's SSH port",
            )
    except BaseException:
        transport.close()
        raise
    return transport


def _reason(exc: BaseException | None) -> str:
    """An OS error's words ("Connection reset by peer"); nothing for a bare EOF."""
    while exc is not None and not isinstance(exc, OSError) and exc.__context__ is not None:
        exc = exc.__context__
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return ""


def _closed_early(exc: BaseException | None, remaining: float) -> bool:
    """Whether a failed handshake is the server closing the connection (not a timeout)."""
    if exc is None or isinstance(exc, TimeoutError | socket.timeout) or remaining <= 0.5:
        return False
    text = str(exc).lower()
    return (
        isinstance(exc, EOFError | ConnectionError)
        or isinstance(exc.__context__, EOFError | ConnectionError)
        or text in ("", "error reading ssh protocol banner")
        or "reset by peer" in text
    )


def check_host_key(
    transport: paramiko.Transport,
    profile: Profile,
    policy: HostKeyPolicy,
    *,
    pinned: bytes | None = None,
) -> HostKeyInfo:
    """Verify the key the bastion presented (before authenticating). Raises HostKeyError."""
    assert profile.bastion is not None
    key = transport.get_remote_server_key()
    return verify_host_key(
        profile.bastion.host,
        profile.bastion.port,
        key,
        profile.known_hosts,
        policy,
        pinned=pinned,
    )


def authenticate(
    transport: paramiko.Transport, profile: Profile, identity: Identity, timeout: float
) -> None:
    """Public-key authentication with the identity's key(s) only. AuthenticationFailed if refused."""
    import paramiko

    assert profile.bastion is not None
    user = profile.bastion.login
    where = f"{profile.bastion.host}:{profile.bastion.port}"
    transport.auth_timeout = timeout
    refused_types: list[str] | None = None
    closed = False
    with identity.keys() as keys:
        for key in keys:
            try:
                remaining = transport.auth_publickey(user, key)
            except paramiko.BadAuthenticationType as exc:
                refused_types = list(exc.allowed_types)
                break
            except paramiko.AuthenticationException:
                _log.info("bastion %s refused %s key for %s", where, key.get_name(), user)
                if not transport.is_active():
                    closed = True
                    break
                continue
            except paramiko.SSHException as exc:
                raise AuthenticationFailed(
                    f"bastion {where} closed the connection during login as {user}: {exc}",
                    hint="too many keys offered? the bastion may limit attempts (MaxAuthTries)",
                ) from None
            except (EOFError, OSError) as exc:
                # paramiko re-raises its transport thread's EOFError / ConnectionResetError here.
                raise AuthenticationFailed(
                    f"bastion {where} closed the connection during login as {user}"
                    + (f" ({_reason(exc)})" if _reason(exc) else ""),
                    hint="try again; if it keeps happening, the bastion may limit logins "
                    "(MaxStartups, MaxAuthTries) or be restarting",
                ) from None
            if remaining:
                raise AuthenticationFailed(
                    f"bastion {where} wants more than a key for {user} ({', '.join(remaining)})",
                    hint="multi-step logins (MFA, passwords) are not supported by tunnelman",
                )
            if transport.is_authenticated():
                return
    if closed:
        raise AuthenticationFailed(
            f"bastion {where} closed the connection during login as {user}",
            hint="try again; if it keeps happening, the bastion may limit logins "
            "(MaxStartups, MaxAuthTries: offer fewer keys, e.g. set identity_file) or be restarting",
        )
    if refused_types is not None:
        raise AuthenticationFailed(
            f"bastion {where} does not accept key logins for {user} "
            f"(it allows: {', '.join(refused_types) or 'nothing'})",
            hint="tunnelman logs in with keys only; ask for your public key to be authorised",
        )
    hint_user = (
        "check the user name, ec2-user on Amazon Linux or ubuntu on Ubuntu, and that the "
        "matching public key is in ~/.ssh/authorized_keys on the bastion"
    )
    raise AuthenticationFailed(
        f"bastion {where} refused {identity.describe()} for user {user}: authentication failed",
        hint=hint_user,
    )


_RESOLVER_FAILURES = ("not known", "name resolution", "no address associated", "no such host")


def forward_error(endpoint: Endpoint, reason: str, *, prohibited: bool = False) -> ForwardingFailed:
    """The error for a forward the bastion refused or could not make, in both engines' words.

    `reason`: sshd's text (paramiko's ChannelException text, or ssh's "open failed: …" line);
    `prohibited`: the bastion said "administratively prohibited".
    """
    target = f"{endpoint.host}:{endpoint.port}"
    low = reason.lower()
    if prohibited or "administratively prohibited" in low:
        return ForwardingFailed(
            f"the bastion refuses to forward to {target}: administratively prohibited, "
            "TCP forwarding is disabled for this user or this target is not allowed",
            hint="ask the bastion's administrator for `AllowTcpForwarding yes` "
            f"and a `PermitOpen` covering {target} in sshd_config",
        )
    detail = reason.strip()
    for prefix in ("open failed:", "connect failed:"):
        if prefix in detail.lower():
            detail = detail[detail.lower().rindex(prefix) + len(prefix) :].strip()
    if any(text in low for text in _RESOLVER_FAILURES):
        return ForwardingFailed(
            f"the database endpoint name {endpoint.host} does not resolve on the bastion "
            f"({detail or 'connect failed'})",
            hint="check the endpoint in the profile (`tunnelman discover` lists the clusters' "
            "endpoints); a deleted and re-created cluster gets a new name",
        )
    if detail and detail.lower() not in ("connect failed", "open failed"):
        return ForwardingFailed(
            f"the bastion cannot reach the database endpoint {target} (connect failed: {detail})",
            hint="check the endpoint name and port, that the cluster is available "
            "with `tunnelman cluster status`, and that its security group lets the bastion in",
        )
    return ForwardingFailed(
        f"the bastion cannot reach the database endpoint {target} (connect failed)",
        hint="check the endpoint name and port, that the cluster is available "
        "with `tunnelman cluster status`, and that its security group lets the bastion in",
    )


def test_forward(transport: paramiko.Transport, endpoint: Endpoint, timeout: float) -> None:
    """Open (and close) one forwarded connection to the endpoint, to fail early with the reason."""
    import paramiko

    target = f"{endpoint.host}:{endpoint.port}"
    # paramiko's ChannelException carries its own text for the code ("Connect failed") and only
    # logs the bastion's ("Name or service not known"): listen to that one log line.
    said = _OpenFailureText()
    log = logging.getLogger(transport.get_log_channel())
    log.addHandler(said)
    try:
        chan = transport.open_channel(
            "direct-tcpip", (endpoint.host, endpoint.port), ("127.0.0.1", 0), timeout=timeout
        )
    except paramiko.ChannelException as exc:
        reason = said.text or exc.text or ""
        if exc.code == paramiko.common.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED:
            raise forward_error(endpoint, reason, prohibited=True) from None
        if exc.code == paramiko.common.OPEN_FAILED_CONNECT_FAILED:
            raise forward_error(endpoint, reason) from None
        raise ForwardingFailed(
            f"the bastion refused the forward to {target} ({exc.text or exc.code})"
        ) from None
    except (EOFError, OSError) as exc:
        # paramiko re-raises its transport thread's EOFError / ConnectionResetError here.
        raise ForwardingFailed(
            f"the bastion closed the connection when asked to forward to {target}"
            + (f" ({_reason(exc)})" if _reason(exc) else ""),
            hint="try again; if it keeps happening, check the bastion's sshd log "
            "(MaxSessions, a ForceCommand, or sshd restarting)",
        ) from None
    except paramiko.SSHException as exc:
        if not transport.is_active():
            raise ForwardingFailed(
                f"the bastion closed the connection when asked to forward to {target}"
            ) from None
        raise ForwardingFailed(
            f"the bastion did not reach the database endpoint {target} within {timeout:g} s "
            f"({exc})",
            hint="a security group probably drops the bastion's traffic to the database, "
            "or the cluster is stopped",
        ) from None
    finally:
        log.removeHandler(said)
    chan.close()


class _OpenFailureText(logging.Handler):
    """Keeps the bastion's reason from paramiko's "Secsh channel N open FAILED: REASON: …" line."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.text = ""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        marker = "open FAILED: "
        if marker in message:
            self.text = message.split(marker, 1)[1].rsplit(": ", 1)[0]


class _HopSocket:
    """A channel through a jump host, as the socket of the next hop's Transport.

    Closing it (the next Transport does when it closes) closes the channel, then the jump host's
    own Transport, whose socket is the hop before it: a chain of hops closes in reverse order.
    """

    def __init__(self, channel: paramiko.Channel, transport: paramiko.Transport) -> None:
        self._channel = channel
        self._transport = transport

    def __getattr__(self, name: str) -> object:
        return getattr(self._channel, name)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._channel.close()
        self._transport.close()


def name_hop(exc: TunnelmanError, hop: Bastion, index: int, count: int, bastion: Bastion) -> None:
    """Say in an error which jump host it is about (the steps' messages say "bastion")."""
    message = exc.message.replace("bastion ", "jump host ", 1)
    if "jump host" not in message:
        message = f"jump host {hop.host}:{hop.port}: {message}"
    exc.message = f"{message} (hop {index} of {count} on the way to bastion {bastion.host})"
    exc.args = (exc.message if exc.hint is None else f"{exc.message} ({exc.hint})",)


def _channel_to(
    transport: paramiko.Transport, hop: Bastion, target: Bastion, timeout: float
) -> paramiko.Channel:
    import paramiko

    where = f"{target.host}:{target.port}"
    try:
        return transport.open_channel(
            "direct-tcpip", (target.host, target.port), ("127.0.0.1", 0), timeout=timeout
        )
    except paramiko.ChannelException as exc:
        raise BastionUnreachable(
            f"jump host {hop.host}:{hop.port} cannot reach {where} ({exc.text or exc.code})",
            hint="check the next host's address and port, and that the jump host may forward "
            "to it (AllowTcpForwarding)",
        ) from None
    except (paramiko.SSHException, EOFError, OSError) as exc:
        raise BastionUnreachable(
            f"jump host {hop.host}:{hop.port} did not open a connection to {where} ({exc})"
        ) from None


def open_route(
    profile: Profile,
    identity: Identity | None,
    policy: HostKeyPolicy,
    *,
    cancel: threading.Event | None = None,
    canceller: _Canceller | None = None,
    on_step: Callable[[str], None] | None = None,
) -> socket.socket:
    """A connection to the bastion: TCP (or the profile's `transport`), or a channel through the
    profile's jump hosts (the first of which is reached over the transport).

    Each hop is connected, its host key checked with `policy` and logged in to with `identity`,
    as the bastion is; an error names the hop. The returned object is a socket, or behaves as one
    for paramiko; closing it closes the hops too (in reverse order).
    """
    assert profile.bastion is not None
    timeout = float(profile.connect_timeout)
    if not profile.jump:
        return _first_hop(profile, timeout, cancel, canceller)
    if identity is None:
        raise TunnelError("internal error: a route through jump hosts needs an identity")
    from dataclasses import replace

    count = len(profile.jump)
    sock: socket.socket | _HopSocket | None = None
    for index, hop in enumerate(profile.jump, 1):
        target = profile.jump[index] if index < count else profile.bastion
        hop_profile = replace(profile, bastion=hop, jump=())
        if on_step:
            on_step(f"jump {index}")
        try:
            if sock is None:
                sock = _first_hop(hop_profile, timeout, cancel, canceller)
            try:
                transport = start_transport(cast_socket(sock), hop_profile, timeout, canceller)
            except BaseException:
                sock.close()
                raise
            try:
                check_host_key(transport, hop_profile, policy)
                authenticate(transport, hop_profile, identity, timeout)
                channel = _channel_to(transport, hop, target, timeout)
            except BaseException:
                transport.close()
                raise
        except TunnelmanError as exc:
            if not (canceller is not None and canceller.cancelled):
                name_hop(exc, hop, index, count, profile.bastion)
            raise
        _log.info("jump host %s:%d: through to %s:%d", hop.host, hop.port, target.host, target.port)
        sock = _HopSocket(channel, transport)
    return cast_socket(sock)


def _first_hop(
    profile: Profile,
    timeout: float,
    cancel: threading.Event | None,
    canceller: _Canceller | None,
) -> socket.socket:
    """TCP to `profile.bastion`, or the profile's transport (SSM, EC2 Instance Connect Endpoint)."""
    assert profile.bastion is not None
    if profile.transport != "ssh":
        from tunnelman.core.transport import open_first_hop

        return open_first_hop(profile, timeout, cancel=cancel, canceller=canceller)
    from tunnelman.core.ssh import preconnect

    sock = preconnect.take(profile, cancel)  # the cold one-shot's, begun before paramiko loaded
    if sock is not None:
        if canceller is not None:
            canceller.register(sock.close)
        return sock
    return open_socket(profile.bastion, timeout, profile.keepalive, cancel, canceller)


def cast_socket(sock: object) -> socket.socket:
    """paramiko takes any socket-like object; the annotations say socket."""
    return sock  # type: ignore[return-value]


def connect(
    profile: Profile,
    identity: Identity,
    policy: HostKeyPolicy,
    *,
    cancel: threading.Event | None = None,
    pinned: bytes | None = None,
    on_step: Callable[[str], None] | None = None,
) -> tuple[paramiko.Transport, HostKeyInfo]:
    """TCP (or the jump hosts), handshake, host key, authentication: a Transport to the bastion.

    `pinned` (a reconnect) applies to the bastion itself; jump hosts are checked with `policy`.
    Closing the Transport closes the jump hosts' connections too.
    """
    require_route(profile, endpoint=False)
    timeout = float(profile.connect_timeout)
    canceller = _Canceller(cancel)
    transport: paramiko.Transport | None = None
    try:
        if on_step:
            on_step("connect")
        sock = open_route(
            profile, identity, policy, cancel=cancel, canceller=canceller, on_step=on_step
        )
        try:
            transport = start_transport(sock, profile, timeout, canceller)
        except BaseException:
            sock.close()
            raise
        canceller.check()
        if on_step:
            on_step("host-key")
        info = check_host_key(transport, profile, policy, pinned=pinned)
        canceller.check()
        if on_step:
            on_step("auth")
        try:
            authenticate(transport, profile, identity, timeout)
        except TunnelError:
            canceller.check()
            raise
        canceller.check()
        return transport, info
    except BaseException:
        if transport is not None:
            transport.close()
        if canceller.cancelled:
            raise Cancelled() from None
        raise
    finally:
        canceller.close()
