"""What every group of actions shares: the profiles, the state model, the host, AWS, redrawing,
worker failures, and asking a person from a worker thread.

Workers are Textual `@work(thread=True)` methods of the action mixins. Each runs its body inside
`reported(kind, name)`, so a failure reaches `_task_failed` on the UI thread naming its subject
and profile: the state model records it and the person sees one notification (or the changed
host key modal). A worker that needs a person (unknown host key, key passphrase) blocks only
itself while a modal asks on the UI thread (`ask_from_thread`). The modals are imported when one
is shown (≈10 ms of a first screen that must stay under 1 s of CPU).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from textual import on
from textual.app import App
from textual.css.query import NoMatches
from textual.screen import Screen

from tunnelman.core import profiles as prof
from tunnelman.core.errors import ConfigError, TunnelmanError
from tunnelman.core.logs import get_logger
from tunnelman.tui import services
from tunnelman.tui.hosts import TunnelHost, default_host
from tunnelman.tui.messages import Notice, TaskFailed
from tunnelman.tui.screens.main import MainScreen
from tunnelman.tui.state import Shown, UIState

if TYPE_CHECKING:
    from textual.timer import Timer

    from tunnelman.core.aws import Database
    from tunnelman.tui.services import AwsApi

log = get_logger("tui")
T = TypeVar("T")

TITLES = {"tunnel": "Tunnel '{}'", "cluster": "Cluster of '{}'"}


class AppBase(App[None]):
    """The state and plumbing the action mixins share (not an app on its own)."""

    def __init__(
        self,
        config_path: Path,
        *,
        initial_profile: str | None = None,
        host: TunnelHost | None = None,
        aws: AwsApi | None = None,
        clock: Callable[[], float] = time.time,
        poll_interval: float = 1.0,
    ) -> None:
        super().__init__()
        self.config_path = config_path
        self.initial_profile = initial_profile
        self.host: TunnelHost = host if host is not None else default_host()
        self._aws = aws
        self.clock = clock
        self.poll_interval = poll_interval
        self.profiles: dict[str, prof.Profile] = {}
        self.load_error: str | None = None
        self.state = UIState()
        self._stop = threading.Event()
        self.quit_message: str | None = None
        self._highlight_timer: Timer | None = None
        self.load_profiles()

    # ------------------------------------------------------------------ profiles and state

    def load_profiles(self) -> None:
        """Read the profile file (tomllib, fast: done on the UI thread)."""
        try:
            loaded = prof.load(self.config_path)
        except ConfigError as exc:
            self.profiles = {}
            self.load_error = str(exc)
            return
        self.profiles = dict(loaded.profiles)
        self.load_error = None

    def profile_names(self) -> list[str]:
        return list(self.profiles)

    def profile_list(self) -> Iterable[prof.Profile]:
        return self.profiles.values()

    def profile(self, name: str) -> prof.Profile | None:
        return self.profiles.get(name)

    def state_of(self, name: str) -> tuple[Shown, int | None]:
        """(state word, local port) for the list."""
        return self.state.shown(name)

    # Read-only views of the state model by profile (tests and the palette read these).

    @property
    def clusters(self) -> dict[str, Database]:
        return {s.name: s.cluster for s in self.state if s.cluster is not None}

    @property
    def cluster_errors(self) -> dict[str, str]:
        return {s.name: s.cluster_error for s in self.state if s.cluster_error is not None}

    @property
    def last_errors(self) -> dict[str, str]:
        return {s.name: s.last_error for s in self.state if s.last_error is not None}

    @property
    def connecting(self) -> dict[str, threading.Event]:
        return {s.name: s.connecting for s in self.state if s.connecting is not None}

    @property
    def aws(self) -> AwsApi:
        """core.aws unless a test gave a stand-in; boto3 loads on its first call (a worker's)."""
        if self._aws is None:
            self._aws = services.aws()
        return self._aws

    # ------------------------------------------------------------------ drawing

    @property
    def main(self) -> MainScreen | None:
        for screen in self.screen_stack:
            if isinstance(screen, MainScreen):
                return screen
        return None

    def _refresh(self, name: str | None = None) -> None:
        main = self.main
        if main is None or not main.is_mounted or self._exit:
            return  # not drawn yet, or being torn down (late messages from workers)
        try:
            if name is None:
                main.refresh_all()
            else:
                main.refresh_profile(name)
        except NoMatches:
            # Between the screen's mount and its children's (or while a modal's dismissal
            # recomposes it) a worker's news finds no list to draw in; the next news redraws.
            return

    def _reload_and_show(self, select: str | None = None) -> None:
        self.load_profiles()
        if self.main is not None:
            self.main.refresh_all(select=select)

    @on(Notice)
    def _notice(self, message: Notice) -> None:
        if message.reload:
            self._reload_and_show(message.select)
        self.notify(message.text)

    # ------------------------------------------------------------------ workers and errors

    @contextlib.contextmanager
    def reported(self, kind: str, name: str) -> Iterator[None]:
        """In a worker: a failure of the body becomes `TaskFailed(kind, name)` on the UI thread."""
        try:
            yield
        except Exception as exc:  # a worker's failure is shown, never a crash
            self.post_message(TaskFailed(kind, name, exc))

    @on(TaskFailed)
    def _task_failed(self, failed: TaskFailed) -> None:
        from tunnelman.core.ssh.known_hosts import HostKeyChanged, HostKeyTypeMismatch
        from tunnelman.tui.screens.modals import HostKeyChangedScreen

        error, kind, name = failed.error, failed.kind, failed.name
        if isinstance(error, TunnelmanError):
            message = str(error)
        else:
            log.error("%s:%s failed", kind, name, exc_info=error)
            message = f"{kind or 'task'} failed unexpectedly: {type(error).__name__}: {error} (details in the log)"
        if kind == "tunnel":
            self.state[name].connect_failed(message)
            self._refresh(name)
        elif kind == "cluster":
            self.state[name].cluster_failed(message)
            self._refresh(name)
        if isinstance(error, HostKeyChanged):
            self.push_screen(
                HostKeyChangedScreen(
                    error.info,
                    expected=error.expected,
                    known_hosts=error.known_hosts,
                    line=error.line,
                    known=error.known if isinstance(error, HostKeyTypeMismatch) else None,
                )
            )
            return
        title = TITLES[kind].format(name) if kind in TITLES else ""
        self.notify(message, title=title, severity="error", timeout=12)

    def ask_from_thread(self, screen: Screen[T], cancel: threading.Event | None = None) -> T | None:
        """From a worker thread: show `screen`, block this thread until it is answered.

        Returns None when `cancel` is set (the modal is then taken away) or the app is gone.
        """
        done = threading.Event()
        answer: list[T | None] = []

        def answered(result: T | None) -> None:
            answer.append(result)
            done.set()

        try:
            self.call_from_thread(self.push_screen, screen, answered)
        except RuntimeError:  # the app has exited
            return None
        while not done.wait(0.1):
            if (cancel is not None and cancel.is_set()) or not self.is_running:
                with contextlib.suppress(RuntimeError):
                    self.call_from_thread(self._take_away, screen)
                return None
        return answer[0] if answer else None

    def _take_away(self, screen: Screen[Any]) -> None:
        if screen.is_attached and screen in self.screen_stack:
            screen.dismiss(None)
