"""The relay (tunnelman/core/relay.py) against the real lab sshd, with plain TCP servers behind it.

Byte-exact transfers both ways (a fast client: the transport thread writes straight to the socket;
a slow one: the channel buffer takes over and order must hold), half-closes in both directions,
many connections at once, a key re-exchange in the middle of a transfer (window grants must not
block the transport thread), the no-direct fallback, and the relay through a real `Tunnel`.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.lab.sshd import Sshd
from tunnelman.core import ssh
from tunnelman.core.profiles import Bastion, Endpoint, Profile
from tunnelman.core.ssh.known_hosts import HostKeyPolicy
from tunnelman.core.tunnel import relay

MB = 1024 * 1024


def pattern(size: int, seed: int = 1) -> bytes:
    """Deterministic bytes that are not a repeating short block (reordering would show)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(b"%d-%d" % (seed, counter)).digest()
        counter += 1
    return bytes(out[:size])


class Backend:
    """A TCP server on 127.0.0.1 running `serve(conn)` in a thread per connection."""

    def __init__(self, serve: Callable[[socket.socket], None]) -> None:
        self.serve = serve
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        self.errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        try:
            with conn:
                self.serve(conn)
        except BaseException as exc:
            self.errors.append(exc)

    def close(self) -> None:
        self.sock.close()


class Forward:
    """127.0.0.1:port → channel → `dest`, each connection relayed by `relay.pump`."""

    def __init__(self, transport: Any, dest: tuple[str, int], *, direct: bool = True) -> None:
        self.transport = transport
        self.dest = dest
        self.direct = direct and relay.install(transport)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        self.threads: list[threading.Thread] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            t = threading.Thread(target=self._run, args=(conn,), daemon=True)
            self.threads.append(t)
            t.start()

    def _run(self, conn: socket.socket) -> None:
        with conn:
            chan = relay.open_channel(self.transport, self.dest, ("127.0.0.1", 0))
            relay.pump(conn, chan, direct=self.direct)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def transport(sshd: Sshd, tmp_path: Path) -> Iterator[Any]:
    known = sshd.write_known_hosts(tmp_path / "known_hosts")
    assert sshd.key_path is not None
    profile = Profile(
        name="relay",
        bastion=Bastion(sshd.host, sshd.user, sshd.port),
        identity_file=sshd.key_path,
        known_hosts=known,
        endpoint=Endpoint("127.0.0.1", 9),
        connect_timeout=10,
    )
    t, _info = ssh.connect(profile, ssh.load_identity(profile), HostKeyPolicy())
    try:
        yield t
    finally:
        t.close()


@contextlib.contextmanager
def forward(transport: Any, serve: Callable[[socket.socket], None], **kw: Any) -> Iterator[int]:
    backend = Backend(serve)
    fwd = Forward(transport, ("127.0.0.1", backend.port), **kw)
    try:
        yield fwd.port
    finally:
        fwd.close()
        backend.close()
        assert not backend.errors, backend.errors


def recv_all(sock: socket.socket, *, slow: bool = False) -> bytes:
    out = bytearray()
    while True:
        data = sock.recv(4096 if slow else 1 << 20)
        if not data:
            return bytes(out)
        out += data
        if slow and len(out) % (256 * 1024) < 4096:
            time.sleep(0.01)


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=30)


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "threads-only"])
@pytest.mark.parametrize("slow", [False, True], ids=["fast-client", "slow-client"])
def test_download_is_byte_exact(transport: Any, direct: bool, slow: bool) -> None:
    blob = pattern(24 * MB if not slow else 8 * MB)

    def serve(conn: socket.socket) -> None:
        conn.sendall(blob)

    with forward(transport, serve, direct=direct) as port, connect(port) as sock:
        got = recv_all(sock, slow=slow)
    assert len(got) == len(blob)
    assert hashlib.sha256(got).digest() == hashlib.sha256(blob).digest()


def test_upload_and_echo_at_once(transport: Any) -> None:
    blob = pattern(12 * MB, seed=2)

    def echo(conn: socket.socket) -> None:
        while data := conn.recv(1 << 16):
            conn.sendall(data)

    with forward(transport, echo) as port, connect(port) as sock:
        received: list[bytes] = []
        reader = threading.Thread(target=lambda: received.append(recv_all(sock)))
        reader.start()
        view = memoryview(blob)
        for i in range(0, len(blob), 100_000):
            sock.sendall(view[i : i + 100_000])
        sock.shutdown(socket.SHUT_WR)  # EOF must reach the server, which then closes
        reader.join(60)
    assert received
    assert hashlib.sha256(received[0]).digest() == hashlib.sha256(blob).digest()


def test_client_half_close_reaches_server_and_reply_comes_back(transport: Any) -> None:
    def serve(conn: socket.socket) -> None:
        data = recv_all(conn)  # until the client's EOF
        conn.sendall(b"got %d" % len(data))

    with forward(transport, serve) as port, connect(port) as sock:
        sock.sendall(b"x" * 100_000)
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b"got 100000"


def test_server_close_gives_client_eof(transport: Any) -> None:
    def serve(conn: socket.socket) -> None:
        conn.sendall(b"bye")

    with forward(transport, serve) as port, connect(port) as sock:
        assert recv_all(sock) == b"bye"


def test_many_connections_small_round_trips(transport: Any) -> None:
    def serve(conn: socket.socket) -> None:
        while data := conn.recv(1024):
            conn.sendall(data.upper())

    failures: list[str] = []

    def client(n: int) -> None:
        with connect(port) as sock:
            for i in range(50):
                msg = b"q%d-%d" % (n, i)
                sock.sendall(msg)
                if sock.recv(1024) != msg.upper():
                    failures.append(f"{n}/{i}")

    with forward(transport, serve) as port:
        threads = [threading.Thread(target=client, args=(n,)) for n in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert not failures


def test_rekey_during_transfer(transport: Any) -> None:
    """A key re-exchange every 2 MiB: window grants from the transport thread must not hang."""
    transport.packetizer.REKEY_BYTES = 2 * MB
    blob = pattern(20 * MB, seed=3)

    def serve(conn: socket.socket) -> None:
        conn.sendall(blob)

    with forward(transport, serve) as port, connect(port) as sock:
        got = recv_all(sock)
    assert hashlib.sha256(got).digest() == hashlib.sha256(blob).digest()
    assert transport.is_active()


def test_install_is_per_transport_and_idempotent(transport: Any) -> None:
    assert relay.install(transport) is True
    assert relay.install(transport) is True
    assert "_channel_handler_table" in transport.__dict__
    assert "_channel_handler_table" not in type(transport).__dict__.get("__dict__", {})
    table = type(transport)._channel_handler_table
    assert table[94] is not relay._on_data  # the class's table is untouched


def test_closed_channel_ends_the_connection(transport: Any) -> None:
    """Transport gone (tunnel stopped, bastion lost): the client sees EOF, no thread is left."""
    started = threading.Event()

    def serve(conn: socket.socket) -> None:
        started.set()
        conn.sendall(b"hi")
        with contextlib.suppress(OSError):
            while conn.recv(1024):
                pass

    backend = Backend(serve)
    fwd = Forward(transport, ("127.0.0.1", backend.port))
    try:
        with connect(fwd.port) as sock:
            assert started.wait(10)
            assert sock.recv(2) == b"hi"  # the channel is open end to end
            transport.close()
            sock.settimeout(10)
            assert recv_all(sock) == b""
        deadline = time.monotonic() + 10
        while any(t.is_alive() for t in fwd.threads) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(t.is_alive() for t in fwd.threads)
    finally:
        fwd.close()
        backend.close()


def test_bulk_upload_does_not_stall_other_connections(transport: Any) -> None:
    """An upload that fills its SSH window moves off the shared upstream loop."""
    blob = pattern(16 * MB, seed=4)
    release = threading.Event()

    def serve(conn: socket.socket) -> None:
        first = conn.recv(1)
        if first == b"B":  # the bulk client: read slowly until told, then drain
            release.wait(30)
            rest = recv_all(conn)
            conn.sendall(b"%d" % (1 + len(rest)))
            return
        conn.sendall(first)
        while data := conn.recv(1024):
            conn.sendall(data)

    with forward(transport, serve) as port, connect(port) as bulk, connect(port) as small:

        def send_bulk() -> None:
            bulk.sendall(b"B" + blob)
            bulk.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send_bulk)
        sender.start()
        time.sleep(0.5)  # the bulk channel's window is full by now
        start = time.monotonic()
        for i in range(20):
            small.sendall(b"%d" % i)
            assert small.recv(64) == b"%d" % i
        assert time.monotonic() - start < 5
        release.set()
        sender.join(60)
        assert recv_all(bulk) == b"%d" % (1 + len(blob))


def test_connections_opening_and_closing_quickly(transport: Any) -> None:
    """The shared upstream loop ends with its last connection and a new one starts cleanly."""

    def serve(conn: socket.socket) -> None:
        conn.sendall(conn.recv(64))

    with forward(transport, serve) as port:
        for i in range(40):
            with connect(port) as sock:
                sock.sendall(b"n%d" % i)
                assert sock.recv(64) == b"n%d" % i
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(
        t.name == "tunnelman-upstream" for t in threading.enumerate()
    ):
        time.sleep(0.05)
    assert not any(t.name == "tunnelman-upstream" for t in threading.enumerate())
