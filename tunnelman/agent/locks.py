"""Advisory file locks: one agent per user, one start at a time.

`flock` on POSIX (released by the kernel when the holder dies, `kill -9` included, so a crashed
agent never leaves a lock behind), `msvcrt.locking` on Windows (tunnelman.core.platform.process). Used by `server` (the agent's
life-long lock) and `client` (the start lock, and probing whether an agent is alive).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from tunnelman.core.platform import process

_POLL = 0.05


_try_lock = process.try_lock
_unlock = process.unlock


class FileLock:
    """An exclusive lock on `path` (created 0600). Not reentrant."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, timeout: float | None = None) -> bool:
        """Take the lock; wait up to `timeout` s (None: forever, 0: one try). False if not taken."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already locked by this object")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if _try_lock(fd):
                self._fd = fd
                return True
            if deadline is not None and time.monotonic() >= deadline:
                os.close(fd)
                return False
            time.sleep(_POLL)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            _unlock(fd)
        finally:
            os.close(fd)

    def write(self, text: str) -> None:
        """Replace the lock file's content (the holder's pid) while holding it."""
        assert self._fd is not None
        os.lseek(self._fd, 0, os.SEEK_SET)
        os.ftruncate(self._fd, 0)
        os.write(self._fd, text.encode("utf-8"))

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def is_locked(path: Path) -> bool:
    """Whether someone holds the lock on `path` now (probes by taking it for an instant)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        if _try_lock(fd):
            _unlock(fd)
            return False
        return True
    finally:
        os.close(fd)


def read_pid(path: Path) -> int | None:
    """The pid written in a lock file, if any."""
    try:
        text = path.read_text("utf-8").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
