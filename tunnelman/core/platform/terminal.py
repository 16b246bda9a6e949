"""Signals and the terminal per OS: what means "stop", and how Ctrl-C reaches a child.

POSIX: Ctrl-C is SIGINT to the terminal's foreground process group; a child started there gets it
by itself (psql cancels its query), so the parent ignores it and forwards it only when the
terminal could not have delivered it (we are not the foreground group). SIGTERM and SIGHUP mean
"stop" and are forwarded to a running child.

Windows: the console sends Ctrl-C (and Ctrl-Break, and the close of the console window) to every
process attached to it, the child included, so the parent only has to ignore them while the child
runs; a signal cannot be sent to one process (os.kill with SIGINT is not a thing there). Python
sees Ctrl-Break and the console's close as SIGBREAK: before the child starts it means "stop"
(clean up and exit), while the child runs the child got it too and its exit ends the wait. SIGTERM
exists only inside Python (signal.raise_signal); it ends a running child with TerminateProcess.
When the console window closes (or the user logs off) Windows ends the process as soon as its
handlers return, Python's included, so no `finally` would run: `console_close_grace` holds that
moment back until the guarded block is done (Windows allows about 5 s).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "CLOSE_GRACE",
    "ChildAction",
    "SignalPlan",
    "console_close_grace",
    "interrupt_reaches_child",
    "signal_plan",
    "signals_named",
    "stop_signals",
]

ChildAction = Literal["send", "terminate", "ignore"]


@dataclass(frozen=True)
class SignalPlan:
    """Signal names, so a plan for any OS can be built (and tested) anywhere."""

    stop: tuple[str, ...]  # caught for the whole one-shot: before the child, "stop"
    interrupt: str  # Ctrl-C
    windows_console: bool  # the console delivers Ctrl-C/Break to the child by itself

    def while_child(self, name: str, *, tty_delivers: bool) -> ChildAction:
        """What to do with signal `name` arriving while the child runs."""
        if self.windows_console:
            return "terminate" if name == "SIGTERM" else "ignore"
        if name == self.interrupt and tty_delivers:
            return "ignore"
        return "send"


def signal_plan(platform: str = sys.platform) -> SignalPlan:
    if platform == "win32":
        return SignalPlan(stop=("SIGTERM", "SIGBREAK"), interrupt="SIGINT", windows_console=True)
    return SignalPlan(stop=("SIGTERM", "SIGHUP"), interrupt="SIGINT", windows_console=False)


def signals_named(names: tuple[str, ...]) -> tuple[signal.Signals, ...]:
    """The signals of this OS among `names` (the others are skipped)."""
    return tuple(getattr(signal, n) for n in names if hasattr(signal, n))


def stop_signals(platform: str = sys.platform) -> tuple[str, ...]:
    """What stops a foreground command holding something open (`up`, `demo`)."""
    if platform == "win32":
        return ("SIGINT", "SIGTERM", "SIGBREAK")
    return ("SIGINT", "SIGTERM")


def interrupt_reaches_child() -> bool:
    """Whether a Ctrl-C reaches a child we start by itself (so we must not forward one)."""
    if sys.platform == "win32":
        return True  # the console delivers it to every process attached to it
    else:  # noqa: RET505  (mypy narrows each platform branch)
        try:
            fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY)
        except OSError:
            return False
        try:
            return os.tcgetpgrp(fd) == os.getpgrp()
        except OSError:
            return False
        finally:
            os.close(fd)


CLOSE_GRACE = 4.0  # s; Windows ends a process 5 s after a close event whatever it does


@contextlib.contextmanager
def console_close_grace() -> Iterator[None]:
    """Windows: on console close, logoff or shutdown, wait (up to CLOSE_GRACE) for this block to
    end before the system ends the process, so its clean-up runs. Elsewhere: nothing."""
    if sys.platform == "win32":
        import ctypes
        from ctypes import wintypes

        done = threading.Event()

        def on_event(event: int) -> bool:
            if event in (2, 5, 6):  # CTRL_CLOSE_EVENT, CTRL_LOGOFF_EVENT, CTRL_SHUTDOWN_EVENT
                done.wait(CLOSE_GRACE)
                return True
            return False  # Ctrl-C / Ctrl-Break: on to Python's own handler

        routine = ctypes.WINFUNCTYPE(wintypes.BOOL, wintypes.DWORD)(on_event)
        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
        registered = bool(kernel32.SetConsoleCtrlHandler(routine, True))
        try:
            yield
        finally:
            done.set()
            if registered:
                kernel32.SetConsoleCtrlHandler(routine, False)
    else:
        yield
