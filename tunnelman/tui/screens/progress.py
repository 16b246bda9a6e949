"""The cluster start / stop wait: an indeterminate progress bar, AWS's status and the seconds so far.

Shown while a worker polls AWS (`aws.wait_for`); the UI stays live (the elapsed time ticks on a
timer of this screen, the status arrives by message). Escape stops waiting, not the change: AWS
carries on, and the screen says so before it goes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, ProgressBar, Static


class ClusterWaitScreen(ModalScreen[bool]):
    """Waiting for a cluster to become available (start) or stopped (stop); escape stops waiting.

    Dismissed with True when the wait ended (the app calls `finish`), False when cancelled.
    """

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "stop_waiting", "Stop waiting")]

    def __init__(
        self,
        title: str,
        goal: str,
        cancel: threading.Event,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(classes="modal")
        self._title = title
        self._goal = goal
        self.cancel = cancel
        self._clock = clock
        self._started = clock()
        self.status = "asking AWS…"

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="wait-dialog"):
            yield Label(self._title, classes="dialog-title")
            yield Static(self._goal, classes="dialog-body")
            yield ProgressBar(total=None, show_eta=False, show_percentage=False, id="wait-bar")
            yield Static(self._line(), id="wait-status")
            yield Static(
                "esc stops waiting (the change carries on in AWS)", classes="dim", id="wait-keys"
            )

    def on_mount(self) -> None:
        self.set_interval(1.0, self._tick)

    def _line(self) -> str:
        return f"{self.status}  ({self.elapsed:.0f} s)"

    @property
    def elapsed(self) -> float:
        return self._clock() - self._started

    def _tick(self) -> None:
        self.query_one("#wait-status", Static).update(self._line())

    def set_status(self, status: str) -> None:
        """AWS's latest word (`starting`, `writer … starting`, `available`)."""
        self.status = status
        if self.is_mounted:
            self._tick()

    def finish(self) -> None:
        """The wait is over (reached, failed): take the screen away."""
        if self.is_attached:
            self.dismiss(True)

    def action_stop_waiting(self) -> None:
        self.cancel.set()
        self.dismiss(False)
