"""The main screen: profile list on the left, details on the right, every action on a key.

Keys and buttons call the app's actions with the highlighted profile's name; the app does the work
(in workers where it may block) and calls `refresh_profile` / `refresh_all` when state changes.
The list's own keys (`/` filter, `S` sort, `g` / enter / space on a heading fold a group) change
only what the list shows; the filter's input is mounted on first use (startup stays lean).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, ClassVar, cast

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widgets import Button, DataTable, Header, Static

from tunnelman.core.profiles import printable
from tunnelman.tui.format import (
    cluster_text,
    colour,
    profile_text,
    rate_cell,
    summary_text,
    tunnel_text,
)
from tunnelman.tui.listing import SORT_LABELS
from tunnelman.tui.state import OPEN_STATES, ProfileState
from tunnelman.tui.widgets.detail import DetailPane
from tunnelman.tui.widgets.profile_table import ProfileTable

if TYPE_CHECKING:
    from textual.widgets import Input

    from tunnelman.tui.app import TunnelmanApp

WELCOME = Text.from_markup(
    "[b]No profiles yet.[/b]\n\n"
    "A profile is one way into one database: an SSH bastion, the database endpoint behind it, "
    "and a local port.\n\n"
    "  [b]n[/b]  add a profile by hand\n"
    "  [b]d[/b]  discover Aurora/RDS clusters in AWS and import one\n"
    "  [b]?[/b]  all keys\n\n"
    "Profiles are kept in {path}"
)


class KeyBar(Static):
    """The main screen's footer: every key, each clickable. One widget instead of Textual's
    Footer (a widget per key, recomposed on every focus change: ~0.15 s of a 1 s startup)."""

    DEFAULT_CSS = """
    KeyBar {
        dock: bottom; height: 1; background: $footer-background; color: $footer-foreground;
        link-style: none; link-color: $footer-foreground; link-background: $footer-background;
        link-style-hover: bold; link-color-hover: $text; link-background-hover: $block-hover-background;
    }
    """

    def __init__(self, bindings: list[BindingType]) -> None:
        parts = []
        for binding in bindings:
            if not isinstance(binding, Binding) or not binding.show:
                continue
            action = binding.action if "." in binding.action else f"screen.{binding.action}"
            key = binding.key_display or {"enter": "⏎"}.get(binding.key, binding.key)
            parts.append(f"[@click={action}] [b $accent]{key}[/] {binding.description} [/]")
        parts.append("[@click=app.command_palette] [b $accent]^p[/] palette [/]")
        super().__init__("".join(parts), id="keybar")


class MainScreen(Screen[None]):
    """Profiles and the detail of the highlighted one."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "toggle_tunnel", "Open/close"),
        Binding("escape", "cancel", "Cancel", show=False),
        Binding("c", "conn", "Settings"),
        Binding("y", "copy", "Copy"),
        Binding("w", "write", "Write"),
        Binding("r", "refresh_cluster", "Refresh"),
        Binding("s", "start_stop", "Start/stop"),
        Binding("n", "new", "New"),
        Binding("e", "edit", "Edit"),
        Binding("x", "delete", "Delete"),
        Binding("d", "discover", "Discover"),
        Binding("p", "password", "Password"),
        Binding("k", "check", "Check", show=False),  # the footer is full: in ? and the palette
        Binding("o", "psql", "psql", show=False),
        Binding("h", "last_error", "Last error", show=False),
        Binding("l", "log", "Log", show=False),
        Binding("slash", "filter", "Filter", key_display="/", show=False),
        Binding("S", "sort", "Sort", show=False),
        Binding("g", "fold", "Fold group", show=False),
        Binding("question_mark", "app.help", "Help", key_display="?"),
        Binding("q", "app.quit", "Quit"),
    ]

    @property
    def tm(self) -> TunnelmanApp:
        return cast("TunnelmanApp", self.app)

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        yield Static(id="summary")
        with Horizontal(id="main"):
            yield ProfileTable(id="profiles")
            yield DetailPane(id="detail")
        yield KeyBar(self.BINDINGS)

    def on_mount(self) -> None:
        self.title = "tunnelman"
        self.refresh_all(select=self.tm.initial_profile)

    # ------------------------------------------------------------------ display

    @property
    def table(self) -> ProfileTable:
        return self.query_one(ProfileTable)

    @property
    def detail(self) -> DetailPane:
        return self.query_one(DetailPane)

    @property
    def current(self) -> str | None:
        try:
            return self.table.current
        except NoMatches:  # not composed yet, or being torn down
            return None

    def refresh_all(self, select: str | None = None) -> None:
        """Refill the list (after load / save / delete) and the detail pane."""
        app = self.tm
        self.sub_title = str(app.config_path)
        keep = select or self.current
        states = {name: app.state_of(name) for name in app.profile_names()}
        self.table.fill(app.profile_list(), states)
        self.refresh_summary()
        if not keep or not self.table.select_name(keep):
            self.table.select_first_profile()
        if self.focused is not self.table:  # each focus change recomposes the footer (~40 ms)
            self.table.focus()
        self.refresh_detail()

    def refresh_profile(self, name: str) -> None:
        """Redraw one profile's row, and the detail pane when it shows that profile."""
        profile = self.tm.profile(name)
        if profile is not None:
            state, port = self.tm.state_of(name)
            self.table.update_state(profile, state, port)
            live = self.tm.state.get(name)
            self.table.update_rate(name, rate_cell(live.rate() if live is not None else None))
            self.refresh_summary()
        if name == self.current:
            self.refresh_detail()

    def refresh_summary(self) -> None:
        """The header line: how many tunnels are up, reconnecting, failed."""
        app = self.tm
        self.query_one("#summary", Static).update(
            summary_text(app.state_of(name)[0] for name in app.profile_names())
        )

    def refresh_detail(self) -> None:
        app = self.tm
        group = self.table.current_group
        if group is not None:
            self.detail.show_empty(self._group_text(group))
            return
        name = self.current
        profile = app.profile(name) if name else None
        if profile is None:
            if app.load_error:
                message = Text("Cannot read the profile file\n\n", style="bold " + colour("error"))
                message.append(app.load_error, style=colour("error"))
                message.append("\n\nFix it and press ctrl+r to reload, or n to add a profile.")
            else:
                message = Text.from_markup(
                    WELCOME.markup.replace("{path}", str(app.config_path).replace("[", r"\["))
                )
            self.detail.show_empty(message)
            return
        state = app.state.get(profile.name) or ProfileState(profile.name)
        connecting = state.connecting is not None
        toggle = "Cancel (enter)" if connecting else "Open tunnel (enter)"
        if state.is_open and not connecting:
            toggle = "Close tunnel (enter)"
        cluster: Text | None = None
        running: bool | None = None
        if profile.cluster:
            cluster = self._cluster_text(state)
            running = state.cluster_running()
        self.detail.show(
            profile=profile_text(profile),
            tunnel=tunnel_text(
                state.tunnel,
                connecting=connecting,
                last_error=state.last_error,
                now=app.clock(),
                history=state.rates,
                health=state.health_shown(),
                health_checking=state.health_checking,
            ),
            toggle_label=toggle,
            cluster=cluster,
            cluster_running=running,
        )
        if self.detail.conn_shown:
            self.detail.set_conn(app.conn_texts(profile.name))

    def _group_text(self, group: str) -> Text:
        heading = self.table.heading(group)
        names = heading.profiles if heading is not None else []
        open_ = [n for n in names if self.tm.state.shown(n)[0] in OPEN_STATES]
        text = Text(f"Group {printable(group)}\n\n", style="bold")
        text.append(f"{len(names)} profile{'s' if len(names) != 1 else ''}")
        if self.table.filter_text.strip():
            text.append(" matching the filter")
        text.append(f", {len(open_)} open" + (f": {', '.join(open_)}" if open_ else "") + "\n\n")
        folded = heading is not None and heading.collapsed
        text.append(
            f"enter or space {'unfolds' if folded else 'folds'} it (g too, on any of its rows); "
            "S sorts the list by name or state instead of by group.",
            style="dim",
        )
        return text

    @staticmethod
    def _cluster_text(state: ProfileState) -> Text:
        text = cluster_text(state.cluster) if state.cluster is not None else Text()
        if state.cluster_loading:
            text.append("asking AWS…", style="italic " + colour("warning"))
        elif state.cluster_error is not None:
            text.append(state.cluster_error, style=colour("error"))
        elif state.cluster is None:
            text.append("cluster status not loaded — press r", style="dim")
        return text

    @on(DataTable.RowHighlighted)
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.refresh_detail()
        name = self.current
        if name:
            self.tm.profile_highlighted(name)

    @on(DataTable.RowSelected)
    def _selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        if self.table.current_group is not None:
            self.table.fold()
            return
        self.action_toggle_tunnel()

    @on(ProfileTable.Folded)
    def _folded(self) -> None:
        self.refresh_detail()

    # ------------------------------------------------------------------ the list's own keys

    @property
    def filter_box(self) -> Input | None:
        found = self.query("#filter")
        return cast("Input", found.first()) if found else None

    async def action_filter(self) -> None:
        """/: a line under the list; the list narrows as you type (esc clears it)."""
        box = self.filter_box
        if box is None:
            from textual.widgets import Input

            box = Input(
                placeholder="filter: name, description, endpoint or group — enter: to the list, "
                "esc: clear",
                id="filter",
            )
            await self.mount(box, before=self.query_one(KeyBar))
        box.display = True
        box.focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "filter":
            event.stop()
            self.table.set_query(event.value)
            self.refresh_detail()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "filter":
            event.stop()
            self.table.focus()

    def clear_filter(self) -> bool:
        """Empty and hide the filter, back to the list; False when no filter was shown."""
        box = self.filter_box
        if box is None or not box.display:
            return False
        box.value = ""
        box.display = False
        self.table.set_query("")
        self.table.focus()
        self.refresh_detail()
        return True

    def action_sort(self) -> None:
        """S: by group (file order), by name, by state (open first)."""
        sort = self.table.cycle_sort()
        self.notify(f"Profiles sorted {SORT_LABELS[sort]}", timeout=3)
        self.refresh_detail()

    def action_fold(self) -> None:
        """g: fold or unfold the group of the highlighted heading or profile."""
        if not self.table.fold():
            message = (
                'No group here: profiles get one with group = "NAME" in the profile file.'
                if self.table.sort_mode == "group"
                else "Groups fold when the list is sorted by group: press S."
            )
            self.notify(message, severity="warning", timeout=4)

    def action_log(self) -> None:
        """l: the events of every tunnel (or the highlighted profile's)."""
        self.tm.show_log(self.current)

    @on(Button.Pressed)
    async def _button(self, event: Button.Pressed) -> None:
        actions: dict[str, Callable[[], Awaitable[None] | None]] = {
            "btn-toggle": self.action_toggle_tunnel,
            "btn-edit": self.action_edit,
            "btn-password": self.action_password,
            "btn-conn": self.action_conn,
            "btn-delete": self.action_delete,
            "btn-refresh": self.action_refresh_cluster,
            "btn-startstop": self.action_start_stop,
            "btn-copy": self.action_copy,
            "btn-write": self.action_write,
        }
        action = actions.get(event.button.id or "")
        if action is not None:
            event.stop()
            result = action()
            if result is not None:
                await result

    # ------------------------------------------------------------------ actions

    def _need_current(self) -> str | None:
        name = self.current
        if name is None and self.table.current_group is not None:
            self.notify("A group heading: highlight one of its profiles.", severity="warning")
        elif name is None:
            self.notify("No profile: press n to add one.", severity="warning")
        return name

    def action_toggle_tunnel(self) -> None:
        if name := self._need_current():
            self.tm.toggle_tunnel(name)

    async def action_cancel(self) -> None:
        box = self.filter_box
        if box is not None and box.has_focus:
            self.clear_filter()
            return
        name = self.current
        if name and self.tm.state.is_connecting(name):
            self.tm.cancel_connect(name)
        elif self.detail.conn_shown:
            await self.detail.show_conn(False)
            self.table.focus()
        else:
            self.clear_filter()

    async def action_conn(self) -> None:
        if not self._need_current():
            return
        shown = not self.detail.conn_shown
        await self.detail.show_conn(shown)
        if shown:
            self.refresh_detail()
            self.detail.focus_conn()
        else:
            self.table.focus()

    def action_copy(self) -> None:
        if name := self._need_current():
            self.tm.copy_setting(name, self.detail.conn_format)

    def action_write(self) -> None:
        if name := self._need_current():
            self.tm.write_setting(name, self.detail.conn_format)

    def action_refresh_cluster(self) -> None:
        if name := self._need_current():
            self.tm.refresh_cluster(name, explicit=True)

    def action_start_stop(self) -> None:
        if name := self._need_current():
            self.tm.start_stop_cluster(name)

    def action_new(self) -> None:
        self.tm.new_profile()

    def action_edit(self) -> None:
        if name := self._need_current():
            self.tm.edit_profile(name)

    def action_delete(self) -> None:
        if name := self._need_current():
            self.tm.delete_profile(name)

    def action_discover(self) -> None:
        self.tm.discover()

    def action_check(self) -> None:
        if name := self._need_current():
            self.tm.check_profile(name)

    def action_psql(self) -> None:
        if name := self._need_current():
            self.tm.run_psql(name)

    def action_last_error(self) -> None:
        if name := self._need_current():
            self.tm.show_last_error(name)

    def action_password(self) -> None:
        if name := self._need_current():
            self.tm.set_password(name)
