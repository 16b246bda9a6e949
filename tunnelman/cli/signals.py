"""Signal routing for commands that hold something open in the foreground (`up`, `demo`)."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from types import FrameType

from tunnelman.core.platform import terminal

Handler = Callable[[int, FrameType | None], None]
# SIGINT and SIGTERM; on Windows SIGBREAK too (Ctrl-Break, or the console window closing).
STOP_SIGNALS: tuple[signal.Signals, ...] = terminal.signals_named(terminal.stop_signals())


@contextmanager
def routed(handler: Handler, signals: Iterable[signal.Signals] = STOP_SIGNALS) -> Iterator[None]:
    """Route `signals` to `handler` for the duration, then restore the previous handlers."""
    old = {sig: signal.getsignal(sig) for sig in signals}
    for sig in old:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


def interrupt(_sig: int, _frame: FrameType | None) -> None:
    """A handler that turns the signal into KeyboardInterrupt, so whatever blocks is unwound."""
    raise KeyboardInterrupt
