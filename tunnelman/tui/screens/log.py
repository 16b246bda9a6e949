"""The `l` screen: every tunnel's events, newest at the bottom, followed live while it is open.

The events come from the file the agent and `tunnelman up` append to (`core/tunnel/events.py`),
so what happened while the TUI was closed is listed too. A thread worker reads it
(`read_backlog`), then follows it from where that ended (`tail_events(offset=)`: nothing lost or
listed twice between the two) and posts `EventsRead` to this screen; it ends with the screen.
`a` switches between the profile the screen was opened on and every profile.
"""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Final

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Header, Static

from tunnelman.core.profiles import printable
from tunnelman.core.tunnel.events import read_backlog, tail_events
from tunnelman.tui.screens.main import KeyBar

if TYPE_CHECKING:
    from tunnelman.core.tunnel.events import TunnelEvent

SHOWN: Final = 2000
"""Rows kept on screen (the file holds up to 1 MiB); `tunnelman log -n 0` prints them all."""

KIND_COLOURS: Final[dict[str, str]] = {
    "failed": "error",
    "back-up": "success",
    "opened": "success",
    "reconnecting": "warning",
    "retrying": "warning",
    "cluster": "accent",
}
"""Event kind -> theme colour (the theme's, so the palette's theme switcher and NO_COLOR hold)."""


class EventsRead(Message):
    """Events from the file, oldest first (the backlog at once, then each as it is appended)."""

    def __init__(self, events: list[TunnelEvent], *, backlog: bool = False) -> None:
        super().__init__()
        self.events = events
        self.backlog = backlog


class LogScreen(Screen[None]):
    """Timestamped events of every tunnel (or of one profile)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Close", key_display="esc"),
        Binding("a", "toggle_all", "All / this profile"),
        Binding("l", "close", "Close", show=False),
        Binding("q", "close", "Close", show=False),
    ]

    def __init__(self, name: str | None, *, path: Path) -> None:
        super().__init__()
        self.profile = name
        self.only = name  # None: every profile
        self.path = path
        self.events: list[TunnelEvent] = []
        self.loaded = False
        self._stop = threading.Event()

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        yield Static("", id="log-title")
        table: DataTable[str | Text] = DataTable(id="log-table", cursor_type="row")
        yield table
        yield KeyBar(self.BINDINGS)

    def on_mount(self) -> None:
        self.title = "tunnelman — events"
        self.sub_title = str(self.path)
        for key, label in (("time", "Time"), ("name", "Profile"), ("kind", "Event")):
            self.table.add_column(label, key=key)
        self.table.add_column("Message", key="message")
        self._show_title()
        self.table.focus()
        self._follow()

    def on_unmount(self) -> None:
        self._stop.set()

    @property
    def table(self) -> DataTable[str | Text]:
        return self.query_one("#log-table", DataTable)

    # ------------------------------------------------------------------ the worker

    @work(thread=True, group="events", exit_on_error=False)
    def _follow(self) -> None:
        events, offset = read_backlog(self.path)
        self.post_message(EventsRead(events, backlog=True))
        for event in tail_events(self.path, None, self._stop, offset=offset):
            self.post_message(EventsRead([event]))

    @on(EventsRead)
    def _read(self, message: EventsRead) -> None:
        self.events.extend(message.events)
        del self.events[:-SHOWN]
        self.loaded = self.loaded or message.backlog
        table = self.table
        at_end = not table.row_count or table.cursor_row >= table.row_count - 1
        if message.backlog:
            self._draw()
            return
        for event in message.events:
            if self._wanted(event):
                self._add(event)
        if at_end:
            self._to_end()
        self._show_title()

    # ------------------------------------------------------------------ drawing

    def _wanted(self, event: TunnelEvent) -> bool:
        return self.only is None or event.name == self.only

    def shown(self) -> list[TunnelEvent]:
        """The events listed now, oldest first."""
        return [e for e in self.events if self._wanted(e)]

    def _draw(self) -> None:
        self.table.clear()
        for event in self.shown():
            self._add(event)
        self._to_end()
        self._show_title()

    def _add(self, event: TunnelEvent) -> None:
        theme = self.app.current_theme
        colour = getattr(theme, KIND_COLOURS.get(event.kind, ""), None) or ""
        when = dt.datetime.fromtimestamp(event.time).strftime("%Y-%m-%d %H:%M:%S")
        kind_style = f"bold {colour}".strip() if colour else "dim"
        message_style = colour if event.kind == "failed" and colour else ""
        self.table.add_row(
            Text(when, style="dim"),
            Text(printable(event.name)),
            Text(printable(event.kind), style=kind_style),
            Text(printable(event.message), style=message_style, end=""),
        )

    def _to_end(self) -> None:
        if self.table.row_count:
            self.table.move_cursor(row=self.table.row_count - 1, animate=False)

    def _show_title(self) -> None:
        who = "every tunnel" if self.only is None else f"'{printable(self.only)}'"
        count = sum(1 for e in self.events if self._wanted(e))
        title = Text(f" Events of {who}", style="bold")
        if not self.loaded:
            title.append(" — reading…", style="dim")
        elif not count:
            title.append(" — none yet (the agent and `tunnelman up` record them)", style="dim")
        else:
            title.append(f" — {count}, newest at the bottom, following", style="dim")
        if self.profile is not None:
            other = "every tunnel" if self.only is not None else f"only '{printable(self.profile)}'"
            title.append(f"   a: {other}", style="dim")
        self.query_one("#log-title", Static).update(title)

    # ------------------------------------------------------------------ keys

    def action_close(self) -> None:
        self.dismiss(None)

    def action_toggle_all(self) -> None:
        if self.profile is None:
            self.notify("Opened on every tunnel: highlight a profile, then l, to see one.")
            return
        self.only = None if self.only is not None else self.profile
        self._draw()
