"""The TUI application: state, workers and every action; `make_app` builds it for CLI and tests.

The app owns what the screens show: the loaded profiles, each tunnel's last known state, cluster
status by profile. Anything that may block (SSH, keyring, AWS, the agent) runs in a thread worker
(`exclusive`, grouped per profile and kind) that posts a message back; one `Worker.StateChanged`
handler turns failures into notifications. A worker that needs a person (unknown host key, key
passphrase) blocks only itself while a modal asks on the UI thread (`ask_from_thread`).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from textual import on
from textual.app import App, SystemCommand
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.screen import Screen
from textual.timer import Timer
from textual.worker import Worker, WorkerState

from tunnelman.core import profiles as prof
from tunnelman.core.errors import ConfigError, HostKeyError, TunnelmanError
from tunnelman.core.logs import get_logger
from tunnelman.tui import services
from tunnelman.tui.hosts import HostKeyQuestion, TunnelHost, TunnelView, default_host
from tunnelman.tui.screens.help import HelpScreen
from tunnelman.tui.screens.main import MainScreen
from tunnelman.tui.screens.modals import (
    ConfirmScreen,
    HostKeyChangedScreen,
    HostKeyScreen,
    SecretScreen,
)
from tunnelman.tui.screens.profile_form import ProfileFormScreen

log = get_logger("tui")
T = TypeVar("T")
CSS_FILE = Path(__file__).with_name("tunnelman.tcss")


# ---------------------------------------------------------------------------- messages


class TunnelChanged(Message):
    """A tunnel's state changed (from the tunnel's thread, a worker, or a poll)."""

    def __init__(self, name: str, view: TunnelView | None) -> None:
        super().__init__()
        self.name = name
        self.view = view


class ConnectFinished(Message):
    """The worker opening a tunnel is done, whatever the outcome."""

    def __init__(self, name: str, cancel: threading.Event) -> None:
        super().__init__()
        self.name = name
        self.cancel = cancel


class ClusterLoaded(Message):
    """Cluster status arrived from AWS."""

    def __init__(self, name: str, status: Any) -> None:
        super().__init__()
        self.name = name
        self.status = status


class Notice(Message):
    """A worker's success, to show as a notification (and maybe reload profiles)."""

    def __init__(self, text: str, *, reload: bool = False, select: str | None = None) -> None:
        super().__init__()
        self.text = text
        self.reload = reload
        self.select = select


# ---------------------------------------------------------------------------- the app


class TunnelmanApp(App[None]):
    """tunnelman's terminal UI."""

    CSS_PATH = CSS_FILE
    TITLE = "tunnelman"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+r", "reload", "Reload profiles", show=False)
    ]
    NOTIFICATION_TIMEOUT = 8
    CLUSTER_FETCH_DELAY = 0.4

    def __init__(
        self,
        config_path: Path,
        *,
        initial_profile: str | None = None,
        host: TunnelHost | None = None,
        aws: Any = None,
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
        self.views: dict[str, TunnelView] = {}
        self.connecting: dict[str, threading.Event] = {}
        self.last_errors: dict[str, str] = {}
        self.clusters: dict[str, Any] = {}
        self.cluster_errors: dict[str, str] = {}
        self.cluster_loading: set[str] = set()
        self._stop = threading.Event()
        self.quit_message: str | None = None
        self._highlight_timer: Timer | None = None
        self.load_profiles()

    # ------------------------------------------------------------------ state

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

    def state_of(self, name: str) -> tuple[str, int | None]:
        """(state word, local port) for the list."""
        if name in self.connecting:
            return "connecting", None
        view = self.views.get(name)
        if view is None:
            return ("failed" if name in self.last_errors else "stopped"), None
        return view.state, view.local_port if view.is_open else None

    @property
    def aws(self) -> Any:
        """The AWS functions (core.aws unless a test gave others); imports boto3 on first use."""
        if self._aws is None:
            self._aws = services.aws()
        return self._aws

    @property
    def main(self) -> MainScreen | None:
        for screen in self.screen_stack:
            if isinstance(screen, MainScreen):
                return screen
        return None

    def get_default_screen(self) -> Screen[Any]:
        return MainScreen()

    def on_mount(self) -> None:
        self.set_interval(self.poll_interval, self._tick)
        watch = getattr(self.host, "watch", None)
        if watch is not None:
            # Tunnels the agent already holds (from an earlier session, or `up --detach`), and
            # every change to them while we run.
            self._work("watch", "agent", partial(watch, self._watched, self._removed, self._stop))

    def _watched(self, view: TunnelView) -> None:
        self.post_message(TunnelChanged(view.name, view))

    def _removed(self, name: str) -> None:
        self.post_message(TunnelChanged(name, None))

    def _refresh(self, name: str | None = None) -> None:
        main = self.main
        if main is None or not main.is_mounted or self._exit:
            return  # not drawn yet, or being torn down (late messages from workers)
        if name is None:
            main.refresh_all()
        else:
            main.refresh_profile(name)

    # ------------------------------------------------------------------ workers and errors

    def _work(self, kind: str, name: str, fn: Callable[[], Any]) -> Worker[Any]:
        """Run `fn` in a thread worker named `kind:name`, one at a time per (kind, name)."""
        return self.run_worker(
            fn,
            name=f"{kind}:{name}",
            group=f"{kind}:{name}",
            thread=True,
            exclusive=True,
            exit_on_error=False,
        )

    @on(Worker.StateChanged)
    def _worker_changed(self, event: Worker.StateChanged) -> None:
        worker = event.worker
        if event.state != WorkerState.ERROR:
            return
        error = worker.error
        kind, _, name = (worker.name or "").partition(":")
        if isinstance(error, TunnelmanError):
            message = str(error)
        else:
            log.error("%s failed", worker.name, exc_info=error)
            message = f"{kind or 'task'} failed unexpectedly: {type(error).__name__}: {error} (details in the log)"
        if kind == "tunnel":
            self.last_errors[name] = message
            self.connecting.pop(name, None)
            self._refresh(name)
        elif kind == "cluster":
            self.cluster_loading.discard(name)
            self.cluster_errors[name] = message
            self._refresh(name)
        if isinstance(error, HostKeyError) and hasattr(error, "expected"):
            self.push_screen(
                HostKeyChangedScreen(
                    HostKeyQuestion.from_info(getattr(error, "info", None)),
                    expected=str(error.expected),
                    known_hosts=getattr(error, "known_hosts", None),
                    line=getattr(error, "line", None),
                    known=getattr(error, "known", None),
                )
            )
            return
        title = {"tunnel": f"Tunnel '{name}'", "cluster": f"Cluster of '{name}'"}.get(kind, "")
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

    # ------------------------------------------------------------------ tunnels

    def toggle_tunnel(self, name: str) -> None:
        """enter: open, close, or cancel while connecting."""
        if name in self.connecting:
            self.cancel_connect(name)
            return
        view = self.views.get(name)
        if view is not None and view.is_open:
            self.close_tunnel(name)
        else:
            self.open_tunnel(name)

    def open_tunnel(self, name: str) -> None:
        profile = self.profiles.get(name)
        if profile is None:
            return
        cancel = threading.Event()
        self.connecting[name] = cancel
        self.last_errors.pop(name, None)
        self.views.pop(name, None)
        self._refresh(name)
        self._work("tunnel", name, partial(self._open_worker, profile, cancel))

    def _open_worker(self, profile: prof.Profile, cancel: threading.Event) -> None:
        name = profile.name

        def on_status(view: TunnelView) -> None:
            if not cancel.is_set():  # a cancelled attempt's last words are not news
                self.post_message(TunnelChanged(name, view))

        try:
            view = self.host.open(
                profile,
                config_path=self.config_path,
                ask_host_key=lambda q: self._ask_host_key(q, profile, cancel),
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
        self.post_message(TunnelChanged(name, view))

    def _ask_host_key(
        self, question: HostKeyQuestion, profile: prof.Profile, cancel: threading.Event
    ) -> bool:
        screen = HostKeyScreen(question, profile.known_hosts)
        answer: bool | None = self.ask_from_thread(screen, cancel)
        return bool(answer)

    def cancel_connect(self, name: str) -> None:
        """Abort a tunnel that is still connecting (a hanging bastion); the UI never waits."""
        cancel = self.connecting.pop(name, None)
        if cancel is None:
            return
        cancel.set()
        self.views.pop(name, None)
        self.notify(f"Cancelled connecting '{name}'.", severity="warning")
        self._refresh(name)

    def close_tunnel(self, name: str) -> None:
        self.views[name] = TunnelView(name=name, state="stopped")
        self._refresh(name)

        def close() -> None:
            self.host.close(name)
            self.post_message(TunnelChanged(name, None))

        self._work("tunnel", name, close)

    @on(TunnelChanged)
    def _tunnel_changed(self, message: TunnelChanged) -> None:
        if message.name in self.connecting:
            return  # the worker opening it has the last word (a watch may see its attempts)
        if message.view is None or (
            message.view.state == "failed" and message.view.error == "cancelled"
        ):
            self.views.pop(message.name, None)  # a cancel is not a failure worth showing
        elif message.view.state == "stopped" and message.name not in self.views:
            return
        elif message.view.state == "starting" and message.name not in self.connecting:
            return  # news from an attempt that was cancelled meanwhile
        else:
            self.views[message.name] = message.view
            if message.view.error and message.view.state == "failed":
                self.last_errors[message.name] = message.view.error
        self._refresh(message.name)

    @on(ConnectFinished)
    def _connect_finished(self, message: ConnectFinished) -> None:
        if self.connecting.get(message.name) is message.cancel:
            del self.connecting[message.name]
        self._refresh(message.name)

    def open_tunnels(self) -> list[str]:
        open_ = [name for name, view in self.views.items() if view.is_open]
        return open_ + [name for name in self.connecting if name not in open_]

    def _tick(self) -> None:
        """Once a second: refresh the "up since" line; poll the host for connection counts."""
        if not self.open_tunnels() or self._exit:
            return
        self._work("poll", "all", self._poll_worker)
        main = self.main
        if main is not None and main.is_mounted and main.current in self.views:
            main.refresh_detail()

    def _poll_worker(self) -> None:
        for name, view in self.host.statuses().items():
            if view != self.views.get(name) and name not in self.connecting:
                self.post_message(TunnelChanged(name, view))

    # ------------------------------------------------------------------ connection settings

    def conn_port(self, name: str) -> int | None:
        view = self.views.get(name)
        if view is not None and view.is_open and view.local_port:
            return view.local_port
        profile = self.profiles.get(name)
        return profile.local_port if profile else None

    def conn_text(self, name: str, fmt: str) -> str:
        profile = self.profiles[name]
        port = self.conn_port(name)
        if port is None:
            return (
                "This profile has no fixed local_port: open the tunnel (enter) and the settings "
                "will show the port it got, or set local_port (e)."
            )
        text = services.render_conn(fmt, profile, port)
        notes = services.conn_notes(fmt, profile, port)
        return text.rstrip("\n") + "".join(f"\n\nnote: {n}" for n in notes)

    def conn_texts(self, name: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for fmt, _ in services.CONN_TABS:
            try:
                out[fmt] = self.conn_text(name, fmt)
            except TunnelmanError as exc:
                out[fmt] = str(exc)
        return out

    def copy_setting(self, name: str, fmt: str) -> None:
        """y: the shown setting to the clipboard: OSC 52 (works over SSH) where the terminal
        takes it, else the system's clipboard program (`core.platform.clipboard`)."""
        from tunnelman.core.platform import clipboard

        try:
            text = services.render_conn(fmt, self.profiles[name], self._need_port(name))
        except TunnelmanError as exc:
            self.notify(str(exc), severity="error")
            return
        title = dict(services.CONN_TABS).get(fmt, fmt)
        method = clipboard.choose()
        if method is None:
            self.notify(
                "Not copied: this terminal ignores OSC 52 and no clipboard program (clip.exe, "
                "pbcopy, wl-copy, xclip, xsel) was found. Select the setting with the mouse "
                f"(Shift+drag in most terminals), or run `tunnelman conn {name} --format {fmt}`.",
                severity="warning",
                timeout=12,
            )
            return
        if method.osc52:
            self.copy_to_clipboard(text)
        else:
            try:
                clipboard.copy_with(method, text)
            except clipboard.ClipboardError as exc:
                self.notify(
                    f"Not copied: {exc}. Select the setting with the mouse, or run "
                    f"`tunnelman conn {name} --format {fmt}`.",
                    severity="error",
                )
                return
        self.notify(
            f"Copied the {title} setting of '{name}' to the clipboard (via {method.label})."
        )

    def _need_port(self, name: str) -> int:
        port = self.conn_port(name)
        if port is None:
            raise TunnelmanError(
                f"'{name}' has no local port yet", hint="open its tunnel first, or set local_port"
            )
        return port

    def write_setting(self, name: str, fmt: str) -> None:
        """w: merge the shown setting into the client's own file (in a worker: file IO)."""
        try:
            port = self._need_port(name)
        except TunnelmanError as exc:
            self.notify(str(exc), severity="error")
            return
        profile = self.profiles[name]

        config_dir = self.config_path.parent

        def write() -> None:
            line = services.write_conn(fmt, profile, port, config_dir)
            self.post_message(Notice(f"Wrote '{name}' to {line}"))

        self._work("write", name, write)

    @on(Notice)
    def _notice(self, message: Notice) -> None:
        if message.reload:
            self.load_profiles()
            if self.main is not None:
                self.main.refresh_all(select=message.select)
        self.notify(message.text)

    # ------------------------------------------------------------------ cluster

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
        if (
            profile is not None
            and profile.cluster
            and name not in self.clusters
            and name not in self.cluster_errors
            and name not in self.cluster_loading
        ):
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
        self.cluster_loading.add(name)
        self.cluster_errors.pop(name, None)
        self._refresh(name)

        def fetch() -> None:
            self.post_message(ClusterLoaded(name, self.aws.cluster_status(profile)))

        self._work("cluster", name, fetch)

    @on(ClusterLoaded)
    def _cluster_loaded(self, message: ClusterLoaded) -> None:
        self.cluster_loading.discard(message.name)
        self.clusters[message.name] = message.status
        self._refresh(message.name)

    def cluster_running(self, name: str) -> bool | None:
        status = self.clusters.get(name)
        if status is None:
            return None
        state = getattr(status, "status", None)
        if state is None and isinstance(status, dict):
            state = status.get("status")
        if state in ("available", "starting", "backing-up", "modifying"):
            return True
        if state in ("stopped", "stopping"):
            return False
        return None

    def start_stop_cluster(self, name: str) -> None:
        """s: start a stopped cluster or stop a running one, after asking."""
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
            if not yes:
                return

            def run() -> None:
                fn = self.aws.stop_cluster if running else self.aws.start_cluster
                fn(profile)
                self.post_message(Notice(f"Asked AWS to {verb} cluster '{cluster}'."))
                self.post_message(ClusterLoaded(name, self.aws.cluster_status(profile)))

            self._work("cluster", name, run)

        self.push_screen(
            ConfirmScreen(f"{verb.capitalize()} cluster", body, yes=f"{verb.capitalize()} it"),
            answered,
        )

    # ------------------------------------------------------------------ profiles

    def new_profile(self) -> None:
        self.push_screen(ProfileFormScreen(self.config_path), self._saved)

    def edit_profile(self, name: str) -> None:
        self.push_screen(ProfileFormScreen(self.config_path, name), partial(self._saved, old=name))

    def _saved(self, name: str | None, old: str | None = None) -> None:
        if name is None:
            return
        if old is not None and old != name:
            self.clusters.pop(old, None)
        self.clusters.pop(name, None)
        self.cluster_errors.pop(name, None)
        self.load_profiles()
        if self.main is not None:
            self.main.refresh_all(select=name)
        self.notify(f"Saved profile '{name}' in {self.config_path}.")

    def delete_profile(self, name: str) -> None:
        if name in self.open_tunnels():
            self.notify(f"Close the tunnel of '{name}' first (enter).", severity="warning")
            return

        def answered(yes: bool | None) -> None:
            if not yes:
                return
            try:
                prof.delete_profile(self.config_path, name)
            except TunnelmanError as exc:
                self.notify(str(exc), severity="error")
                return
            self.last_errors.pop(name, None)
            self.load_profiles()
            if self.main is not None:
                self.main.refresh_all()
            self.notify(f"Deleted profile '{name}'.")

        self.push_screen(
            ConfirmScreen(
                "Delete profile",
                f"Delete profile '{name}' from {self.config_path}? The rest of the file and its "
                "comments stay as they are; a password in the keyring stays too.",
                yes="Delete",
            ),
            answered,
        )

    def set_password(self, name: str) -> None:
        """p: ask twice (masked), store in the keyring in a worker."""
        profile = self.profiles.get(name)
        if profile is None:
            return
        note = (
            ""
            if profile.password == "keyring"
            else f' (note: its password setting is "{profile.password}")'
        )

        def answered(value: str | None) -> None:
            if not value:
                return

            def store() -> None:
                from tunnelman.core import credentials

                credentials.keyring_set(name, value)
                self.post_message(Notice(f"Stored the password of '{name}' in the keyring{note}."))

            self._work("password", name, store)

        self.push_screen(
            SecretScreen(
                "Database password",
                f"Password of {profile.user}@{profile.database} for '{name}', kept in the OS keyring:",
                confirm=True,
            ),
            answered,
        )

    def discover(self) -> None:
        from tunnelman.tui.screens.discover import DiscoverScreen

        self.push_screen(DiscoverScreen(), self._saved)

    # ------------------------------------------------------------------ app-wide actions

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(survives_quit=self.host.survives_quit))

    def action_reload(self) -> None:
        self.load_profiles()
        self._refresh()
        if self.load_error:
            # markup=False: the message quotes the file ("[defaults]", a stray "[/]" in a value).
            self.notify(self.load_error, severity="error", markup=False)
        else:
            self.notify(f"Reloaded {len(self.profiles)} profiles.")

    async def action_quit(self) -> None:
        """q: with tunnels open, say they keep running (agent) or ask whether to close them."""
        open_ = self.open_tunnels()
        if not open_:
            self.exit()
            return
        local_names = getattr(self.host, "local_names", None)
        here = [n for n in open_ if n in local_names()] if local_names is not None else []
        if self.host.survives_quit and not here:
            self.quit_message = (
                f"tunnelman: {len(open_)} tunnel(s) keep running in the agent: {', '.join(open_)} "
                "(`tunnelman status` lists them, `tunnelman down NAME` closes one)"
            )
            self.exit(message=self.quit_message)
            return
        if self.host.survives_quit:
            open_ = here  # only these die with the TUI: their keys needed a passphrase
        names = ", ".join(open_)

        def answered(yes: bool | None) -> None:
            if yes:
                self._close_all_and_exit()

        self.push_screen(
            ConfirmScreen(
                "Quit",
                f"{len(open_)} tunnel(s) are open here: {names}. Quitting closes them "
                "(clients using them will lose their connection).",
                yes="Close them and quit",
                no="Stay",
            ),
            answered,
        )

    def _close_all_and_exit(self) -> None:
        for cancel in self.connecting.values():
            cancel.set()

        def close_all() -> None:
            close_local = getattr(self.host, "close_local", None)
            if self.host.survives_quit and close_local is not None:
                close_local()  # the agent's tunnels keep running
            else:
                self.host.close_all()
            self.call_from_thread(self.exit)

        self._work("tunnel", "*", close_all)

    def on_unmount(self) -> None:
        self._stop.set()
        for cancel in self.connecting.values():
            cancel.set()
        if not self.host.survives_quit:
            self.host.close_all()
        else:
            close_local = getattr(self.host, "close_local", None)
            if close_local is not None:
                close_local()

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        main = self.main
        if main is None:
            return
        commands = (
            (
                "Open / close tunnel",
                "Open or close the highlighted profile's tunnel (enter)",
                main.action_toggle_tunnel,
            ),
            (
                "Cancel connecting",
                "Stop waiting for a bastion that does not answer (esc)",
                main.action_cancel,
            ),
            (
                "Connection settings",
                "Show psql, URI, pgAdmin, QGIS, ArcGIS, JDBC, SQLAlchemy (c)",
                main.action_conn,
            ),
            (
                "Copy setting",
                "Copy the shown connection setting to the clipboard (y)",
                main.action_copy,
            ),
            (
                "Write setting",
                "Write the shown setting into the client's file (w)",
                main.action_write,
            ),
            (
                "Refresh cluster status",
                "Ask AWS for the cluster's state (r)",
                main.action_refresh_cluster,
            ),
            (
                "Start / stop cluster",
                "Start a stopped cluster or stop a running one (s)",
                main.action_start_stop,
            ),
            ("New profile", "Add a profile with a form (n)", main.action_new),
            ("Edit profile", "Edit the highlighted profile (e)", main.action_edit),
            ("Delete profile", "Delete the highlighted profile (x)", main.action_delete),
            (
                "Discover clusters",
                "Find Aurora/RDS clusters in AWS and import one (d)",
                main.action_discover,
            ),
            (
                "Set password",
                "Keep the database password in the OS keyring (p)",
                main.action_password,
            ),
            ("Reload profiles", "Read the profile file again (ctrl+r)", self.action_reload),
            ("Keys", "Every key (?)", self.action_help),
        )
        for title, help_text, callback in commands:
            yield SystemCommand(title, help_text, callback)


def make_app(
    config_path: Path | None = None,
    *,
    initial_profile: str | None = None,
    host: TunnelHost | None = None,
    aws: Any = None,
    clock: Callable[[], float] = time.time,
    poll_interval: float = 1.0,
) -> TunnelmanApp:
    """The one factory for the CLI and the tests. `host`/`aws`/`clock` are for tests."""
    return TunnelmanApp(
        prof.config_path(config_path),
        initial_profile=initial_profile,
        host=host,
        aws=aws,
        clock=clock,
        poll_interval=poll_interval,
    )


def run(
    config_path: Path | None, *, initial_profile: str | None = None, in_process: bool = False
) -> None:
    """Open the TUI on the terminal; returns when it quits.

    `in_process`: hold tunnels in this process instead of the agent (the demo: its bastion ends
    with it, so its tunnels must too, and quitting asks before closing them).
    """
    from tunnelman.tui.hosts import InProcessHost

    host = InProcessHost() if in_process else None
    app = make_app(config_path, initial_profile=initial_profile, host=host)
    if initial_profile is not None and initial_profile not in app.profiles and not app.load_error:
        prof.ProfileSet(path=app.config_path, profiles=app.profiles).get(initial_profile)
    app.run()
