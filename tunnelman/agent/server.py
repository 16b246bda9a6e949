"""The agent: one background process per user that holds long-lived tunnels.

Started on demand by `tunnelman up --detach` and the TUI (through `client.AgentClient`, as a
detached `python -m tunnelman.agent` in its own session, stdio on /dev/null), or in the foreground
by `tunnelman agent run`. It holds `open_tunnel(…, supervise=True)` objects, so the tunnels outlive the
terminal or TUI that asked for them and reconnect by themselves, and answers the JSON-lines protocol
of `protocol` on a socket only its user can open (see `paths`).

Life: it takes the life-long lock `agent.lock` before binding (a second agent waits for it, then
gives up: two starts give one agent), writes `agent.json`, serves connections (below), and
exits after `idle_timeout` seconds with no tunnels (failed ones count: their reason stays visible
in `tunnelman status` until `down`), no subscriber and no request in flight. SIGTERM/SIGINT or a
`shutdown` request close every tunnel first. A `kill -9` leaves the socket and `agent.json` behind;
the next client sees the lock free, says the agent had stopped and starts a new one.

Connections: one selector loop (the main thread) accepts, reads each connection's first line
within a deadline and checks its token, and answers `ping` and `status` itself; a connection that
asks for more (`up`, `down`, `subscribe`, …) gets a thread of its own, up to a cap. So a client
that connects and sends nothing, or sends a line without end, costs a file descriptor and at most
`protocol.MAX_REQUEST` bytes, never a thread; the limits are in `protocol`'s docstring.

It cannot ask a person anything: an unknown host key comes back as `HostKeyUnknown` with the
fingerprint (the client asks on its terminal or in the TUI, then retries with `accept_fingerprint`,
which accepts that key and only that key). A passphrase-protected key is used through ssh-agent when
the agent holds it (the client sends its SSH_AUTH_SOCK with `up`; see `ssh.load_identity`), else it is
refused with the ssh-add way out. It never needs a database password: it only forwards a port.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hmac
import logging
import os
import queue
import re
import secrets
import select
import selectors
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from tunnelman import __version__
from tunnelman.agent import protocol
from tunnelman.agent.locks import FileLock, read_pid
from tunnelman.agent.paths import AgentPaths, ensure_private_dir, log_path, paths, use_tcp
from tunnelman.core.errors import (
    AgentError,
    AWSError,
    PassphraseRequired,
    TunnelError,
    TunnelmanError,
)
from tunnelman.core.logs import get_logger, setup_file_logging
from tunnelman.core.platform import net
from tunnelman.core.tunnel import TunnelState
from tunnelman.core.tunnel.events import EventRecorder, events_path

if TYPE_CHECKING:
    from tunnelman.core.profiles import Profile
    from tunnelman.core.tunnel import Tunnel, TunnelStatus

DEFAULT_IDLE_TIMEOUT = 600.0
ENV_IDLE = "TUNNELMAN_AGENT_IDLE"
EXIT_ALREADY_RUNNING = 3
LOCK_WAIT = 15.0  # a previous agent may still be closing its tunnels
_ACCEPT_TICK = 0.5
_ACCEPT_BATCH = 64  # accepts per turn of the loop, between reads of what is already there
_BACKLOG = 4096  # the kernel caps it (net.core.somaxconn); a burst of clients waits there
_MAX_OUTPUT = 4 * protocol.MAX_LINE  # replies queued to a client that does not read
_DROP_REPORT = 10.0  # seconds between log lines counting dropped connections
_INLINE_OPS = frozenset({"ping", "status"})  # answered from memory by the loop itself
_ADDRESS_CHECK = 2.0  # seconds between checks that our socket is still there
_SUBSCRIBER_QUEUE = 1000
_OPEN_STATES = frozenset({TunnelState.STARTING, TunnelState.UP, TunnelState.RECONNECTING})

_log = get_logger("agent")


class AlreadyRunning(AgentError):
    """Another agent holds the life-long lock."""


def idle_timeout_from_env(default: float = DEFAULT_IDLE_TIMEOUT) -> float:
    """`TUNNELMAN_AGENT_IDLE` seconds (0: never exit), else `default`."""
    raw = os.environ.get(ENV_IDLE, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        _log.warning("ignoring %s=%r: not a number of seconds", ENV_IDLE, raw)
        return default
    return max(0.0, value)


@dataclass
class Held:
    """One tunnel the agent holds, from the first `up` until `down`."""

    name: str
    profile: Profile
    tunnel: Tunnel
    cancel: threading.Event
    ready: threading.Event = field(default_factory=threading.Event)  # start() returned or raised
    failure: BaseException | None = None
    # A one-shot's tunnel: closed `linger` seconds after its last client connection closed.
    linger: float | None = None
    linger_until: float | None = None  # epoch; pushed forward while a client is connected

    @property
    def is_open(self) -> bool:
        return not self.ready.is_set() or self.tunnel.status.state in _OPEN_STATES

    def status(self) -> TunnelStatus:
        """The tunnel's status; "starting" from the moment `up` took it (not "stopped")."""
        status = self.tunnel.status
        if not self.ready.is_set() and status.state == TunnelState.STOPPED:
            import dataclasses

            status = dataclasses.replace(status, state=TunnelState.STARTING)
        if self.linger_until is not None:
            import dataclasses

            status = dataclasses.replace(status, linger_until=self.linger_until)
        return status

    def rate_history(self) -> list[int]:
        """The last five minutes of rates, both ways, one a second (the TUI's sparkline)."""
        traffic = self.tunnel.traffic
        if traffic is None:
            return []
        return [round(r.sent + r.received) for r in traffic.history()]

    def touch(self, now: float) -> None:
        """A client is using a lingering tunnel: its linger starts again from now."""
        linger, until = self.linger, self.linger_until
        if linger is not None and until is not None:
            self.linger_until = max(until, now + linger)

    def hold(self, linger: float | None, now: float) -> None:
        """What an `up` asks: `linger` seconds (a one-shot's), or None: held until `down`.
        A tunnel already held until `down` stays so: a one-shot only borrows it."""
        if linger is None:
            self.linger = self.linger_until = None
        elif self.linger is not None or self.linger_until is None:
            self.linger = linger
            self.linger_until = max(self.linger_until or 0.0, now + linger)


class _Subscriber:
    def __init__(self) -> None:
        self.events: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=_SUBSCRIBER_QUEUE)
        self.overflowed = False


@dataclass(eq=False)
class _Conn:
    """A connection in the selector loop: not yet authenticated, or answered there (ping/status)."""

    sock: socket.socket
    accepted: float  # monotonic
    buf: bytearray = field(default_factory=bytearray)
    out: bytearray = field(default_factory=bytearray)
    authed: bool = False
    closing: bool = False  # close once `out` is sent
    closed: bool = False


_AWS_NAME = re.compile(r"AWS_[A-Z0-9_]{1,60}")


def _with_aws_env_note(exc: AWSError, theirs: object) -> AWSError:
    """`exc` again, its hint saying so when the caller's AWS environment is not the agent's.

    The agent outlives the shell that started it; its AWS calls use that shell's environment
    (AWS_PROFILE, keys, region), not the caller's. Nothing differing: `exc` unchanged.
    """
    if not isinstance(theirs, dict):
        return exc  # an older client: nothing to compare
    ours = protocol.aws_settings()
    # Only names of the shape aws_settings() sends reach the message (no control characters).
    named = {k for k in theirs if isinstance(k, str) and _AWS_NAME.fullmatch(k)}
    differ = sorted(k for k in set(ours) | named if ours.get(k) != theirs.get(k))
    if not differ:
        return exc
    note = (
        f"the background agent (pid {os.getpid()}) makes its AWS calls with the environment it "
        f"was started with, which differs from this shell's ({', '.join(differ)}): set aws_profile "
        "and region in the profile, or `tunnelman agent stop` (its tunnels close) and run this again"
    )
    hint = f"{exc.hint}; {note}" if exc.hint else note
    return type(exc).from_wire(exc.message, hint=hint, fields=exc.wire_fields())


def _passphrase_refused(profile_name: str) -> Callable[[Path], str | None]:
    def refuse(path: Path) -> str | None:
        raise PassphraseRequired(
            f"key {path} is passphrase-protected and the background agent cannot ask for "
            f"passphrases: add it to ssh-agent (ssh-add {path})",
            hint=(
                "then run it again: a key that ssh-agent holds is used through it; or run "
                f"`tunnelman up {profile_name}` without --detach to be asked in the terminal"
            ),
        )

    return refuse


class Agent:
    """The server. `open()` takes the lock and binds; `serve()` runs until stopped or idle."""

    def __init__(
        self,
        files: AgentPaths,
        *,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        tcp: bool = False,
    ) -> None:
        self.files = files
        self.idle_timeout = idle_timeout
        self.tcp = tcp
        self.started = time.time()
        self._lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._held: dict[str, Held] = {}
        self._subscribers: set[_Subscriber] = set()
        self._conns: set[socket.socket] = set()  # served by threads
        self._selector: selectors.BaseSelector | None = None
        self._registered: socket.socket | None = None  # the listener, while it is in the selector
        self._open: dict[int, _Conn] = {}  # fd -> every connection in the loop
        self._unauth: dict[int, _Conn] = {}  # fd -> those without a first line yet, oldest first
        self._workers = 0
        self._accept_paused_until = 0.0
        self._dropped: dict[str, int] = {}
        self._next_drop_report = 0.0
        self._busy = 0
        self._last_busy = time.monotonic()
        self._stop = threading.Event()
        self._life = FileLock(files.lock)
        self._listener: socket.socket | None = None
        self._token: str | None = None
        self._port: int | None = None
        self._socket_ino: int | None = None
        self._next_check = 0.0
        self._orphaned = False
        # What happened to each tunnel, for `tunnelman log` and the TUI, outliving this agent.
        self._events = EventRecorder(events_path())

    # ------------------------------------------------------------------------- life

    def open(self, lock_wait: float = LOCK_WAIT) -> None:
        """Take the life-long lock, bind the socket, write agent.json. AlreadyRunning if taken."""
        if not self._life.acquire(timeout=lock_wait):
            pid = read_pid(self.files.lock)
            raise AlreadyRunning(
                f"an agent is already running (pid {pid if pid else '?'})",
                hint="`tunnelman agent stop` stops it",
            )
        try:
            self._life.write(str(os.getpid()))
            self._listener = self._bind_tcp() if self.tcp else self._bind_unix()
            self._listener.setblocking(False)
            self._write_state()
        except BaseException:
            self._close_listener()
            self._life.release()
            raise
        _log.info(
            "agent %d listening on %s (idle timeout %s)",
            os.getpid(),
            f"127.0.0.1:{self._port}" if self.tcp else self.files.socket,
            f"{self.idle_timeout:g} s" if self.idle_timeout > 0 else "none",
        )

    def _bind_unix(self) -> socket.socket:
        path = self.files.socket
        # We hold the life lock: whatever is there was left by an agent that is gone.
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        sock = socket.socket(net.unix_family(), socket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket file is born 0600: no window where others may connect
        try:
            sock.bind(str(path))
        except OSError:
            sock.close()
            raise
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        sock.listen(_BACKLOG)
        self._socket_ino = path.stat().st_ino
        return sock

    def _bind_tcp(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(_BACKLOG)
        self._port = int(sock.getsockname()[1])
        self._token = secrets.token_urlsafe(32)
        return sock

    def _write_state(self) -> None:
        with self._state_lock:  # snapshot and write together: the last write is the newest
            self._write_state_locked()

    def _write_state_locked(self) -> None:
        with self._lock:
            tunnels = {name: h.tunnel.local_port for name, h in self._held.items()}
        state: dict[str, Any] = {
            "pid": os.getpid(),
            "version": __version__,
            "protocol": protocol.VERSION,
            "started": self.started,
            "transport": "tcp" if self.tcp else "unix",
            "tunnels": tunnels,
        }
        if self.tcp:
            state |= {"port": self._port, "token": self._token}
        else:
            state["socket"] = str(self.files.socket)
        try:
            self.files.write_state(state)
        except OSError:
            _log.exception("cannot write %s", self.files.state)

    def stop(self) -> None:
        """Ask `serve()` to close every tunnel and return (any thread, signal handlers too)."""
        self._stop.set()

    def serve(self) -> None:
        """Accept and answer connections until stopped or idle, then close everything."""
        assert self._listener is not None
        self._selector = selectors.DefaultSelector()
        try:
            while not self._stop.is_set():
                if self._idle_expired():
                    _log.info("no tunnels for %g s: exiting", self.idle_timeout)
                    break
                self._check_address()
                self._expire_lingering()
                self._turn()
        finally:
            for conn in list(self._open.values()):
                self._drop(conn)
            self._sync_listener(want=False)
            self._selector.close()
            self._shutdown()

    def _turn(self) -> None:
        """One turn of the loop: read what is there, then accept a batch, then expire."""
        assert self._selector is not None
        self._sync_listener(want=self._has_room(time.monotonic()))
        timeout = self._select_timeout()
        if not self._selector.get_map():
            # Nothing registered (accept paused): Windows' select() refuses three empty lists.
            self._stop.wait(timeout)
            return
        try:
            events = self._selector.select(timeout)
        except InterruptedError:
            return
        accept = False
        for key, mask in events:
            conn = key.data
            if conn is None:
                accept = True
                continue
            if mask & selectors.EVENT_WRITE and not conn.closed:
                self._flush(conn)
            if mask & selectors.EVENT_READ and not conn.closed:
                self._read(conn)
        if accept:
            self._accept_batch()
        self._expire(time.monotonic())

    def _sync_listener(self, *, want: bool) -> None:
        """The listener is in the selector only while there is room for one more connection."""
        assert self._selector is not None
        target = self._listener if want else None
        if self._registered is target:
            return
        if self._registered is not None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.unregister(self._registered)
        self._registered = None
        if target is not None:
            self._selector.register(target, selectors.EVENT_READ, None)
            self._registered = target

    def _has_room(self, now: float) -> bool:
        if now < self._accept_paused_until:
            return False
        if len(self._open) < protocol.MAX_CONNECTIONS and (
            len(self._unauth) < protocol.MAX_UNAUTHENTICATED
        ):
            return True
        oldest = next(iter(self._unauth.values()), None)
        return oldest is not None and now - oldest.accepted >= protocol.EVICT_GRACE

    def _select_timeout(self) -> float:
        now = time.monotonic()
        timeout = _ACCEPT_TICK
        oldest = next(iter(self._unauth.values()), None)
        if oldest is not None:
            timeout = min(timeout, oldest.accepted + protocol.FIRST_LINE_TIMEOUT - now)
            if self._registered is None:  # full: wake when the oldest may be dropped
                timeout = min(timeout, oldest.accepted + protocol.EVICT_GRACE - now)
        if self._accept_paused_until > now:
            timeout = min(timeout, self._accept_paused_until - now)
        return max(timeout, 0.005)

    def _accept_batch(self) -> None:
        assert self._selector is not None
        listener = self._listener
        if listener is None:
            return
        for _ in range(_ACCEPT_BATCH):
            now = time.monotonic()
            if not self._make_room(now):
                return
            try:
                sock, _addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                # Out of file descriptors or memory: leave the rest in the backlog a moment.
                self._accept_paused_until = now + 0.1
                self._count_drop(f"accept failed ({exc.strerror or exc})")
                return
            if not self._peer_allowed(sock):
                sock.close()
                continue
            try:
                sock.setblocking(False)
                conn = _Conn(sock, now)
                self._selector.register(sock, selectors.EVENT_READ, conn)
            except (OSError, ValueError):
                sock.close()
                continue
            self._open[sock.fileno()] = conn
            self._unauth[sock.fileno()] = conn

    def _make_room(self, now: float) -> bool:
        """Room for one more connection, dropping the oldest unauthenticated one if it must and
        may (it has had EVICT_GRACE seconds: our clients send their request at once)."""
        if len(self._open) < protocol.MAX_CONNECTIONS and (
            len(self._unauth) < protocol.MAX_UNAUTHENTICATED
        ):
            return True
        oldest = next(iter(self._unauth.values()), None)
        if oldest is None or now - oldest.accepted < protocol.EVICT_GRACE:
            return False
        self._drop(oldest, "dropped for a newer one (too many without a request)")
        return True

    def _expire(self, now: float) -> None:
        while self._unauth:
            oldest = next(iter(self._unauth.values()))
            if now - oldest.accepted < protocol.FIRST_LINE_TIMEOUT:
                break
            self._drop(oldest, f"no request within {protocol.FIRST_LINE_TIMEOUT:g} s")
        self._report_drops(now)

    def _count_drop(self, reason: str) -> None:
        self._dropped[reason] = self._dropped.get(reason, 0) + 1

    def _report_drops(self, now: float) -> None:
        """One log line now and then, however many were dropped: a flood must not fill the disk."""
        if not self._dropped or now < self._next_drop_report:
            return
        self._next_drop_report = now + _DROP_REPORT
        counts = ", ".join(f"{n} {reason}" for reason, n in sorted(self._dropped.items()))
        self._dropped.clear()
        _log.warning("closed connections: %s", counts)

    def _drop(self, conn: _Conn, reason: str | None = None) -> None:
        if conn.closed:
            return
        conn.closed = True
        if reason is not None:
            self._count_drop(reason)
        fd = conn.sock.fileno()
        self._open.pop(fd, None)
        self._unauth.pop(fd, None)
        if self._selector is not None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.unregister(conn.sock)
        with contextlib.suppress(OSError):
            conn.sock.close()

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn)
            return
        if not data:
            if conn.out:
                conn.closing = True  # a client that shut its side down still gets its answer
                self._want(conn)
            else:
                self._drop(conn)
            return
        start = len(conn.buf)
        conn.buf += data
        while not conn.closed and not conn.closing:
            end = conn.buf.find(b"\n", start)
            if end < 0:
                if len(conn.buf) > protocol.MAX_REQUEST:
                    self._drop(conn, f"sent over {protocol.MAX_REQUEST} bytes without a newline")
                return
            line = bytes(conn.buf[:end])
            del conn.buf[: end + 1]
            start = 0
            try:
                keep = self._on_line(conn, line)
            except Exception:
                # The loop serves every connection: one request it cannot handle must cost only
                # that connection, never the agent (and the owner's tunnels with it).
                _log.exception("a request on the agent's socket could not be handled")
                self._drop(conn, "sent a request the agent could not handle")
                return
            if not keep:
                return

    def _on_line(self, conn: _Conn, line: bytes) -> bool:
        """One request read by the loop; whether the loop keeps reading this connection."""
        try:
            message = protocol.decode(line, protocol.MAX_REQUEST)
        except protocol.ProtocolError:
            self._drop(conn, "sent a line that is not a request")
            return False
        if not conn.authed:
            if not self._authorised(message):
                # Answered without `_handle`: a stranger's request must not count as activity.
                self._count_drop("sent a bad or missing token")
                refused = protocol.error_to_wire(AgentError("bad or missing token"))
                self._reply(conn, {**refused, "v": protocol.VERSION}, close=True)
                return False
            conn.authed = True
            self._unauth.pop(conn.sock.fileno(), None)
        op = message.get("op")
        if isinstance(op, str) and op in _INLINE_OPS:  # an `op` that is a list is unhashable
            self._reply(conn, self._handle(message, protocol.LineSocket(conn.sock)))
            return not conn.closed
        self._hand_off(conn, message)
        return False

    def _reply(self, conn: _Conn, reply: dict[str, Any], *, close: bool = False) -> None:
        conn.out += protocol.encode(reply)
        if len(conn.out) > _MAX_OUTPUT:
            self._drop(conn, "did not read its replies")
            return
        conn.closing = conn.closing or close
        self._flush(conn)

    def _flush(self, conn: _Conn) -> None:
        try:
            sent = conn.sock.send(conn.out) if conn.out else 0
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._drop(conn)
            return
        del conn.out[:sent]
        if conn.closing and not conn.out:
            self._drop(conn)
            return
        self._want(conn)

    def _want(self, conn: _Conn) -> None:
        """Read while it may send requests; write while replies wait."""
        assert self._selector is not None
        events = (0 if conn.closing else selectors.EVENT_READ) | (
            selectors.EVENT_WRITE if conn.out else 0
        )
        if not events:
            self._drop(conn)
            return
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.modify(conn.sock, events, conn)

    def _hand_off(self, conn: _Conn, message: dict[str, Any]) -> None:
        """A request that takes long or keeps the connection: a thread of its own, if one is free."""
        assert self._selector is not None
        with self._lock:
            free = self._workers < protocol.MAX_WORKERS
            if free:
                self._workers += 1
        if not free:
            busy = AgentError(
                f"the agent is busy: {protocol.MAX_WORKERS} requests are in progress",
                hint="try again in a moment",
            )
            self._count_drop("refused: every worker busy")
            self._reply(conn, {**protocol.error_to_wire(busy), "v": protocol.VERSION}, close=True)
            return
        fd = conn.sock.fileno()
        self._open.pop(fd, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.unregister(conn.sock)
        sock = conn.sock
        with self._lock:
            self._conns.add(sock)
        try:
            sock.setblocking(True)
            threading.Thread(
                target=self._serve_connection,
                args=(sock, message, bytes(conn.buf), bytes(conn.out)),
                name="agent-conn",
                daemon=True,
            ).start()
        except (OSError, RuntimeError) as exc:  # no thread to be had
            _log.warning("cannot serve a connection: %s", exc)
            with self._lock:
                self._conns.discard(sock)
                self._workers -= 1
            conn.closed = True
            with contextlib.suppress(OSError):
                sock.close()

    def _expire_lingering(self) -> None:
        """Close the one-shot tunnels whose linger ran out with no client connected."""
        now = time.time()
        with self._lock:
            lingering = [h for h in self._held.values() if h.linger is not None]
        due: list[Held] = []
        for held in lingering:
            if held.linger is None or held.linger_until is None or not held.ready.is_set():
                continue
            if held.tunnel.status.connections > 0:
                held.touch(now)
            elif now >= held.linger_until:
                due.append(held)
        expired: list[Held] = []
        with self._lock:
            for held in due:
                # Still ours, still lingering, and not touched since we looked.
                until = held.linger_until
                if (
                    self._held.get(held.name) is held
                    and held.linger is not None
                    and (until is not None and time.time() >= until)
                ):
                    del self._held[held.name]
                    expired.append(held)
        if not expired:
            return
        for held in expired:
            _log.info("%s: linger of %g s over with no client: closing", held.name, held.linger)

        def close() -> None:
            self._stop_all(expired)
            self._write_state()
            for held in expired:
                self._publish({"event": "removed", "name": held.name})

        # Off the loop: closing waits a little for the tunnel's threads.
        threading.Thread(target=close, name="agent-linger-close", daemon=True).start()

    def _idle_expired(self) -> bool:
        now = time.monotonic()
        with self._lock:
            busy = self._busy > 0 or bool(self._held) or bool(self._subscribers)
            if busy:
                self._last_busy = now
                return False
            return self.idle_timeout > 0 and now - self._last_busy >= self.idle_timeout

    def _check_address(self) -> None:
        """Listen again if our files were removed under us (a runtime dir cleaned at logout):
        otherwise the next client would start a second agent and ours would be unreachable."""
        now = time.monotonic()
        if self._orphaned or now < self._next_check:
            return
        self._next_check = now + _ADDRESS_CHECK
        try:
            if self.tcp:
                intact = self.files.state.exists() and self.files.lock.exists()
            else:
                intact = self.files.socket.stat().st_ino == self._socket_ino
        except OSError:
            intact = False
        if intact:
            return
        _log.warning("the agent's files in %s were removed: recreating them", self.files.dir)
        try:
            ensure_private_dir(self.files.dir)
            life = FileLock(self.files.lock)
            if not life.acquire(timeout=0):
                self._orphaned = True
                _log.error(
                    "another agent took over %s; this one (pid %d) keeps its tunnels but can no "
                    "longer be reached: stop it with kill %d",
                    self.files.dir,
                    os.getpid(),
                    os.getpid(),
                )
                return
            life.write(str(os.getpid()))
            self._life.release()
            self._life = life
            if not self.tcp:
                listener = self._bind_unix()
                listener.setblocking(False)
                self._close_listener()
                self._listener = listener
            self._write_state()
        except (OSError, AgentError):
            _log.exception("cannot recreate the agent's files")

    def _peer_allowed(self, conn: socket.socket) -> bool:
        """Defence in depth behind the 0600 socket: the peer must be our own user (Linux, macOS)."""
        if self.tcp:
            return True
        peer = net.peer_credentials(conn)
        if peer is None:
            return True
        if peer.uid != net.my_uid():
            _log.warning("refused a connection from pid %s of uid %d", peer.pid, peer.uid)
            return False
        return True

    def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.close()

    def _shutdown(self) -> None:
        self._stop.set()
        self._close_listener()
        if not self.tcp:
            with contextlib.suppress(OSError):
                self.files.socket.unlink()
        with self._lock:
            held = list(self._held.values())
            self._held.clear()
        if held:
            _log.info("closing %d tunnel(s): %s", len(held), ", ".join(h.name for h in held))
        self._stop_all(held)
        self._publish({"event": "shutdown"})
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.files.state.unlink()
        self._life.release()
        _log.info("agent %d stopped", os.getpid())

    @staticmethod
    def _stop_all(held: Sequence[Held]) -> None:
        """Stop tunnels in parallel: each may take a moment to close its connections."""
        threads = []
        for h in held:
            h.cancel.set()
            thread = threading.Thread(target=h.tunnel.stop, name=f"agent-stop-{h.name}")
            thread.start()
            threads.append(thread)
        deadline = time.monotonic() + 30
        for thread in threads:
            thread.join(timeout=max(0.1, deadline - time.monotonic()))

    # ------------------------------------------------------------------------- connections

    def _serve_connection(
        self, conn: socket.socket, first: dict[str, Any], buffered: bytes, pending: bytes
    ) -> None:
        """A worker: `first` (read by the loop), then whatever else the client asks on it."""
        lines = protocol.LineSocket(conn, limit=protocol.MAX_REQUEST, buffered=buffered)
        try:
            if pending:
                conn.sendall(pending)
            message: dict[str, Any] | None = first
            while message is not None and not self._stop.is_set():
                op = message.get("op")
                if op == "subscribe" and self._authorised(message):
                    self._subscribe(lines)
                    break
                reply = self._handle(message, lines)
                lines.send(reply)
                if op == "shutdown" and reply.get("ok"):
                    self.stop()
                    break
                message = lines.recv()
        except (OSError, protocol.ProtocolError) as exc:
            _log.debug("connection closed: %s", exc)
        except Exception:
            _log.exception("connection handler failed")
        finally:
            with self._lock:
                self._conns.discard(conn)
                self._workers -= 1
            lines.close()

    def _authorised(self, message: dict[str, Any]) -> bool:
        if self._token is None:
            return True
        token = message.get("token")
        return isinstance(token, str) and hmac.compare_digest(token, self._token)

    def _handle(self, message: dict[str, Any], lines: protocol.LineSocket) -> dict[str, Any]:
        # Questions (a status bar polling `status`) do not keep an agent without tunnels alive.
        counts = message.get("op") not in ("ping", "status")
        if counts:
            with self._lock:
                self._busy += 1
        try:
            if message.get("v") != protocol.VERSION:
                raise AgentError(
                    f"this agent (tunnelman {__version__}) speaks protocol version "
                    f"{protocol.VERSION}, the request version {message.get('v')!r}",
                    hint="stop it with `tunnelman agent stop`; the next command starts a new one",
                )
            if not self._authorised(message):
                raise AgentError("bad or missing token")
            op = message.get("op")
            handler = {
                "ping": self._op_ping,
                "status": self._op_status,
                "up": self._op_up,
                "down": self._op_down,
                "down_all": self._op_down_all,
                "shutdown": self._op_shutdown,
                "oneshot": self._op_oneshot,
            }.get(str(op))
            if handler is None:
                raise AgentError(f"unknown request {op!r}")
            reply = handler(message, lines)
            reply.setdefault("ok", True)
        except TunnelmanError as exc:
            reply = protocol.error_to_wire(exc)
        except Exception as exc:
            _log.exception("request %r failed", message.get("op"))
            reply = protocol.error_to_wire(exc)
        finally:
            if counts:
                with self._lock:
                    self._busy -= 1
                    self._last_busy = time.monotonic()
        reply["v"] = protocol.VERSION
        return reply

    # ------------------------------------------------------------------------- requests

    def _op_ping(self, _message: dict[str, Any], _lines: protocol.LineSocket) -> dict[str, Any]:
        with self._lock:
            count = len(self._held)
        return {
            "pid": os.getpid(),
            "version": __version__,
            "protocol": protocol.VERSION,
            "features": list(protocol.FEATURES),
            "started": self.started,
            "tunnels": count,
            "idle_timeout": self.idle_timeout,
            "transport": "tcp" if self.tcp else "unix",
            "address": f"127.0.0.1:{self._port}" if self.tcp else str(self.files.socket),
            "log": str(log_path()),
        }

    def _op_status(self, message: dict[str, Any], _lines: protocol.LineSocket) -> dict[str, Any]:
        name = message.get("name")
        with self._lock:
            held = [h for h in self._held.values() if name is None or h.name == name]
        tunnels = [protocol.status_to_wire(h.status()) for h in held]
        if message.get("history") is True:
            for wire, h in zip(tunnels, held, strict=True):
                wire["history"] = h.rate_history()
        return {"tunnels": tunnels}

    def _op_oneshot(self, message: dict[str, Any], _lines: protocol.LineSocket) -> dict[str, Any]:
        """The warm one-shot's settings for NAME's tunnel (`warm`); "not held" when it is not
        up or not what the client's profile file now says. Secrets only over the Unix socket."""
        from tunnelman.agent import warm

        name = _text(message, "name")
        with self._lock:
            held = self._held.get(name)
        if held is None or not held.ready.is_set():
            return warm.not_held("no such tunnel")
        status = held.status()
        port = status.local_port
        if status.state != TunnelState.UP or not port:
            return warm.not_held(f"the tunnel is {status.state}")
        return warm.answer(
            message,
            held.profile,
            port,
            same=lambda a, b: _settings(a) == _settings(b),
            secrets=not self.tcp,
        )

    def _op_shutdown(self, _message: dict[str, Any], _lines: protocol.LineSocket) -> dict[str, Any]:
        with self._lock:
            count = len(self._held)
        _log.info("shutdown requested (%d tunnel(s) held)", count)
        return {"pid": os.getpid(), "tunnels": count}

    def _op_down(self, message: dict[str, Any], _lines: protocol.LineSocket) -> dict[str, Any]:
        name = _text(message, "name")
        with self._lock:
            held = self._held.pop(name, None)
            others = sorted(self._held)
        if held is None:
            raise AgentError(
                f"no tunnel '{name}' is held by the agent",
                hint=f"it holds: {', '.join(others)}" if others else "it holds no tunnels",
            )
        _log.info("down %s", name)
        open_before = held.status().connections
        self._stop_all([held])
        self._write_state()
        self._publish({"event": "removed", "name": name})
        return {"tunnel": protocol.status_to_wire(_closed_status(held, open_before))}

    def _op_down_all(self, _message: dict[str, Any], _lines: protocol.LineSocket) -> dict[str, Any]:
        with self._lock:
            held = list(self._held.values())
            self._held.clear()
        _log.info("down --all (%d tunnel(s))", len(held))
        open_before = [h.status().connections for h in held]
        self._stop_all(held)
        self._write_state()
        for h in held:
            self._publish({"event": "removed", "name": h.name})
        return {
            "tunnels": [
                protocol.status_to_wire(_closed_status(h, n))
                for h, n in zip(held, open_before, strict=True)
            ]
        }

    def _op_up(self, message: dict[str, Any], lines: protocol.LineSocket) -> dict[str, Any]:
        from tunnelman.core import profiles
        from tunnelman.core.ssh.known_hosts import HostKeyPolicy
        from tunnelman.core.tunnel import open_tunnel

        name = _text(message, "name")
        config = _text(message, "config")
        if not os.path.isabs(config):
            raise AgentError(f"the profile file must be an absolute path, not {config!r}")
        port = message.get("port")
        if port is not None and (not isinstance(port, int) or not 0 <= port <= 65535):
            raise AgentError(f"bad port {port!r}")
        linger = message.get("linger")
        if linger is not None and (
            isinstance(linger, bool)
            or not isinstance(linger, int | float)
            or not 0 < linger <= protocol.MAX_LINGER
        ):
            raise AgentError(f"bad linger {linger!r}: seconds from 1 to {protocol.MAX_LINGER}")
        self._adopt_ssh_auth_sock(message.get("ssh_auth_sock"))
        profile = profiles.load(config, missing_ok=False).get(name)

        fingerprint = message.get("accept_fingerprint")
        if message.get("accept_new") is True:
            policy = HostKeyPolicy(accept_new=True)
        elif isinstance(fingerprint, str) and fingerprint:
            # The person saw this fingerprint in their terminal and said yes: accept that key only.
            policy = HostKeyPolicy(
                ask=lambda info: hmac.compare_digest(info.fingerprint, fingerprint)
            )
        else:
            policy = HostKeyPolicy()  # nobody to ask: unknown keys come back as HostKeyUnknown

        with self._lock:
            if self._stop.is_set():
                raise AgentError("the agent is shutting down", hint="run the command again")
            held = self._held.get(name)
            replaced: Held | None = None
            if held is not None and held.is_open:
                existing = held
            else:
                existing = None
                replaced = held
                cancel = threading.Event()
                tunnel = open_tunnel(
                    profile,
                    local_port=port,
                    host_keys=policy,
                    passphrase=_passphrase_refused(name),
                    on_status=self._on_status,
                    cancel=cancel,
                    supervise=True,
                )
                tunnel.on_client = self._on_client(name)
                held = Held(name=name, profile=profile, cancel=cancel, tunnel=tunnel)
                self._held[name] = held
            hold = None if linger is None else float(linger)
            if existing is None:
                held.hold(hold, time.time())
        if existing is not None:
            reply = self._join_existing(existing, profile, port)
            existing.hold(hold, time.time())
            reply["tunnel"] = protocol.status_to_wire(existing.status())
            return reply
        if replaced is not None:
            self._stop_all([replaced])
        _log.info("up %s (port %s)", name, port if port is not None else "from the profile")
        self._write_state()
        try:
            self._start_watching_client(held, lines)
        except BaseException as exc:
            with self._lock:
                if self._held.get(name) is held:
                    del self._held[name]
                    removed = True
                else:
                    removed = False
            if removed:
                self._write_state()
                self._publish({"event": "removed", "name": name})
            if isinstance(exc, TunnelError) and held.cancel.is_set():
                raise TunnelError(f"tunnel '{name}' was closed before it came up") from None
            if isinstance(exc, AWSError):
                raise _with_aws_env_note(exc, message.get("aws_env")) from None
            raise
        self._write_state()
        return {"tunnel": protocol.status_to_wire(held.status())}

    def _join_existing(self, held: Held, profile: Profile, port: int | None) -> dict[str, Any]:
        """`up` for a tunnel already held: the same tunnel, unless it cannot be what was asked."""
        held.ready.wait(timeout=float(held.profile.connect_timeout) * 6 + 30)
        if held.failure is not None:
            raise held.failure
        bound = held.tunnel.local_port
        if port and bound is not None and bound != port:
            raise AgentError(
                f"tunnel '{held.name}' is already up on 127.0.0.1:{bound}, not {port}",
                hint=f"close it first with `tunnelman down {held.name}`",
            )
        if _settings(profile) != _settings(held.profile):
            raise AgentError(
                f"tunnel '{held.name}' is held with the profile as it was when it was opened, "
                "and the profile has changed since",
                hint=f"`tunnelman down {held.name}` then open it again to use the new settings",
            )
        return {"tunnel": protocol.status_to_wire(held.status()), "existing": True}

    def _start_watching_client(self, held: Held, lines: protocol.LineSocket) -> None:
        """Run `start()`; if the client hangs up meanwhile (Ctrl-C), cancel it."""
        done = threading.Event()

        def run() -> None:
            try:
                held.tunnel.start()
            except BaseException as exc:
                held.failure = exc
            finally:
                held.ready.set()
                done.set()

        threading.Thread(target=run, name=f"agent-start-{held.name}", daemon=True).start()
        sock = lines.sock
        while not done.wait(0.2):
            if lines.buffered or held.cancel.is_set():
                continue
            with contextlib.suppress(OSError, ValueError):
                readable, _, _ = select.select([sock], [], [], 0)
                if readable and sock.recv(1, socket.MSG_PEEK) == b"":
                    _log.info("client gave up on up %s: cancelling", held.name)
                    held.cancel.set()
                    held.tunnel.stop()
        if held.failure is not None:
            raise held.failure

    @staticmethod
    def _adopt_ssh_auth_sock(value: object) -> None:
        """Use the client's ssh-agent when ours is missing or gone (the agent outlives shells)."""
        if not isinstance(value, str) or not value or not os.path.exists(value):
            return
        current = os.environ.get("SSH_AUTH_SOCK")
        if not current or not os.path.exists(current):
            os.environ["SSH_AUTH_SOCK"] = value

    # ------------------------------------------------------------------------- events

    def _on_status(self, status: TunnelStatus) -> None:
        _log.info(
            "%s: %s%s", status.name, status.state, f" ({status.error})" if status.error else ""
        )
        self._events.status(status)
        self._publish({"event": "status", "tunnel": protocol.status_to_wire(status)})

    def _on_client(self, name: str) -> Callable[[TunnelStatus, bool], None]:
        """A tunnel's client callback: the event log, and a lingering tunnel's clock (no lock:
        the tunnel's thread calls it, and `_held.get` and one float store are atomic)."""

        def on_client(status: TunnelStatus, arrived: bool) -> None:
            self._events.client(status, arrived)
            held = self._held.get(name)
            if held is not None:
                held.touch(time.time())

        return on_client

    def _publish(self, event: dict[str, Any]) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for sub in subscribers:
            try:
                sub.events.put_nowait(event)
            except queue.Full:
                sub.overflowed = True

    def _subscribe(self, lines: protocol.LineSocket) -> None:
        sub = _Subscriber()
        with self._lock:
            self._subscribers.add(sub)
            held = list(self._held.values())
        try:
            lines.send(
                {
                    "v": protocol.VERSION,
                    "ok": True,
                    "tunnels": [protocol.status_to_wire(h.status()) for h in held],
                }
            )
            sock = lines.sock
            while not self._stop.is_set() and not sub.overflowed:
                try:
                    event = sub.events.get(timeout=0.5)
                except queue.Empty:
                    # Nothing to say: notice a subscriber that went away.
                    readable, _, _ = select.select([sock], [], [], 0)
                    if readable and sock.recv(1, socket.MSG_PEEK) == b"":
                        return
                    continue
                lines.send(event)
                if event.get("event") == "shutdown":
                    return
            if self._stop.is_set():
                with contextlib.suppress(OSError):
                    lines.send({"event": "shutdown"})
        finally:
            with self._lock:
                self._subscribers.discard(sub)


def _closed_status(held: Held, cut: int) -> TunnelStatus:
    """`down`'s reply: the stopped tunnel, its `connections` the client connections it cut."""
    import dataclasses

    return dataclasses.replace(held.status(), connections=cut)


def _settings(profile: Profile) -> Profile:
    """The profile minus what does not change the tunnel (its description, its linger)."""
    import dataclasses

    return dataclasses.replace(profile, description="", linger=0)


def _text(message: dict[str, Any], key: str) -> str:
    value = message.get(key)
    if not isinstance(value, str) or not value:
        raise AgentError(f"request without {key!r}")
    return value


# ----------------------------------------------------------------------------- entry point


def _log_thread_crash(args: threading.ExceptHookArgs) -> None:
    _log.error(
        "uncaught exception in thread %s",
        args.thread.name if args.thread else "?",
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),  # type: ignore[arg-type]
    )


def run(
    *,
    idle_timeout: float | None = None,
    detached: bool = False,
    log_to_stderr: bool = False,
    lock_wait: float = LOCK_WAIT,
    on_ready: Callable[[Agent], None] | None = None,
) -> int:
    """Run an agent in this process until it stops; the exit status (3: one already runs)."""
    log_file = log_path()
    with contextlib.suppress(OSError):
        setup_file_logging(log_file)
    if log_to_stderr:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        logging.getLogger("tunnelman").addHandler(handler)
    threading.excepthook = _log_thread_crash
    agent = Agent(
        paths(create=True),
        idle_timeout=idle_timeout_from_env() if idle_timeout is None else idle_timeout,
        tcp=use_tcp(),
    )
    agent.open(lock_wait)

    def on_signal(_sig: int, _frame: FrameType | None) -> None:
        agent.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    if detached and hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        if on_ready is not None:
            on_ready(agent)
        agent.serve()
    finally:
        for sig, handler_ in previous.items():
            signal.signal(sig, handler_)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tunnelman.agent`: what the client starts in the background."""
    parser = argparse.ArgumentParser(prog="python -m tunnelman.agent")
    parser.add_argument("--idle-timeout", type=float, default=None, metavar="SECONDS")
    parser.add_argument("--detached", action="store_true", help="started by a client")
    parser.add_argument("--lock-wait", type=float, default=LOCK_WAIT, metavar="SECONDS")
    args = parser.parse_args(argv)
    try:
        return run(idle_timeout=args.idle_timeout, detached=args.detached, lock_wait=args.lock_wait)
    except AlreadyRunning as exc:
        _log.info("not starting: %s", exc)
        return EXIT_ALREADY_RUNNING
    except TunnelmanError as exc:
        _log.error("agent cannot start: %s", exc)
        return 1
    except Exception:
        _log.exception("agent crashed")
        return 1
