"""The detail pane: the highlighted profile, its tunnel, its cluster, its connection settings.

It only displays what the app hands it (`show`); the buttons post `Button.Pressed` with ids the main
screen maps to the same actions as the keys, so the mouse reaches everything.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, Static, TabbedContent, TabPane

from tunnelman.tui.services import CONN_TABS


def _button(label: str, id: str, variant: str = "default") -> Button:
    button = Button(label, id=id, variant=variant, compact=True)  # type: ignore[arg-type]
    button.can_focus = False  # keys stay with the list; these are for the mouse
    return button


class DetailPane(VerticalScroll):
    """Everything about one profile."""

    def compose(self) -> ComposeResult:
        yield Static(id="detail-empty")
        with Vertical(id="detail-body"):
            yield Static(id="profile-info")
            with Horizontal(classes="button-row"):
                yield _button("Edit (e)", "btn-edit")
                yield _button("Password (p)", "btn-password")
                yield _button("Settings (c)", "btn-conn")
                yield _button("Delete (x)", "btn-delete", "error")
            with Vertical(id="tunnel-box", classes="box"):
                yield Static(id="tunnel-info")
                with Horizontal(classes="button-row"):
                    yield _button("Open tunnel (enter)", "btn-toggle", "primary")
            with Vertical(id="cluster-box", classes="box"):
                yield Static(id="cluster-info")
                with Horizontal(classes="button-row"):
                    yield _button("Refresh (r)", "btn-refresh")
                    yield _button("Start/stop (s)", "btn-startstop", "warning")
            # Built on first use (`c`): a third of the pane's widgets, not needed for the first screen.
            yield Vertical(id="conn-box", classes="box")

    def on_mount(self) -> None:
        self.query_one("#conn-box").display = False
        self.show_empty(Text())

    def show_empty(self, message: Text) -> None:
        """No profile to show: a welcome or an error in place of the details."""
        empty = self.query_one("#detail-empty", Static)
        empty.update(message)
        empty.display = True
        self.query_one("#detail-body").display = False

    def show(
        self,
        *,
        profile: Text,
        tunnel: Text,
        toggle_label: str,
        cluster: Text | None,
        cluster_running: bool | None,
    ) -> None:
        """Fill the profile, tunnel and cluster sections."""
        self.query_one("#detail-empty").display = False
        self.query_one("#detail-body").display = True
        self.query_one("#profile-info", Static).update(profile)
        self.query_one("#tunnel-info", Static).update(tunnel)
        self.query_one("#btn-toggle", Button).label = toggle_label
        box = self.query_one("#cluster-box")
        box.display = cluster is not None
        if cluster is not None:
            self.query_one("#cluster-info", Static).update(cluster)
            label = "Start/stop (s)"
            if cluster_running is True:
                label = "Stop cluster (s)"
            elif cluster_running is False:
                label = "Start cluster (s)"
            self.query_one("#btn-startstop", Button).label = label

    @property
    def conn_shown(self) -> bool:
        return bool(self.query_one("#conn-box").display)

    async def show_conn(self, shown: bool) -> None:
        box = self.query_one("#conn-box", Vertical)
        if shown and not box.children:
            tabs = TabbedContent(id="conn-tabs")
            for fmt, title in CONN_TABS:
                text = Static(id=f"conn-{fmt}", classes="conn-text", markup=False)
                tabs.compose_add_child(TabPane(title, text, id=f"tab-{fmt}"))
            buttons = Horizontal(
                _button("Copy (y)", "btn-copy", "primary"),
                _button("Write (w)", "btn-write"),
                classes="button-row",
            )
            await box.mount_all([tabs, buttons])
        box.display = shown
        if shown:
            self.call_after_refresh(self.scroll_to_widget, box)

    def set_conn(self, texts: dict[str, str]) -> None:
        for fmt, text in texts.items():
            for widget in self.query(f"#conn-{fmt}").results(Static):
                widget.update(Text(text))

    @property
    def conn_format(self) -> str:
        """The format of the active tab (psql before the tabs exist)."""
        for tabs in self.query("#conn-tabs").results(TabbedContent):
            if tabs.active:
                return tabs.active.removeprefix("tab-")
        return CONN_TABS[0][0]

    def focus_conn(self) -> None:
        tabs = self.query_one("#conn-tabs", TabbedContent)
        tabs.query_one("Tabs").focus()
