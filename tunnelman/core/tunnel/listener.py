"""The loopback listener the OpenSSH (relay mode, and while ssh reconnects) and SSM engines hold.

It owns the listening socket on 127.0.0.1:PORT (never 0.0.0.0; Windows: exclusive, so a port
someone else holds fails to bind), the accept thread, and one thread a client that relays it into
a private loopback port (ssh's `-L` port, session-manager-plugin's port) with `relay.bridge`,
counting the bytes in the engine's `Traffic` when it has one.

What a client waits for, where it goes and what its leaving means stays the engine's: `admit`
(run on the client's thread) waits until the tunnel can take it and returns a `Lease`, or None to
turn it away. The port can be held with no upstream at all (a client that connects early, or while
the engine reconnects, waits in `admit`), and closing can leave the relays it already carries
running (`close(clients=False)`: the OpenSSH engine handing the port back to ssh).
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tunnelman.core.platform import net
from tunnelman.core.tunnel import ports, relay

if TYPE_CHECKING:
    import logging

    from tunnelman.core.tunnel.traffic import Traffic

__all__ = ["Lease", "LoopbackListener"]


@dataclass(frozen=True)
class Lease:
    """An admitted client: the loopback port to relay it into (None: nowhere, it is closed),
    and `done`, called once when it has gone (whether or not it was relayed)."""

    port: int | None
    timeout: float
    done: Callable[[], None]


class LoopbackListener:
    """127.0.0.1:port, each accepted client relayed into the port its `Lease` names."""

    def __init__(
        self,
        admit: Callable[[], Lease | None],
        *,
        traffic: Traffic | None,
        log: logging.Logger,
        refused: str,
    ) -> None:
        self._admit = admit
        self._traffic = traffic
        self._log = log
        self._refused = refused  # a log format taking the upstream port and the error
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._wake: tuple[socket.socket, socket.socket] | None = None  # made by `listen`
        self._handlers: set[threading.Thread] = set()
        self._open: set[socket.socket] = set()  # clients and their upstream connections
        self._relaying = 0

    @property
    def listening(self) -> bool:
        return self._sock is not None

    @property
    def relaying(self) -> int:
        """Clients relayed into an upstream right now (a closed listener's ones too)."""
        return self._relaying

    def listen(self, port: int) -> int:
        """Bind 127.0.0.1:`port` (0: a free one) and return the port; clients queue until
        `start`. A failed bind raises the same errors as everywhere else (`ports.bind_error`)."""
        if self._wake is None:
            self._wake = socket.socketpair()
            for end in self._wake:
                end.setblocking(False)  # drained without waiting; a full buffer is a wake-up
        with contextlib.suppress(OSError):
            while self._wake[0].recv(64):  # drop a wake-up left by the last close
                pass
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            net.prepare_listener(sock)
            net.exclusive_listener(sock)
            sock.bind(("127.0.0.1", port))  # loopback only, never 0.0.0.0
            sock.listen(128)  # GIS clients open connections in bursts
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise ports.bind_error(port, exc) from None
        self._sock = sock
        return int(sock.getsockname()[1])

    def start(self, name: str) -> None:
        """Accept clients on a thread called `name`."""
        assert self._sock is not None
        acceptor = threading.Thread(target=self._accept_loop, name=name, daemon=True)
        self._acceptor = acceptor
        acceptor.start()

    def close(self, *, clients: bool = True) -> None:
        """Stop listening; with `clients`, also cut every connection it relays or holds."""
        if self._wake is not None:
            with contextlib.suppress(OSError):
                self._wake[1].send(b"\0")
        with self._lock:
            sock, self._sock = self._sock, None
            acceptor, self._acceptor = self._acceptor, None
            held = list(self._open) if clients else []
        if acceptor is not None and acceptor is not threading.current_thread():
            acceptor.join(timeout=2.0)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
        for each in held:
            with contextlib.suppress(OSError):
                each.shutdown(socket.SHUT_RDWR)

    def join(self, others: Iterable[threading.Thread | None], within: float = 3.0) -> None:
        """At teardown, after `close`: wait (`within` seconds in all) for the engine's `others`
        threads and ours (the accept thread, the clients'), then release the wake-up pair."""
        deadline = time.monotonic() + within
        with self._lock:
            ours = [self._acceptor, *self._handlers]
        for thread in [*others, *ours]:
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout=max(0.1, deadline - time.monotonic()))
        for sock in self._wake or ():
            with contextlib.suppress(OSError):
                sock.close()

    # ------------------------------------------------------------------------- clients

    def _accept_loop(self) -> None:
        listener, wake = self._sock, self._wake
        if listener is None or wake is None:
            return
        with selectors.DefaultSelector() as sel:
            sel.register(listener, selectors.EVENT_READ)
            sel.register(wake[0], selectors.EVENT_READ)
            while True:
                events = sel.select()
                if any(key.fileobj is wake[0] for key, _ in events):
                    return
                try:
                    client, _addr = listener.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    return  # the listener was closed
                client.setblocking(True)
                thread = threading.Thread(
                    target=self._serve, args=(client,), name="tunnelman-client", daemon=True
                )
                with self._lock:
                    self._handlers.add(thread)
                    self._open.add(client)
                thread.start()

    def _serve(self, client: socket.socket) -> None:
        lease: Lease | None = None
        upstream: socket.socket | None = None
        relayed = False
        try:
            lease = self._admit()
            if lease is None or lease.port is None:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", lease.port), lease.timeout)
            except OSError as exc:
                self._log.info(self._refused, lease.port, exc)
                return
            upstream.settimeout(None)
            with self._lock:
                self._open.add(upstream)
                self._relaying += 1
                relayed = True
            relay.bridge(client, upstream, self._traffic)
        finally:
            if lease is not None:
                lease.done()
            with self._lock:
                self._open.discard(client)
                if upstream is not None:
                    self._open.discard(upstream)
                if relayed:
                    self._relaying -= 1
                self._handlers.discard(threading.current_thread())
            for sock in (client, upstream):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.close()
