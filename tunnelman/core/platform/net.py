"""Socket options per OS: keepalive names, exclusive listening ports, the relay's send flag, and
the peer credentials of a local (AF_UNIX) connection.

- Keepalive: Linux and Windows (10 1709+) name the idle time TCP_KEEPIDLE, macOS TCP_KEEPALIVE;
  every option is looked up by name, so a system without one simply skips it.
- Listening: on POSIX SO_REUSEADDR only lets a port in TIME_WAIT be reused; on Windows it lets a
  second socket bind a port that is in use, silently. There SO_EXCLUSIVEADDRUSE is the option that
  makes a busy port fail to bind, which is what tunnelman reports.
- The relay writes to a client socket from paramiko's transport thread with a per-call
  non-blocking flag (MSG_DONTWAIT). Windows has no such flag: `NOWAIT_FLAG` is None there and the
  relay keeps to its two-thread path.
- Peer credentials: SO_PEERCRED on Linux, LOCAL_PEERCRED on macOS; elsewhere None (the agent's
  0600 socket, or its token over TCP, is the guard).
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import sys
from dataclasses import dataclass
from typing import Any

__all__ = [
    "NOWAIT_FLAG",
    "REUSE_ADDRESS",
    "PeerCred",
    "exclusive_listener",
    "keepalive_options",
    "listener_options",
    "peer_credentials",
    "port_reserved",
    "prepare_listener",
    "set_keepalive",
    "unix_family",
    "user_timeout_option",
]

Option = tuple[int, int, int]  # (level, option, value) for setsockopt

NOWAIT_FLAG: int | None = getattr(socket, "MSG_DONTWAIT", None)

REUSE_ADDRESS = sys.platform != "win32"
"""Whether listeners set SO_REUSEADDR (socketserver's `allow_reuse_address`)."""


def keepalive_options(ns: Any, idle: int, count: int = 3) -> list[Option]:
    """The setsockopt calls for TCP keepalive with the socket module `ns` (or a stand-in).

    Applied in order, stopping at the first that fails (as one block always has been on Linux):
    SO_KEEPALIVE, then the idle time, interval and probe count under whatever names `ns` has.
    """
    seconds = max(1, idle)
    options: list[Option] = [(ns.SOL_SOCKET, ns.SO_KEEPALIVE, 1)]
    idle_name = next((n for n in ("TCP_KEEPIDLE", "TCP_KEEPALIVE") if hasattr(ns, n)), None)
    if idle_name is None:
        return options
    options.append((ns.IPPROTO_TCP, getattr(ns, idle_name), seconds))
    if hasattr(ns, "TCP_KEEPINTVL"):
        options.append((ns.IPPROTO_TCP, ns.TCP_KEEPINTVL, seconds))
    if hasattr(ns, "TCP_KEEPCNT"):
        options.append((ns.IPPROTO_TCP, ns.TCP_KEEPCNT, count))
    return options


def user_timeout_option(ns: Any, idle: int) -> Option | None:
    """TCP_USER_TIMEOUT (Linux): unacknowledged data for this long kills the connection."""
    if not hasattr(ns, "TCP_USER_TIMEOUT"):
        return None
    return (ns.IPPROTO_TCP, ns.TCP_USER_TIMEOUT, max(1, idle) * 3 * 1000)


def set_keepalive(sock: socket.socket, idle: int) -> None:
    """Let the kernel notice a dead peer: keepalive probes after `idle` s, then a user timeout."""
    with contextlib.suppress(OSError):
        for level, option, value in keepalive_options(socket, idle):
            sock.setsockopt(level, option, value)
    timeout = user_timeout_option(socket, idle)
    if timeout is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(*timeout)


def listener_options(ns: Any, platform: str = sys.platform) -> list[Option]:
    """The options a listening socket gets before bind, so a busy port fails to bind."""
    if platform == "win32":
        return [(ns.SOL_SOCKET, ns.SO_EXCLUSIVEADDRUSE, 1)]
    return [(ns.SOL_SOCKET, ns.SO_REUSEADDR, 1)]


def prepare_listener(sock: socket.socket) -> None:
    """Set `listener_options` on `sock` (before bind)."""
    for level, option, value in listener_options(socket):
        sock.setsockopt(level, option, value)


def port_reserved(exc: OSError) -> bool:
    """A Windows bind refused with WSAEACCES: an excluded port range, or an exclusive holder."""
    return sys.platform == "win32" and getattr(exc, "winerror", None) == 10013


def exclusive_listener(sock: socket.socket) -> None:
    """Before bind on Windows: refuse a port someone else holds (no-op elsewhere)."""
    if sys.platform == "win32":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_EXCLUSIVEADDRUSE, 1)


@dataclass(frozen=True)
class PeerCred:
    uid: int
    pid: int | None = None


# macOS <sys/un.h>: SOL_LOCAL 0, LOCAL_PEERCRED 1 (struct xucred), LOCAL_PEERPID 2.
_SOL_LOCAL = 0
_LOCAL_PEERCRED = 0x001
_LOCAL_PEERPID = 0x002
_XUCRED = struct.Struct("=Ii")  # cr_version, cr_uid (the start of struct xucred)


def peer_credentials(conn: socket.socket) -> PeerCred | None:
    """Who is on the other end of a local socket; None when this OS cannot say."""
    if sys.platform == "darwin":
        try:
            raw = conn.getsockopt(_SOL_LOCAL, _LOCAL_PEERCRED, 76)  # sizeof(struct xucred)
            _version, uid = _XUCRED.unpack_from(raw)
        except (OSError, struct.error):
            return None
        pid: int | None = None
        with contextlib.suppress(OSError, struct.error):
            pid = struct.unpack("i", conn.getsockopt(_SOL_LOCAL, _LOCAL_PEERPID, 4))[0]
        return PeerCred(uid, pid)
    else:  # noqa: RET505  (mypy narrows each platform branch)
        return _so_peercred(conn)


def _so_peercred(conn: socket.socket) -> PeerCred | None:
    if not hasattr(socket, "SO_PEERCRED"):
        return None
    try:
        raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    pid, uid, _gid = struct.unpack("3i", raw)
    return PeerCred(uid, pid)


def my_uid() -> int | None:
    return os.getuid() if hasattr(os, "getuid") else None


def unix_family() -> int:
    """AF_UNIX; OSError on Windows, where the agent listens on TCP + token instead."""
    if sys.platform == "win32":
        raise OSError("no Unix sockets on this system (the agent uses TCP + token)")
    else:  # noqa: RET506  (mypy narrows each platform branch)
        return socket.AF_UNIX
