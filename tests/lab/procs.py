"""Process helpers for the lab: process trees from /proc, bounded kills, exit safety nets.

Every long-lived process the lab starts is registered with ``on_exit`` so that it is stopped
even when pytest ends without running fixture teardown (KeyboardInterrupt, an internal
error).  Processes started from the main thread also get ``PR_SET_PDEATHSIG`` so they die
with a pytest that is killed outright.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = [
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
