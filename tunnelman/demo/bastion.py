"""An in-process SSH bastion on 127.0.0.1: paramiko in server mode, one key, local forwards only.

Used by `tunnelman demo` as the sandbox's bastion and by tests that need a bastion without an
OpenSSH sshd. It has its own host key (ed25519, made in memory), accepts public-key logins for one
authorized key, and opens `direct-tcpip` channels (what `ssh -L` and sshtunnel ask for) only to the
targets it was given; anything else is refused as "administratively prohibited", as sshd's
`PermitOpen` does. No shells, no exec, no remote (`-R`) forwards.

A target may be routed elsewhere: the demo maps `db.sandbox.invalid:5432` to the Unix socket of
its private PostgreSQL, so the database has no TCP port at all and is reachable only through the
bastion, as an RDS cluster is reachable only from inside its VPC.

Each forward is relayed by two threads (one per direction, blocking I/O with TCP_NODELAY); each
SSH session has one thread accepting its channels besides paramiko's own. `stop()` closes the
listener, every session and every forwarded socket, and joins all of those threads.

    with InprocBastion(user_key, allowed=[("127.0.0.1", 5432)]) as bastion:
        bastion.port, bastion.host_key_line()   # "[127.0.0.1]:40123 ssh-ed25519 AAAA…"
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import socket
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import paramiko
from paramiko.common import (
    AUTH_FAILED,
    AUTH_SUCCESSFUL,
    OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED,
    OPEN_FAILED_CONNECT_FAILED,
    OPEN_SUCCEEDED,
)

__all__ = [
    "GeneratedKey",
    "InprocBastion",
    "Target",
    "fingerprint",
    "generate_key",
    "public_line",
]

log = logging.getLogger(__name__)

Target = tuple[str, int] | str
"""Where a forward goes: `(host, port)` over TCP, or a `str` path of a Unix socket."""

_CHUNK = 65536
_CONNECT_TIMEOUT = 5.0


# ----------------------------------------------------------------------------- keys


@dataclass(frozen=True)
class GeneratedKey:
    """A fresh key pair: the paramiko key and its private half as OpenSSH text (for a key file)."""

    pkey: paramiko.PKey
    private_text: str

    def public_line(self, comment: str = "") -> str:
        """The `authorized_keys` / `.pub` line."""
        return public_line(self.pkey, comment)


def generate_key() -> GeneratedKey:
    """A new ed25519 key, made in memory (paramiko cannot generate ed25519; cryptography can)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Ed25519PrivateKey.generate()
    text = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode("ascii")
    import io

    return GeneratedKey(pkey=paramiko.Ed25519Key(file_obj=io.StringIO(text)), private_text=text)


def public_line(key: paramiko.PKey, comment: str = "") -> str:
    """`TYPE BASE64 [comment]`, as in a `.pub` file or authorized_keys."""
    line = f"{key.get_name()} {key.get_base64()}"
    return f"{line} {comment}" if comment else line


def fingerprint(key: paramiko.PKey) -> str:
    """SHA256 fingerprint as OpenSSH prints it (`SHA256:…`, unpadded base64)."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def _key_blob(key: paramiko.PKey | str) -> bytes:
    """The wire blob of a public key given as a PKey or an authorized_keys line."""
    if isinstance(key, paramiko.PKey):
        return key.asbytes()
    parts = key.split()
    if len(parts) < 2:
        raise ValueError(f"not a public key line: {key[:40]!r}")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except ValueError:
        raise ValueError(f"not a public key line (bad base64): {key[:40]!r}") from None
    paramiko.PKey.from_type_string(parts[0], blob)  # rejects unknown types and broken blobs
    return blob


# ----------------------------------------------------------------------------- server


class _Session(paramiko.ServerInterface):
    """paramiko's callbacks for one SSH connection: auth and channel policy."""

    def __init__(self, bastion: InprocBastion) -> None:
        self.bastion = bastion
        # Target sockets connected during the open request, handed to the channel once accepted.
        self.pending: dict[int, socket.socket] = {}
        self.lock = threading.Lock()

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        b = self.bastion
        if b.username is not None and username != b.username:
            return AUTH_FAILED
        if key.asbytes() != b.authorized_blob:
            return AUTH_FAILED
        return AUTH_SUCCESSFUL

    def check_channel_request(self, kind: str, chanid: int) -> int:
        # Sessions (shells, exec, subsystems) are not offered: this bastion only forwards.
        return OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_port_forward_request(self, address: str, port: int) -> bool:
        return False  # no remote (-R) forwards

    def check_global_request(self, kind: str, msg: paramiko.Message) -> bool:
        return (
            False  # keepalive@openssh.com and friends get a failure reply, which is all they need
        )

    def check_channel_direct_tcpip_request(
        self, chanid: int, origin: tuple[str, int], destination: tuple[str, int]
    ) -> int:
        b = self.bastion
        key = (str(destination[0]), int(destination[1]))
        target = b.routes.get(key)
        if target is None:
            b.note_refused(key)
            log.info("refused forward to %s:%s (not allowed)", *key)
            return OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
        # Connect before saying yes, as sshd does, so an unreachable target is an open failure.
        try:
            sock = _connect(target, b.connect_timeout)
        except OSError as exc:
            log.info("forward to %s:%s failed: %s", key[0], key[1], exc)
            return OPEN_FAILED_CONNECT_FAILED
        with self.lock:
            self.pending[chanid] = sock
        return OPEN_SUCCEEDED

    def take(self, chanid: int) -> socket.socket | None:
        with self.lock:
            return self.pending.pop(chanid, None)

    def close_pending(self) -> None:
        with self.lock:
            socks, self.pending = list(self.pending.values()), {}
        for sock in socks:
            sock.close()


def _connect(target: Target, timeout: float) -> socket.socket:
    if isinstance(target, str):
        if not hasattr(socket, "AF_UNIX"):
            raise OSError(f"no Unix sockets on this system for {target}")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(target)
        except OSError:
            sock.close()
            raise
    else:
        sock = socket.create_connection(target, timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(None)
    return sock


class _Forward:
    """One relayed channel: a paramiko channel and the target socket, two pump threads."""

    def __init__(self, chan: paramiko.Channel, sock: socket.socket) -> None:
        self.chan = chan
        self.sock = sock
        self.lock = threading.Lock()
        self.open_directions = 2

    def to_target(self) -> None:
        try:
            while True:
                data = self.chan.recv(_CHUNK)
                if not data:
                    break
                self.sock.sendall(data)
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_WR)
        except (OSError, EOFError, paramiko.SSHException):
            self.abort()
        finally:
            self._done()

    def to_client(self) -> None:
        try:
            while True:
                data = self.sock.recv(_CHUNK)
                if not data:
                    break
                self.chan.sendall(data)
            with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                self.chan.shutdown_write()
        except (OSError, EOFError, paramiko.SSHException):
            self.abort()
        finally:
            self._done()

    def abort(self) -> None:
        """Unblock both pumps: shutdown() wakes a blocked recv where close() may not."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
            self.chan.close()

    def _done(self) -> None:
        with self.lock:
            self.open_directions -= 1
            last = self.open_directions == 0
        if last:
            with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                self.chan.close()
            self.sock.close()


class InprocBastion:
    """An SSH server on 127.0.0.1 that authenticates one public key and forwards to set targets.

    `authorized_key`: a `paramiko.PKey` or an authorized_keys line. `allowed`: `(host, port)`
    pairs a client may forward to, connected as given. `routes`: more allowed `(host, port)`
    pairs, each sent to another target (`(host, port)` or a Unix socket path). `username`: the
    only login accepted (None: any). `host_key`: default a fresh ed25519 key. `port` 0: a free one.
    """

    def __init__(
        self,
        authorized_key: paramiko.PKey | str,
        allowed: Iterable[tuple[str, int]] = (),
        *,
        routes: Mapping[tuple[str, int], Target] | None = None,
        username: str | None = None,
        host_key: paramiko.PKey | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        connect_timeout: float = _CONNECT_TIMEOUT,
    ) -> None:
        self.authorized_blob = _key_blob(authorized_key)
        self.routes: dict[tuple[str, int], Target] = {(h, int(p)): (h, int(p)) for h, p in allowed}
        self.routes.update({(h, int(p)): t for (h, p), t in (routes or {}).items()})
        self.username = username
        self.host_key: paramiko.PKey = host_key if host_key is not None else generate_key().pkey
        self.host = host
        self.connect_timeout = connect_timeout
        self.refused: list[tuple[str, int]] = []
        """Targets refused so far (for tests and the demo's log)."""
        self._requested_port = port
        self._listener: socket.socket | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self._transports: set[paramiko.Transport] = set()
        self._sessions: set[_Session] = set()
        self._forwards: set[_Forward] = set()
        self._port: int | None = None
        self.sessions_total = 0
        """SSH connections accepted since start (authenticated or not)."""

    # -------------------------------------------------------------- public API

    @property
    def port(self) -> int:
        """The TCP port it listens on (after `start()`)."""
        if self._port is None:
            raise RuntimeError("the bastion is not started")
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def active_forwards(self) -> int:
        """Forwarded connections relaying right now."""
        with self._lock:
            return len(self._forwards)

    def host_key_line(self, host: str | None = None) -> str:
        """The known_hosts line for this bastion: `[127.0.0.1]:PORT ssh-ed25519 AAAA…`."""
        name = host or self.host
        where = name if self.port == 22 else f"[{name}]:{self.port}"
        return f"{where} {public_line(self.host_key)}"

    def start(self) -> Self:
        """Bind and start accepting. Returns self."""
        if self._listener is not None:
            return self
        self._stopping.clear()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, self._requested_port))
            listener.listen(64)
        except OSError:
            listener.close()
            raise
        # A timeout lets the accept loop notice stop() without relying on close() waking accept().
        listener.settimeout(0.2)
        self._listener = listener
        self._port = listener.getsockname()[1]
        self._spawn(self._accept_loop, "accept")
        log.info("in-process bastion listening on %s:%s", self.host, self._port)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Close the listener, every session and forward; join every thread. Idempotent."""
        self._stopping.set()
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        self.disconnect_all()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(timeout)
        with self._lock:
            stuck = [t.name for t in self._threads if t.is_alive()]
        if stuck:
            log.warning("in-process bastion threads still running after stop: %s", stuck)

    def disconnect_all(self) -> None:
        """Drop every SSH session and forward, keep listening (a bastion reboot, for tests)."""
        with self._lock:
            transports = list(self._transports)
            sessions = list(self._sessions)
            forwards = list(self._forwards)
        for forward in forwards:
            forward.abort()
        for session in sessions:
            session.close_pending()
        for transport in transports:
            transport.close()
        for transport in transports:
            if transport is not threading.current_thread():
                transport.join(5.0)

    def note_refused(self, target: tuple[str, int]) -> None:
        with self._lock:
            self.refused.append(target)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -------------------------------------------------------------- threads

    def _spawn(self, target: object, name: str, *args: object) -> threading.Thread:
        assert callable(target)

        def run() -> None:
            try:
                target(*args)
            except Exception:  # a bug here must not kill the process silently
                log.exception("in-process bastion thread %s failed", name)
            finally:
                with self._lock:
                    self._threads.discard(threading.current_thread())

        thread = threading.Thread(target=run, name=f"inproc-bastion-{name}", daemon=True)
        with self._lock:
            self._threads.add(thread)
        thread.start()
        return thread

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            listener = self._listener
            if listener is None:
                return
            try:
                conn, peer = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed by stop()
            if self._stopping.is_set():
                conn.close()
                return
            conn.settimeout(None)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self.sessions_total += 1
            self._spawn(self._serve, f"session-{peer[1]}", conn)

    def _serve(self, conn: socket.socket) -> None:
        transport = paramiko.Transport(conn)
        transport.add_server_key(self.host_key)
        session = _Session(self)
        with self._lock:
            if self._stopping.is_set():
                conn.close()
                return
            self._transports.add(transport)
            self._sessions.add(session)
        try:
            try:
                transport.start_server(server=session)
            except (paramiko.SSHException, EOFError, OSError) as exc:
                log.info("SSH negotiation failed: %s", exc)
                return
            while not self._stopping.is_set() and transport.is_active():
                chan = transport.accept(0.25)
                if chan is None:
                    continue
                sock = session.take(chan.get_id())
                if sock is None:
                    chan.close()
                    continue
                forward = _Forward(chan, sock)
                with self._lock:
                    self._forwards.add(forward)
                self._spawn(self._pump, f"fwd-{chan.get_id()}-in", forward, True)
                self._spawn(self._pump, f"fwd-{chan.get_id()}-out", forward, False)
        finally:
            session.close_pending()
            transport.close()
            with self._lock:
                self._transports.discard(transport)
                self._sessions.discard(session)

    def _pump(self, forward: _Forward, inbound: bool) -> None:
        try:
            if inbound:
                forward.to_target()
            else:
                forward.to_client()
        finally:
            with forward.lock:
                finished = forward.open_directions == 0
            if finished:
                with self._lock:
                    self._forwards.discard(forward)
