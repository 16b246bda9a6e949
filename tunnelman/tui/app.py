"""The TUI application: the composition of its actions; `make_app` builds it for CLI and tests.

`TunnelmanApp` is the action groups of `tui/actions/` (tunnels, cluster, profiles, connection
settings, database operations) over one state model (`tui/state.py`, a `ProfileState` per profile) and one host
(`tui/hosts.py`). What is left here is app-wide: mounting, help, quitting, the command palette.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from textual.app import SystemCommand
from textual.binding import Binding, BindingType
from textual.screen import Screen

from tunnelman.core import profiles as prof
from tunnelman.tui.actions.cluster import ClusterActions
from tunnelman.tui.actions.db import DbActions
from tunnelman.tui.actions.events import EventActions
from tunnelman.tui.actions.health import HealthActions, HealthProbe
from tunnelman.tui.actions.next import NextActions
from tunnelman.tui.actions.profiles import ProfileActions
from tunnelman.tui.actions.settings import SettingsActions
from tunnelman.tui.actions.tunnels import TunnelActions
from tunnelman.tui.hosts import TunnelHost
from tunnelman.tui.screens.help import HelpScreen
from tunnelman.tui.screens.main import MainScreen

if TYPE_CHECKING:
    from tunnelman.tui.services import AwsApi

CSS_FILE = Path(__file__).with_name("tunnelman.tcss")


class TunnelmanApp(
    TunnelActions,
    ClusterActions,
    ProfileActions,
    SettingsActions,
    DbActions,
    EventActions,
    HealthActions,
    NextActions,
):
    """tunnelman's terminal UI."""

    CSS_PATH = CSS_FILE
    TITLE = "tunnelman"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+r", "reload", "Reload profiles", show=False)
    ]
    NOTIFICATION_TIMEOUT = 8

    def get_default_screen(self) -> Screen[Any]:
        return MainScreen()

    def on_mount(self) -> None:
        self.follow_theme()
        self.set_interval(self.poll_interval, self._tick)
        self._watch_host()

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(survives_quit=self.host.survives_quit))

    async def action_quit(self) -> None:
        """q: with tunnels open, say they keep running (agent) or ask whether to close them."""
        from tunnelman.tui.screens.modals import ConfirmScreen

        open_ = self.open_tunnels()
        if not open_:
            self.exit()
            return
        local = self.host.local_names()
        here = [n for n in open_ if n in local]
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
                self.close_all_and_exit()

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

    def on_unmount(self) -> None:
        self._stop.set()
        self.state.cancel_all()
        self.stop_cluster_waits()
        if self.host.survives_quit:
            self.host.close_local()
        else:
            self.host.close_all()

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
                "Check profile",
                "Run the doctor's steps for the highlighted profile, as `tunnelman check` (k)",
                main.action_check,
            ),
            (
                "psql",
                "Run `tunnelman psql` for the highlighted profile in this terminal (o)",
                main.action_psql,
            ),
            (
                "Last error",
                "Show the highlighted profile's last error and its hint (h)",
                main.action_last_error,
            ),
            (
                "Set password",
                "Keep the database password in the OS keyring (p)",
                main.action_password,
            ),
            *self.db_commands(),
            ("Reload profiles", "Read the profile file again (ctrl+r)", self.action_reload),
            ("Keys", "Every key (?)", self.action_help),
        )
        commands += self.list_commands(
            main, screen
        )  # the log, filter, sort, groups (actions/events.py)
        for title, help_text, callback in commands:
            yield SystemCommand(title, help_text, callback)


def make_app(
    config_path: Path | None = None,
    *,
    initial_profile: str | None = None,
    host: TunnelHost | None = None,
    aws: AwsApi | None = None,
    clock: Callable[[], float] = time.time,
    poll_interval: float = 1.0,
    health: HealthProbe | None = None,
) -> TunnelmanApp:
    """The one factory for the CLI and the tests. `host`/`aws`/`clock`/`health` are for tests."""
    return TunnelmanApp(
        prof.config_path(config_path),
        initial_profile=initial_profile,
        host=host,
        aws=aws,
        clock=clock,
        poll_interval=poll_interval,
        health=health,
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
