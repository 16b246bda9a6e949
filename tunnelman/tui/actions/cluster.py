"""Cluster actions: status on first look (debounced), `r` refresh, `s` start/stop after asking.

Every AWS call runs in a `@work` thread worker (boto3 loads there on first use, never on the
way to the first screen) and comes back as `ClusterLoaded`. A status whose state differs from
the one shown before is a "cluster" event in the events file (`tunnelman log`, the `l` screen).
A start / stop is then waited for (`aws.wait_for`; a start until the writer instance is
available, i.e. accepts connections) behind a progress screen (`screens/progress.py`) fed by
`ClusterProgress`; escape stops the wait only.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING

from textual import on, work

from tunnelman.core import profiles as prof
from tunnelman.tui.actions.base import AppBase
from tunnelman.tui.messages import ClusterLoaded, ClusterProgress, Notice

if TYPE_CHECKING:
    from tunnelman.core.aws import Action, Database
    from tunnelman.tui.screens.progress import ClusterWaitScreen

if TYPE_CHECKING:
    from tunnelman.core.aws import Database
    from tunnelman.core.tunnel.events import EventRecorder


def cluster_state(database: Database) -> str:
    """The state an event is recorded on: the RDS status word, and "paused" (Serverless v1 at 0
    ACU) since a paused cluster is one a client waits for."""
    word = database.status or "unknown"
    return f"{word}, paused" if database.capacity == 0 else word


class ClusterActions(AppBase):
    """The cluster box of the detail pane."""

    CLUSTER_FETCH_DELAY = 0.4
    _event_recorder: EventRecorder | None = None
    CLUSTER_POLL_INTERVAL = 5.0

    def _cluster_waits(self) -> dict[str, ClusterWaitScreen]:
        """The wait screen shown for each profile whose cluster is starting / stopping."""
        waits: dict[str, ClusterWaitScreen] = self.__dict__.setdefault("_cluster_wait_screens", {})
        return waits

    def stop_cluster_waits(self) -> None:
        """The app is going away: every start / stop wait ends (AWS carries on)."""
        for screen in list(self._cluster_waits().values()):
            screen.cancel.set()

    def profile_highlighted(self, name: str) -> None:
        """First look at a profile with a cluster: fetch its status (lazily, in a worker).

        Debounced: scrolling through the list asks AWS only for the row it stops on, and the
        first screen is drawn before a worker starts importing boto3 (≈0.6 s of CPU).
        """
        if self._highlight_timer is not None:
            self._highlight_timer.stop()
        self._highlight_timer = self.set_timer(
            self.CLUSTER_FETCH_DELAY, partial(self._fetch_if_needed, name)
        )

    def _fetch_if_needed(self, name: str) -> None:
        main = self.main
        if main is not None and main.current != name:
            return
        profile = self.profiles.get(name)
        state = self.state.get(name)
        if profile is not None and profile.cluster and (state is None or state.wants_cluster()):
            self.refresh_cluster(name)

    def refresh_cluster(self, name: str, *, explicit: bool = False) -> None:
        profile = self.profiles.get(name)
        if profile is None:
            return
        if not profile.cluster:
            if explicit:
                self.notify(
                    f"'{name}' has no cluster setting",
                    title="Nothing to refresh",
                    severity="warning",
                )
            return
        self.state[name].begin_cluster()
        self._refresh(name)
        self._fetch_cluster(profile)

    @work(thread=True, group="cluster", exit_on_error=False)
    def _fetch_cluster(self, profile: prof.Profile) -> None:
        with self.reported("cluster", profile.name):
            self.post_message(ClusterLoaded(profile.name, self.aws.cluster_status(profile)))

    @on(ClusterLoaded)
    def _cluster_loaded(self, message: ClusterLoaded) -> None:
        state = self.state[message.name]
        before = state.cluster
        state.cluster_loaded(message.status)
        if before is not None and cluster_state(before) != cluster_state(message.status):
            self.record_cluster_change(message.name, before, message.status)
        self._refresh(message.name)

    def record_cluster_change(self, name: str, before: Database, now: Database) -> None:
        """One "cluster" event (a line appended: quick enough for the UI thread)."""
        from tunnelman.core.tunnel.events import EventRecorder, events_path

        if self._event_recorder is None:
            self._event_recorder = EventRecorder(events_path())
        was, state = cluster_state(before), cluster_state(now)
        self._event_recorder.cluster(name, state, f"cluster {now.id} is {state} (was {was})")

    def cluster_running(self, name: str) -> bool | None:
        state = self.state.get(name)
        return state.cluster_running() if state is not None else None

    def start_stop_cluster(self, name: str) -> None:
        """s: start a stopped cluster or stop a running one, after asking."""
        from tunnelman.tui.screens.modals import ConfirmScreen

        profile = self.profiles.get(name)
        if profile is None or not profile.cluster:
            self.notify(f"'{name}' has no cluster setting", severity="warning")
            return
        running = self.cluster_running(name)
        if running is None:
            self.notify("Cluster state unknown: press r to refresh first.", severity="warning")
            return
        verb = "stop" if running else "start"
        cluster = profile.cluster
        body = (
            f"Stop cluster '{cluster}'? Connections through every tunnel to it will fail until "
            "it is started again (AWS starts a stopped cluster by itself after 7 days)."
            if running
            else f"Start cluster '{cluster}'? It takes a few minutes and is billed while running."
        )

        def answered(yes: bool | None) -> None:
            if yes:
                self._wait_screen(profile, stop=running)

        self.push_screen(
            ConfirmScreen(f"{verb.capitalize()} cluster", body, yes=f"{verb.capitalize()} it"),
            answered,
        )

    def _wait_screen(self, profile: prof.Profile, *, stop: bool) -> None:
        from tunnelman.tui.screens.progress import ClusterWaitScreen

        cancel = threading.Event()
        verb, goal = ("Stopping", "stopped") if stop else ("Starting", "accepting connections")
        screen = ClusterWaitScreen(
            f"{verb} cluster '{profile.cluster}'",
            f"Waiting until it is {goal}; the UI stays usable behind this box.",
            cancel,
            clock=self.clock,
        )
        waits = self._cluster_waits()
        waits[profile.name] = screen

        def closed(reached: bool | None) -> None:
            if waits.get(profile.name) is screen:
                del waits[profile.name]
            if not reached:
                self.notify(
                    f"Stopped waiting: cluster '{profile.cluster}' "
                    f"{'carries on stopping' if stop else 'keeps starting'} in AWS "
                    "(r refreshes its status).",
                    title=f"Cluster of '{profile.name}'",
                )

        self.push_screen(screen, closed)
        self._start_stop(profile, stop=stop, cancel=cancel)

    @work(thread=True, group="cluster", exit_on_error=False)
    def _start_stop(self, profile: prof.Profile, *, stop: bool, cancel: threading.Event) -> None:
        action: Action = "stop" if stop else "start"
        name = profile.name
        last = "asked"
        base: Database | None = None
        goal = "stopped" if stop else "available"
        finished = False

        def on_status(status: str, elapsed: float) -> None:
            nonlocal last
            last = status
            if cancel.is_set():
                return
            self.post_message(ClusterProgress(name, status))
            # The cluster box follows (not "writer ID STATUS"); the target status comes with the
            # final ClusterLoaded, after the wait screen is gone.
            if base is not None and " " not in status and status != goal:
                self.post_message(ClusterLoaded(name, replace(base, status=status)))

        try:
            with self.reported("cluster", name):
                base = (self.aws.stop_cluster if stop else self.aws.start_cluster)(profile)
                self.post_message(ClusterProgress(name, f"asked AWS to {action} it"))
                db = self.aws.wait_for(
                    profile,
                    action,
                    on_status=on_status,
                    cancel=cancel,
                    interval=self.CLUSTER_POLL_INTERVAL,
                    writer=not stop,  # started = its writer accepts connections
                )
                finished = True  # the screen goes before the box says "stopped": `s` is ready
                self.post_message(ClusterProgress(name, last, done=True))
                self.post_message(ClusterLoaded(name, db))
                if not cancel.is_set():
                    done = "is stopped" if stop else "accepts connections"
                    self.post_message(Notice(f"Cluster '{profile.cluster}' {done}."))
        finally:
            if not finished:
                self.post_message(ClusterProgress(name, last, done=True))

    @on(ClusterProgress)
    def _cluster_progress(self, message: ClusterProgress) -> None:
        screen = self._cluster_waits().get(message.name)
        if screen is None:
            return
        if message.done:
            screen.finish()
        else:
            screen.set_status(message.status)
