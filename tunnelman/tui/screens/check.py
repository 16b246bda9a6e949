"""The check screen: the doctor's steps (`tunnelman.core.diagnose`) for one profile, shown live.

The same steps as `tunnelman check NAME` run in a thread worker; each ✓ / ✗ / - line appears as
its step completes, with the fix under a ✗. Esc closes the screen and sets the doctor's cancel
event: a step still running finishes in the background (reaching the bastion is cut short; the
others are bounded by the profile's connect_timeout), then the doctor closes what it opened.
The app passes how to ask (host key, passphrase, password); without them nobody is asked and
those steps fail with the way out. Hosted by `tunnelman.tui.app` (the app wires the key).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Label, Static
from textual.worker import get_current_worker

from tunnelman.core.diagnose import ALL_STEPS, STEPS, Doctor, StepResult
from tunnelman.core.profiles import Profile, printable

if TYPE_CHECKING:
    from tunnelman.core.credentials import Prompt
    from tunnelman.core.ssh import PassphrasePrompt
    from tunnelman.core.ssh.known_hosts import HostKeyPolicy

_WIDTH = max(len(s) for s in ALL_STEPS) + 2
_MARKS = {"passed": "✓", "failed": "✗", "skipped": "-"}


class StepDone(Message):
    """A step finished (posted from the worker thread)."""

    def __init__(self, result: StepResult, steps: tuple[str, ...] = STEPS) -> None:
        super().__init__()
        self.result = result
        self.steps = steps  # the profile's steps (a transport adds its own)


class CheckDone(Message):
    """Every step has reported (or the doctor itself failed: `error`)."""

    def __init__(self, error: str | None = None) -> None:
        super().__init__()
        self.error = error


class CheckScreen(ModalScreen[None]):
    """`tunnelman check` for one profile, in the TUI."""

    DEFAULT_CSS = """
    CheckScreen {
        align: center middle;
    }
    CheckScreen #check-dialog {
        width: 110;
        max-width: 95%;
        height: auto;
        max-height: 95%;
        border: thick $primary;
        background: $surface;
        padding: 1 2;
    }
    CheckScreen #check-title {
        text-style: bold;
        width: 100%;
        content-align: center middle;
        margin-bottom: 1;
    }
    CheckScreen #check-steps {
        height: auto;
        max-height: 30;
    }
    CheckScreen .check-passed {
        color: $success;
    }
    CheckScreen .check-failed {
        color: $error;
    }
    CheckScreen .check-skipped {
        color: $text-muted;
    }
    CheckScreen .check-hint {
        color: $warning;
    }
    CheckScreen #check-status {
        margin-top: 1;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "close", "Close")]

    def __init__(
        self,
        profile: str | Profile,
        config_path: Path | str | None,
        *,
        host_keys: HostKeyPolicy | None = None,
        passphrase: PassphrasePrompt | None = None,
        password: Prompt | None = None,
    ) -> None:
        super().__init__(classes="modal")
        self.name_checked = profile if isinstance(profile, str) else profile.name
        self.config_path = config_path
        self.host_keys = host_keys
        self.passphrase = passphrase
        self.password = password
        self.results: list[StepResult] = []
        self.steps: tuple[str, ...] = STEPS
        self.finished = False
        self._cancel = threading.Event()

    @property
    def ok(self) -> bool:
        """Every step passed (meaningful once `finished`)."""
        return len(self.results) == len(self.steps) and all(r.passed for r in self.results)

    def compose(self) -> ComposeResult:
        with Vertical(id="check-dialog"):
            yield Label(f"Check '{printable(self.name_checked)}'", id="check-title")
            yield VerticalScroll(id="check-steps")
            yield Static(f"… {STEPS[0]}", id="check-status", markup=False)
            yield Static("Esc closes.", classes="check-skipped", markup=False)

    def on_mount(self) -> None:
        self._run_doctor()

    @work(thread=True, exclusive=True, group="check")
    def _run_doctor(self) -> None:
        worker = get_current_worker()
        doctor = Doctor(
            self.config_path,
            self.name_checked,
            host_keys=self.host_keys,
            passphrase=self.passphrase,
            password=self.password,
            cancel=self._cancel,
        )
        steps = doctor.run()
        try:
            for result in steps:
                if worker.is_cancelled or self._cancel.is_set():
                    return  # the screen was closed: stop, and close what was opened
                self.post_message(StepDone(result, doctor.steps))
        except Exception as exc:  # a bug in a step: say so here rather than take the app down
            self.post_message(CheckDone(f"internal error: {exc!r}"))
            return
        finally:
            steps.close()
        self.post_message(CheckDone())

    def on_step_done(self, message: StepDone) -> None:
        result = message.result
        self.steps = message.steps
        self.results.append(result)
        box = self.query_one("#check-steps", VerticalScroll)
        label = result.step.ljust(_WIDTH)
        mark = _MARKS[result.outcome]
        if result.skipped:
            lines = [f"{mark} {label}skipped"]
        else:
            detail = f"\n  {''.ljust(_WIDTH)}".join(
                printable(x) for x in (*result.detail.split("\n"), *result.notes)
            )
            lines = [f"{mark} {label}{detail}"]
        box.mount(
            Static("\n".join(lines), classes=f"check-line check-{result.outcome}", markup=False)
        )
        if result.failed and result.hint:
            box.mount(
                Static(
                    f"  {''.ljust(_WIDTH)}fix: {printable(result.hint)}",
                    classes="check-line check-hint",
                    markup=False,
                )
            )
        index = self.steps.index(result.step)
        if result.passed and index + 1 < len(self.steps):
            self._status(f"… {self.steps[index + 1]}")
        box.scroll_end(animate=False)

    def on_check_done(self, message: CheckDone) -> None:
        self.finished = True
        if message.error is not None:
            self._status(f"The check stopped: {printable(message.error)}")
        elif self.ok:
            self._status("All checks passed.")
        else:
            self._status("A step failed: the fix is under it.")

    def _status(self, text: str) -> None:
        self.query_one("#check-status", Static).update(text)

    def action_close(self) -> None:
        self._cancel.set()
        self.dismiss(None)
