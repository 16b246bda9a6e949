"""The cold one-shot's TCP connection to the bastion, started before the SSH code is loaded.

A cold `tunnelman psql NAME` spends ~0.2 s importing click, the CLI, paramiko and cryptography
before its first packet; meanwhile the bastion could already be resolving nothing, accepting,
forking sshd and sending its banner. `start(profile)` (called by the entry point, `cli.lean`, when
it hands a one-shot to the full CLI because no agent holds the tunnel) opens that connection in a
background thread with `tcp.open_socket`, the same function and so the same errors as the
normal path; `take(profile)` (called by `connection`'s first hop) hands the socket over, once.

Only where nothing can differ from the normal path: plain TCP (`transport = "ssh"`), no jump
host (after ssh_config is applied), the built-in engine, no linger (the agent would connect), no
EC2 Instance Connect key push, a password that needs no prompt, a program that exists. A
connection that is not taken (a prompt held the command for more than `MAX_AGE`, the profile
changed, an error came first) is closed unused, and the normal path connects as today. A failure
of the early connect (refused, unreachable, DNS, timed out) is raised at `take` exactly as
`open_socket` raised it: the same message, hint and exit code.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import TYPE_CHECKING

from tunnelman.core.errors import BastionUnreachable, Cancelled
from tunnelman.core.ssh.tcp import open_socket

if TYPE_CHECKING:
    from collections.abc import Sequence

    from tunnelman.core.profiles import Bastion, Profile

__all__ = ["MAX_AGE", "discard", "for_oneshot", "start", "take"]

MAX_AGE = 10.0
"""Seconds a finished early connection stays usable: well inside sshd's LoginGraceTime (120 s by
default, often lowered), so the handshake never meets a server that is about to drop it."""

_Key = tuple[str, int, int, int]


def _key(profile: Profile) -> _Key | None:
    """What the connection depends on; None where the early connection does not apply."""
    bastion = profile.bastion
    if bastion is None or profile.transport != "ssh" or profile.jump:
        return None
    return (bastion.host, bastion.port, profile.keepalive, profile.connect_timeout)


class _Pending:
    """One early connection: running, or finished with a socket or an error."""

    def __init__(self, key: _Key, bastion: Bastion) -> None:
        self.key = key
        self.bastion = bastion
        self.done = threading.Event()
        self.sock: socket.socket | None = None
        self.error: BastionUnreachable | None = None
        self.finished = 0.0
        self._lock = threading.Lock()
        self._abandoned = False

    def run(self) -> None:
        # Nothing is imported in this thread (the main one is importing the CLI meanwhile).
        _host, _port, keepalive, timeout = self.key
        sock: socket.socket | None = None
        try:
            sock = open_socket(self.bastion, float(timeout), keepalive)
        except BastionUnreachable as exc:
            self.error = exc
        except Exception:  # anything else: the normal path connects and reports it
            sock = None
        with self._lock:
            self.finished = time.monotonic()
            if self._abandoned and sock is not None:
                sock.close()
                sock = None
            self.sock = sock
            self.done.set()

    def abandon(self) -> None:
        """Not used: close the socket now, or when the connect finishes."""
        with self._lock:
            self._abandoned = True
            if self.sock is not None:
                with contextlib.suppress(OSError):
                    self.sock.close()
                self.sock = None


_pending: list[_Pending] = []
_lock = threading.Lock()


def start(profile: Profile) -> bool:
    """Begin the TCP connection to `profile`'s bastion in the background; whether it began.

    `profile` as the file says: ssh_config is applied here as the engine will apply it, so the
    connection goes where the engine would connect (an ssh_config ProxyJump: none is made).
    """
    if profile.engine != "sshtunnel" or profile.linger > 0 or profile.instance_connect:
        return False
    if _key(profile) is None:
        return False
    if profile.ssh_config is not False:
        from tunnelman.core.ssh import config

        try:
            profile, _notes = config.effective(profile)
        except Exception:  # the engine reports it, as today
            return False
    key = _key(profile)
    if key is None or profile.bastion is None:
        return False
    # getaddrinfo encodes a str host with the idna codec, which is imported on first use: here,
    # not in the thread (the normal path imports it at its connect anyway).
    import encodings.idna  # noqa: F401

    pending = _Pending(key, profile.bastion)
    with _lock:
        for old in _pending:
            old.abandon()
        _pending[:] = [pending]
    threading.Thread(target=pending.run, name="tunnelman-preconnect", daemon=True).start()
    return True


def for_oneshot(profile: Profile, argv: Sequence[str]) -> bool:
    """`start`, for a one-shot running `argv`, when the command will connect without asking first.

    A password prompt (or a missing program: the command fails before connecting) would leave
    the connection idle or unused: none is started then.
    """
    if profile.password == "prompt" or not argv:
        return False
    from tunnelman.core.platform import programs

    if not programs.search(argv[0]):  # as `oneshot.find_program` looks for it
        return False
    return start(profile)


def take(profile: Profile, cancel: threading.Event | None = None) -> socket.socket | None:
    """The early connection to `profile`'s bastion, once; None: connect as usual.

    Waits for a connection still under way (its deadline began earlier, so never longer than
    the normal path would). Raises its failure as `open_socket` raised it; `Cancelled` when
    `cancel` is set meanwhile.
    """
    with _lock:
        if not _pending:
            return None
        pending = _pending.pop()
    if pending.key != _key(profile):
        pending.abandon()
        return None
    while not pending.done.wait(0.05):
        if cancel is not None and cancel.is_set():
            pending.abandon()
            raise Cancelled()
    if pending.error is not None:
        raise pending.error
    if time.monotonic() - pending.finished > MAX_AGE:
        pending.abandon()
        return None
    with pending._lock:
        sock, pending.sock = pending.sock, None
    return sock


def discard() -> None:
    """Close any early connection not taken (tests; a caller that will not connect after all)."""
    with _lock:
        for old in _pending:
            old.abandon()
        _pending.clear()
