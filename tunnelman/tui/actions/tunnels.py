"""Tunnel actions: open (asking about host keys and passphrases, and whether to start a stopped
cluster first), cancel, close, follow, poll.

The host (`tui/hosts.py`) does the work in `@work` thread workers; every piece of news comes back
as `TunnelChanged` / `ConnectFinished` and `ProfileState.changed` decides what it means.
"""

from __future__ import annotations

import threading
from dataclasses import replace

from textual import on, work

from tunnelman.core import profiles as prof
from tunnelman.core.errors import TunnelmanError
from tunnelman.core.ssh.known_hosts import HostKeyInfo
from tunnelman.core.tunnel import TunnelStatus
from tunnelman.tui.actions.base import AppBase
from tunnelman.tui.messages import ClusterLoaded, ConnectFinished, Notice, TunnelChanged


class TunnelActions(AppBase):
    """enter / esc on a profile, the agent's watch, and the once-a-second poll."""

    def toggle_tunnel(self, name: str) -> None:
        """enter: open, close, or cancel while connecting."""
        state = self.state[name]
        if state.connecting is not None:
            self.cancel_connect(name)
        elif state.is_open:
            self.close_tunnel(name)
        else:
            self.open_tunnel(name)

    def open_tunnel(self, name: str) -> None:
        profile = self.profiles.get(name)
        if profile is None:
            return
        cancel = self.state[name].begin_connect()
        self._refresh(name)
        self._open(profile, cancel)

    @work(thread=True, group="tunnel", exit_on_error=False)
    def _open(self, profile: prof.Profile, cancel: threading.Event) -> None:
        from tunnelman.tui.screens.modals import SecretScreen

        name = profile.name

        def on_status(status: TunnelStatus) -> None:
            if not cancel.is_set():  # a cancelled attempt's last words are not news
                self.post_message(TunnelChanged(name, status))

        with self.reported("tunnel", name):
            try:
                woken = self._wake_cluster(profile, cancel) if profile.cluster else profile
                if woken is None:
                    return  # declined or cancelled: nothing to open
                profile = woken
                status = self.host.open(
                    profile,
                    config_path=self.config_path,
                    ask_host_key=lambda info: self._ask_host_key(info, profile, cancel),
                    ask_passphrase=lambda path: self.ask_from_thread(
                        SecretScreen("Key passphrase", f"Passphrase for {path}:"), cancel
                    ),
                    cancel=cancel,
                    on_status=on_status,
                )
            except TunnelmanError:
                if cancel.is_set():
                    return  # cancelled: the person already saw "cancelled"
                raise
            finally:
                self.post_message(ConnectFinished(name, cancel))
            if cancel.is_set():
                self.host.close(name)  # cancelled too late to stop it: do not leave it open
                return
            self.post_message(TunnelChanged(name, status))

    def _wake_cluster(self, profile: prof.Profile, cancel: threading.Event) -> prof.Profile | None:
        """In the open worker: a stopped cluster is started once the person agrees (a modal), a
        starting one is waited for (progress as notifications); the profile to connect with, or
        None when declined or cancelled. The UI never waits: only this worker blocks."""
        from tunnelman.core.aws import after_wake
        from tunnelman.core.errors import AWSError
        from tunnelman.tui.screens.modals import ConfirmScreen

        try:
            found = self.aws.wake_needed(profile)
        except AWSError:
            return profile  # AWS cannot be asked: try anyway, the tunnel's error will say
        if found is None:
            return profile
        db, need = found
        what = f"{db.kind} '{db.id}'"
        title = f"{what[0].upper()}{what[1:]}"
        if need == "start":
            yes = self.ask_from_thread(
                ConfirmScreen(
                    f"Start {db.kind}",
                    f"{title} is stopped. Start it now? It takes several minutes and is billed "
                    "while running; the tunnel opens once its writer instance is available.",
                    yes="Start and connect",
                ),
                cancel,
            )
            if not yes:
                if not cancel.is_set():
                    self.post_message(Notice(f"{title} is stopped; not started."))
                return None
        self.post_message(
            Notice(
                f"{'Starting' if need == 'start' else 'Waiting for'} {what}: the tunnel opens "
                "once its writer instance is available (enter cancels the wait)."
            )
        )

        known = self.state.get(profile.name)  # read only: workers never change the state
        shown = (known.cluster if known is not None else None) or db  # the cluster box's base

        def on_status(status: str, elapsed: float) -> None:
            if cancel.is_set():
                return
            if " " not in status:  # the cluster's own status ("writer ID STATUS" is not)
                self.post_message(ClusterLoaded(profile.name, replace(shown, status=status)))
            if status != "available":
                self.post_message(Notice(f"{title}: {status}… ({elapsed:.0f} s)"))

        self.aws.wake(profile, db, need, on_status=on_status, cancel=cancel)
        if cancel.is_set():
            self.post_message(Notice(f"Stopped waiting: {what} keeps starting in AWS."))
            return None
        self.post_message(ClusterLoaded(profile.name, self.aws.cluster_status(profile)))
        return after_wake(profile)

    def _ask_host_key(
        self, info: HostKeyInfo, profile: prof.Profile, cancel: threading.Event
    ) -> bool:
        from tunnelman.tui.screens.modals import HostKeyScreen

        answer: bool | None = self.ask_from_thread(HostKeyScreen(info, profile.known_hosts), cancel)
        return bool(answer)

    def check_profile(self, name: str) -> None:
        """The doctor's steps for NAME in a screen (`tunnelman check NAME`), asking as `up` does."""
        from tunnelman.tui.hosts import host_key_policy
        from tunnelman.tui.screens.check import CheckScreen
        from tunnelman.tui.screens.modals import SecretScreen

        try:
            profile = prof.load(self.config_path).get(name)
        except TunnelmanError as exc:
            self.notify(str(exc), severity="error")
            return
        asked = threading.Event()  # never set: Esc on the check screen ends the doctor itself
        self.push_screen(
            CheckScreen(
                profile,
                self.config_path,
                host_keys=host_key_policy(lambda info: self._ask_host_key(info, profile, asked)),
                passphrase=lambda path: self.ask_from_thread(
                    SecretScreen("Key passphrase", f"Passphrase for {path}:"), asked
                ),
                password=lambda user: self.ask_from_thread(
                    SecretScreen("Database password", f"Password for {user}:"), asked
                ),
            )
        )

    def cancel_connect(self, name: str) -> None:
        """Abort a tunnel that is still connecting (a hanging bastion); the UI never waits."""
        if not self.state[name].cancel_connect():
            return
        self.notify(f"Cancelled connecting '{name}'.", severity="warning")
        self._refresh(name)

    def close_tunnel(self, name: str) -> None:
        self.state[name].closing()
        self._refresh(name)
        self._close(name)

    @work(thread=True, group="tunnel", exit_on_error=False)
    def _close(self, name: str) -> None:
        with self.reported("tunnel", name):
            self.host.close(name)
            self.post_message(TunnelChanged(name, None))

    @on(TunnelChanged)
    def _tunnel_changed(self, message: TunnelChanged) -> None:
        if self.state[message.name].changed(message.status):
            self._refresh(message.name)

    @on(ConnectFinished)
    def _connect_finished(self, message: ConnectFinished) -> None:
        self.state[message.name].connect_finished(message.cancel)
        self._refresh(message.name)

    def open_tunnels(self) -> list[str]:
        return self.state.open_tunnels()

    # ------------------------------------------------------------------ following the host

    @work(thread=True, group="watch", exit_on_error=False)
    def _watch_host(self) -> None:
        """Tunnels the agent already holds (from an earlier session, or `up --detach`), and every
        change to them while we run."""

        def changed(status: TunnelStatus) -> None:
            self.post_message(TunnelChanged(status.name, status))

        def removed(name: str) -> None:
            self.post_message(TunnelChanged(name, None))

        with self.reported("watch", "agent"):
            self.host.watch(changed, removed, self._stop)

    def _tick(self) -> None:
        """Once a second: refresh the "up since" line; poll the host for connection counts."""
        if not self.open_tunnels() or self._exit:
            return
        self._poll()
        main = self.main
        shown = main.current if main is not None and main.is_mounted else None
        if main is not None and shown is not None and self.state.tunnel_of(shown) is not None:
            main.refresh_detail()

    @work(thread=True, group="poll", exclusive=True, exit_on_error=False)
    def _poll(self) -> None:
        with self.reported("poll", "all"):
            for name, status in self.host.statuses().items():
                if status != self.state.tunnel_of(name) and not self.state.is_connecting(name):
                    self.post_message(TunnelChanged(name, status))

    def close_all_and_exit(self) -> None:
        """Close what ends with the TUI (the agent's tunnels keep running), then exit."""
        self.state.cancel_all()
        self._close_all_then_exit()

    @work(thread=True, group="tunnel", exit_on_error=False)
    def _close_all_then_exit(self) -> None:
        with self.reported("tunnel", "*"):
            if self.host.survives_quit:
                self.host.close_local()  # the agent's tunnels keep running
            else:
                self.host.close_all()
            self.call_from_thread(self.exit)
