"""The relay: bytes between one local client socket and one SSH channel, with as little Python
per packet as paramiko allows; and between two sockets (`bridge`, the OpenSSH engine's listener
in front of ssh), with none at all on Linux (splice(2)).

Called by the default engine (`paramiko_engine.py`), whose sshtunnel forward handler derives from
`handler_base()`, and by the OpenSSH engine (`openssh.py`) for each client.
sshtunnel itself (still the forwarder: it owns the listening socket and its threads) copies 16 KiB
at a time in one `select` loop per connection. Measured on the bench (docs/benchmarks.md), three
things cost most there: a `select` on a paramiko channel makes paramiko write and read a pipe for
every packet; a 16 KiB read of a channel holding 2 MiB moves the remaining buffer each time; and
every packet wakes a second thread (the transport thread feeds the channel's buffer, the handler
thread reads it), a GIL hand-off per packet.

So, server → client: the transport thread hands each data packet straight to the client socket
(`send(MSG_DONTWAIT)`) and grants the SSH window back at once. Only when the client is slower than
the bastion (the send would block) does the rest go to the channel's buffer, where the
connection's own thread writes it out with a blocking `sendall`; while anything is buffered later
packets queue behind it, so order is kept, and the window is granted only as the client takes the
data, so a slow client slows the server instead of filling our memory. Client → server: one
thread per transport `select`s over all its client sockets and sends what the SSH window allows;
a connection that fills its window (a bulk upload) moves to a thread of its own. Both sockets get
TCP_NODELAY. Without paramiko's handler tables (another paramiko major version), or without
MSG_DONTWAIT (Windows), the direct path is skipped and the two threads do everything.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunnelman.core.platform import net
from tunnelman.core.tunnel.traffic import Flow, Traffic

if TYPE_CHECKING:
    import paramiko

__all__ = [
    "CHUNK",
    "MAX_PACKET",
    "WINDOW",
    "bridge",
    "handler_base",
    "install",
    "open_channel",
    "pump",
    "tune_socket",
    "tune_transport",
]

WINDOW = 4 * 1024 * 1024  # per channel: at most this much is ever buffered for a slow client
MAX_PACKET = 32 * 1024  # OpenSSH sends ≤ 32 KiB per packet whatever we allow (measured)
CHUNK = 1024 * 1024  # upper bound per read; a read returns what is there, it never waits to fill
OPEN_TIMEOUT = 15.0
_ATTR = "_tunnelman_relay"
_NO_FLOW = Flow()  # counts what arrives for a channel nobody relays yet (never read)
_MSG_IGNORE = 2
_MSG_GLOBAL_REQUEST = 80
_MSG_CHANNEL_WINDOW_ADJUST = 93
_MSG_CHANNEL_DATA = 94
# A per-call non-blocking send (MSG_DONTWAIT). Windows has none: there `pump` never turns the
# direct path on and every packet goes through the channel's buffer and the connection's thread.
_NOWAIT: int = net.NOWAIT_FLAG or 0
_DIRECT_POSSIBLE = net.NOWAIT_FLAG is not None


FAST_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")


def tune_transport(transport: paramiko.Transport) -> None:
    """Before the handshake: offer AES-GCM first (one C call per packet, no separate HMAC).

    paramiko prefers aes128-ctr + hmac-sha2-256, which costs a Python-driven HMAC and a
    byte-by-byte MAC comparison per packet: a 270 MB COPY cost the tunnel ~1.2 s of CPU with it
    against ~0.7 s with aes128-gcm (same relay, one run on the lab). Every OpenSSH since 6.2
    offers AES-GCM; a server without it still gets the rest of the list.
    """
    options = transport.get_security_options()
    current = tuple(options.ciphers)
    fast = tuple(c for c in FAST_CIPHERS if c in current)
    options.ciphers = fast + tuple(c for c in current if c not in fast)
    _ack_notifications(transport)


def _ack_notifications(transport: Any) -> None:
    """Answer the server's post-login notices at once, so the first channel opens in ~1 ms.

    Right after login OpenSSH sends `hostkeys-00@openssh.com` (no reply wanted). Our kernel delays
    its ACK (up to 40 ms, nothing of ours to piggyback on) and sshd, which does not set
    TCP_NODELAY on non-interactive sessions, holds its next packet (the first channel's open
    confirmation) behind that unacknowledged one: every tunnel start paid ~40 ms. An empty
    SSH_MSG_IGNORE after each global request carries the ACK. Needs paramiko's handler table;
    without it nothing changes.
    """
    table = getattr(transport, "_handler_table", None)
    if not isinstance(table, dict) or _MSG_GLOBAL_REQUEST not in table:
        return
    handle = table[_MSG_GLOBAL_REQUEST]

    def on_global_request(msg: Any) -> None:
        handle(msg)
        from paramiko.message import Message

        ignore = Message()
        ignore.add_byte(bytes([_MSG_IGNORE]))
        ignore.add_string(b"")
        # IGNORE may be sent at any time, key exchange included (RFC 4253 7.1, 11.2), so it
        # needs no clear-to-send; the packetizer's own lock orders it with other writers.
        with contextlib.suppress(Exception):
            transport._send_message(ignore)

    table[_MSG_GLOBAL_REQUEST] = on_global_request


def tune_socket(sock: socket.socket) -> None:
    """TCP_NODELAY: a small query must not wait for Nagle's 40 ms."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _Relay:
    """Per channel: where the transport thread may send its data directly."""

    __slots__ = ("chan", "direct", "flow", "lock", "sock")

    def __init__(self, chan: paramiko.Channel) -> None:
        self.chan = chan
        self.lock = threading.Lock()
        self.sock: socket.socket | None = None
        self.flow = _NO_FLOW  # the connection's counters (`down_direct`: this thread's own)
        # Only the connection's thread sets `direct` (when nothing is buffered and it holds no
        # unsent data); only the transport thread clears it. That keeps the byte order.
        self.direct = False

    def deliver(self, data: bytes) -> None:
        """Called by the transport thread with one packet's payload."""
        chan = self.chan
        sent = 0
        with self.lock:
            sock = self.sock
            if self.direct and sock is not None:
                try:
                    sent = sock.send(data, _NOWAIT)
                except OSError:  # EAGAIN: the client is behind; others: the thread will see it
                    sent = 0
                if sent < len(data):
                    self.direct = False
                    chan.in_buffer.feed(data[sent:] if sent else data)
            else:
                chan.in_buffer.feed(data)
        if sent:
            self.flow.down_direct += sent
            _grant(chan, sent)


def _grant(chan: Any, n: int) -> None:
    """Tell the server it may send `n` more bytes, from the transport thread.

    `chan` is a paramiko Channel; typed Any because these are paramiko's private helpers
    (`Channel.recv` does exactly this after reading from its buffer).
    """
    ack = chan._check_add_window(n)
    if ack <= 0:
        return
    from paramiko.message import Message

    msg = Message()
    msg.add_byte(bytes([_MSG_CHANNEL_WINDOW_ADJUST]))
    msg.add_int(chan.remote_chanid)
    msg.add_int(ack)
    _send_from_transport_thread(chan.get_transport(), msg)


def _send_from_transport_thread(transport: Any, msg: Any) -> None:
    """Send a connection-layer `msg` without ever blocking the transport thread.

    During a key exchange (such messages must wait for it), or while another thread holds the
    send lock, a helper thread waits for its turn instead.
    """
    if transport.clear_to_send_lock.acquire(blocking=False):
        try:
            if transport.clear_to_send.is_set():
                transport._send_message(msg)
                return
        finally:
            transport.clear_to_send_lock.release()
    threading.Thread(
        target=_send_later, args=(transport, msg), name="tunnelman-window", daemon=True
    ).start()


def _send_later(transport: Any, msg: Any) -> None:
    with contextlib.suppress(Exception):
        transport._send_user_message(msg)


def _relay_of(chan: paramiko.Channel) -> _Relay:
    relay: _Relay | None = chan.__dict__.get(_ATTR)
    if relay is None:
        # dict.setdefault is atomic: the transport thread and the connection's thread agree on one.
        relay = chan.__dict__.setdefault(_ATTR, _Relay(chan))
    return relay


def _on_data(chan: paramiko.Channel, msg: Any) -> None:
    _relay_of(chan).deliver(msg.get_binary())


def install(transport: paramiko.Transport) -> bool:
    """Route this transport's channel data through `_Relay.deliver`; False if paramiko differs.

    Idempotent. Every channel data packet of the transport then goes through a `_Relay`; a channel
    nobody relays just gets its buffer fed, exactly as paramiko would.
    """
    if _ATTR in transport.__dict__:
        return bool(transport.__dict__[_ATTR])
    base = getattr(type(transport), "_channel_handler_table", None)
    ok = isinstance(base, dict) and _MSG_CHANNEL_DATA in base
    if ok:
        assert isinstance(base, dict)
        table = dict(base)
        table[_MSG_CHANNEL_DATA] = _on_data
        # An instance attribute shadows the class's table for this transport only.
        transport._channel_handler_table = table  # type: ignore[attr-defined]
    transport.__dict__[_ATTR] = ok
    return ok


def open_channel(
    transport: paramiko.Transport,
    dest: tuple[str, int],
    src: tuple[str, int],
    timeout: float = OPEN_TIMEOUT,
) -> paramiko.Channel:
    """A direct-tcpip channel with our window and packet sizes."""
    return transport.open_channel(
        "direct-tcpip",
        dest_addr=dest,
        src_addr=src,
        window_size=WINDOW,
        max_packet_size=MAX_PACKET,
        timeout=timeout,
    )


def _upstream(
    sock: socket.socket, chan: paramiko.Channel, pending: bytes, done: Any, flow: Flow
) -> None:
    """Client → channel on a thread of its own (a bulk upload that filled the SSH window)."""
    try:
        if pending:
            chan.sendall(pending)
            flow.up += len(pending)
        while True:
            data = sock.recv(CHUNK)
            if not data:
                chan.shutdown_write()
                return
            chan.sendall(data)
            flow.up += len(data)
    except (OSError, EOFError):
        _abort(sock, chan)
    finally:
        done.set()


@dataclass(eq=False)
class _Conn:
    sock: socket.socket
    chan: paramiko.Channel
    done: threading.Event
    flow: Flow


class _Upstream:
    """Client → server for every connection of one transport, in one thread.

    One thread per connection meant, with 16 busy clients, 16 wake-ups and GIL hand-offs where
    one `select` sees several requests at once: `pgbench -S -c 16` went from 0.40 to 0.59 × of
    `ssh -L` on the bench. Sends never wait for the SSH window here: a connection whose window is
    used up (a bulk upload) continues on a thread of its own, so it cannot stall the others.
    """

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self.sel.register(self._wake_r, selectors.EVENT_READ, None)
        self.lock = threading.Lock()
        self.incoming: list[_Conn] = []
        self.closed = False
        self.thread = threading.Thread(target=self._run, name="tunnelman-upstream", daemon=True)
        self.thread.start()

    def add(self, conn: _Conn) -> bool:
        """Relay `conn`'s client → server side; False if this loop has ended (use a thread)."""
        with self.lock:
            if self.closed:
                return False
            self.incoming.append(conn)
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")
        return True

    def _run(self) -> None:
        try:
            while True:
                for key, _mask in self.sel.select():
                    if key.data is None:
                        self._take_incoming()
                    else:
                        self._readable(key.data)
                if self._idle():
                    return
        finally:
            self._shut()

    def _take_incoming(self) -> None:
        with contextlib.suppress(OSError):
            while self._wake_r.recv(4096):
                pass
        with self.lock:
            new, self.incoming = self.incoming, []
        for conn in new:
            try:
                self.sel.register(conn.sock, selectors.EVENT_READ, conn)
            except (ValueError, KeyError, OSError):  # closed meanwhile
                self._finish(conn, abort=True)

    def _readable(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(CHUNK)
        except OSError:
            self._finish(conn, abort=True)
            return
        if not data:
            with contextlib.suppress(Exception):
                conn.chan.shutdown_write()
            self._finish(conn)
            return
        try:
            sent = _send_without_waiting(conn.chan, data)
        except (OSError, EOFError):
            self._finish(conn, abort=True)
            return
        conn.flow.up += sent
        if sent < len(data):
            self.sel.unregister(conn.sock)
            threading.Thread(
                target=_upstream,
                args=(conn.sock, conn.chan, data[sent:], conn.done, conn.flow),
                name="tunnelman-up",
                daemon=True,
            ).start()

    def _finish(self, conn: _Conn, *, abort: bool = False) -> None:
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.sel.unregister(conn.sock)
        if abort:
            _abort(conn.sock, conn.chan)
        conn.done.set()

    def _idle(self) -> bool:
        """End the loop when its last connection is done: no thread or descriptor outlives the
        connections (a stopped tunnel leaves nothing behind); the next one starts a new loop."""
        with self.lock:
            if self.incoming or len(self.sel.get_map()) > 1:
                return False
            self.closed = True
            return True

    def _shut(self) -> None:
        with self.lock:
            self.closed = True
            left = self.incoming
            self.incoming = []
        for key in list(self.sel.get_map().values()):
            if key.data is not None:
                self._finish(key.data, abort=True)
        for conn in left:
            _abort(conn.sock, conn.chan)
            conn.done.set()
        self.sel.close()
        for sock in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                sock.close()


def _send_without_waiting(chan: Any, data: bytes) -> int:
    """Send as much of `data` as the SSH window allows now; how much went."""
    sent = 0
    while sent < len(data) and chan.out_window_size > 0:
        n = chan.send(data[sent:] if sent else data)
        if n == 0:
            raise EOFError("channel closed")
        sent += n
    return sent


_upstream_lock = threading.Lock()


def _upstream_for(transport: Any) -> _Upstream:
    with _upstream_lock:
        loop: _Upstream | None = transport.__dict__.get("_tunnelman_upstream")
        if loop is None or loop.closed:
            loop = _Upstream(transport)
            transport.__dict__["_tunnelman_upstream"] = loop
        return loop


def _abort(sock: socket.socket, chan: paramiko.Channel) -> None:
    # shutdown() (unlike close()) wakes a thread blocked in recv() on the same socket.
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(Exception):
        chan.close()


def pump(
    sock: socket.socket,
    chan: paramiko.Channel,
    *,
    direct: bool = True,
    traffic: Traffic | None = None,
) -> None:
    """Relay both ways until both sides are done or one fails; closes the channel, not `sock`.

    `direct`: let the transport thread write to `sock` (needs `install()` on the transport, and
    an OS with a per-call non-blocking send). `traffic`: where the bytes are counted.
    """
    direct = direct and _DIRECT_POSSIBLE
    tune_socket(sock)
    done = threading.Event()
    flow = traffic.flow() if traffic is not None else Flow()
    conn = _Conn(sock, chan, done, flow)
    transport = chan.get_transport()
    # A loop may end (its last connection done) just as we arrive: then a new one is made.
    if not (_upstream_for(transport).add(conn) or _upstream_for(transport).add(conn)):
        threading.Thread(
            target=_upstream, args=(sock, chan, b"", done, flow), name="tunnelman-up", daemon=True
        ).start()
    relay = _relay_of(chan)
    buffer = chan.in_buffer
    with relay.lock:
        relay.sock = sock
        relay.flow = flow
    try:
        while True:
            if direct:
                with relay.lock:
                    if len(buffer) == 0:
                        relay.direct = True
            data = chan.recv(CHUNK)
            if not data:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_WR)
                break
            sock.sendall(data)
            flow.down += len(data)
    except (OSError, EOFError):
        _abort(sock, chan)
    finally:
        with relay.lock:
            relay.direct = False
            relay.sock = None
    # The server may have only half-closed: let the client finish sending, unless the channel is
    # gone for good (tunnel stopped, bastion lost), where waiting for the client could be forever.
    while not done.wait(0.5):
        if chan.closed:
            _abort(sock, chan)
    with contextlib.suppress(Exception):
        chan.close()
    if traffic is not None:
        traffic.done(flow)


def _peer(sock: socket.socket) -> tuple[str, int]:
    with contextlib.suppress(OSError):
        peer = sock.getpeername()
        if isinstance(peer, tuple):
            return str(peer[0]), int(peer[1])
    return ("127.0.0.1", 0)


def handler_base() -> type[Any]:
    """sshtunnel's `_ForwardHandler` with our channel sizes and relay (imports sshtunnel)."""
    import sshtunnel

    class FastForwardHandler(sshtunnel._ForwardHandler):  # type: ignore[misc]
        """One local connection: open a channel, relay until both sides are done."""

        traffic: Traffic | None = None  # the tunnel's counters (set by the engine's subclass)

        def handle(self) -> None:
            transport = self.ssh_transport
            direct = install(transport)
            try:
                chan = open_channel(transport, self.remote_address, _peer(self.request))
            except Exception as exc:
                self.logger.info("opening a channel to %s failed: %r", self.remote_address, exc)
                return
            try:
                pump(self.request, chan, direct=direct, traffic=self.traffic)
            finally:
                with contextlib.suppress(OSError):
                    self.request.close()

    return FastForwardHandler


# ----------------------------------------------------------------------------- socket to socket

_SPLICE = getattr(os, "splice", None)  # Linux ≥ 2.6.17 and Python ≥ 3.10
_BRIDGE_CHUNK = 256 * 1024


def bridge(client: socket.socket, server: socket.socket, traffic: Traffic | None = None) -> None:
    """Relay both ways between two connected sockets until both directions end; close neither.

    One direction runs on a thread of its own, the other on the caller's. An end of input is
    passed on as a half-close (the other side may still answer); an error on either side shuts
    both sockets down, which also ends the other direction. `traffic`: where the bytes are
    counted (`client` → `server` as sent).
    """
    tune_socket(client)
    tune_socket(server)
    flow = traffic.flow() if traffic is not None else Flow()
    other = threading.Thread(
        target=_copy, args=(server, client, flow, False), name="tunnelman-bridge", daemon=True
    )
    other.start()
    _copy(client, server, flow, True)
    other.join()
    if traffic is not None:
        traffic.done(flow)


def _copy(src: socket.socket, dst: socket.socket, flow: Flow, up: bool) -> None:
    try:
        if _SPLICE is not None:
            _copy_spliced(src, dst, flow, up)
        else:
            _copy_buffered(src, dst, flow, up)
    except OSError:
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        return
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


def _copy_buffered(src: socket.socket, dst: socket.socket, flow: Flow, up: bool) -> None:
    buf = bytearray(_BRIDGE_CHUNK)
    view = memoryview(buf)
    while True:
        n = src.recv_into(buf)
        if not n:
            return
        dst.sendall(view[:n])
        if up:
            flow.up += n
        else:
            flow.down += n


def _copy_spliced(src: socket.socket, dst: socket.socket, flow: Flow, up: bool) -> None:
    """socket → pipe → socket in the kernel: the bytes never enter Python (os.splice drops the GIL)."""
    assert _SPLICE is not None
    r, w = os.pipe()
    try:
        s_fd, d_fd = src.fileno(), dst.fileno()
        while True:
            n = _SPLICE(s_fd, w, _BRIDGE_CHUNK)
            if not n:
                return
            moved = n
            while n:
                n -= _SPLICE(r, d_fd, n)
            if up:
                flow.up += moved
            else:
                flow.down += moved
    finally:
        os.close(r)
        os.close(w)
