"""Process helpers for the lab: process trees from /proc, bounded kills, exit safety nets.

Three layers make sure a lab server does not outlive the tests:

1. fixture teardown (``close()``), also when a test fails;
2. ``on_exit``: an atexit hook, for a pytest that ends without teardown (an internal error,
   a second Ctrl-C);
3. ``Watchdog``: a tiny detached helper holding a pipe from the test process; when that
   process dies, even by SIGKILL, the pipe reaches EOF and the helper runs the cleanup
   commands it was given (``pg_ctl stop``, ``kill``, ``rm -rf``).  ``disarm()`` after a
   normal stop.  Processes started from the main thread also get ``PR_SET_PDEATHSIG``.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = [
    "Watchdog",
    "alive",
    "children",
    "descendants",
    "kill_tree",
    "on_exit",
    "on_exit_cancel",
    "preexec_die_with_parent",
    "wait_gone",
]

_PR_SET_PDEATHSIG = 1


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of ``pid`` from /proc, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (comm with spaces) S ppid ..." - comm may contain ')' so split on the last one.
    rest = raw[raw.rindex(")") + 2 :].split()
    return rest[0], int(rest[1])


def alive(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie."""
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (zombies included), by scanning /proc."""
    out: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        st = _stat(int(entry))
        if st is not None and st[1] == pid:
            out.append(int(entry))
    return out


def descendants(pid: int) -> list[int]:
    """All descendants of ``pid``, parents before children."""
    out: list[int] = []
    todo = [pid]
    while todo:
        kids = children(todo.pop())
        out.extend(kids)
        todo.extend(kids)
    return out


def wait_gone(pids: Iterable[int], timeout: float) -> bool:
    """Wait until none of ``pids`` is alive; False when some still are after ``timeout`` s."""
    pending = set(pids)
    deadline = time.monotonic() + timeout
    while True:
        pending = {p for p in pending if alive(p)}
        if not pending:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def kill_tree(pids: Iterable[int], sig: int = signal.SIGTERM, timeout: float = 5.0) -> None:
    """Send ``sig`` to ``pids``; SIGKILL the ones still alive after ``timeout`` s."""
    targets = list(pids)
    for pid in targets:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    if not wait_gone(targets, timeout) and sig != signal.SIGKILL:
        for pid in targets:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_gone(targets, 2.0)


def on_exit(fn: Callable[[], object]) -> None:
    """Run ``fn`` at interpreter exit unless ``on_exit_cancel(fn)`` was called before."""
    atexit.register(fn)


def on_exit_cancel(fn: Callable[[], object]) -> None:
    """Forget an ``on_exit`` registration (after a normal stop)."""
    atexit.unregister(fn)


def _load_prctl() -> Callable[..., int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name, use_errno=True)
    except OSError:
        return None
    fn: Callable[..., int] = libc.prctl
    return fn


_prctl = _load_prctl()


def _set_pdeathsig() -> None:
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def preexec_die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` making the child get SIGTERM when this process dies, or None.

    The kernel ties PDEATHSIG to the creating *thread*, so it is only used from the main
    thread (a worker thread that started sshd and then ended would take sshd with it).
    """
    if _prctl is None or threading.current_thread() is not threading.main_thread():
        return None
    return _set_pdeathsig


_WATCHDOG_CODE = """
import json, subprocess, sys
commands = json.loads(sys.argv[1])
if sys.stdin.buffer.read() != b"disarm":
    for argv in commands:
        try:
            subprocess.run(argv, timeout=60, stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except Exception:
            pass
"""


class Watchdog:
    """Runs ``commands`` (argv lists, in order) if this process dies before ``disarm()``."""

    def __init__(self, commands: list[list[str]]) -> None:
        self.commands = commands
        self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG_CODE, json.dumps(commands)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C to the test's process group spares it
        )

    def disarm(self) -> None:
        """The cleanup was done normally: let the watchdog exit without running it."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            if proc.stdin is not None:
                proc.stdin.write(b"disarm")
                proc.stdin.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
