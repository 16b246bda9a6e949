"""The event log (`l`) and the list's own keys in the command palette.

`show_log` opens `screens/log.py` on the events file (`events_path()`: `$TUNNELMAN_LOG` moves it);
`list_commands` are the palette's entries for the log, the `/` filter, the sort and folding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tunnelman.tui.actions.base import AppBase

if TYPE_CHECKING:
    from textual.screen import Screen

    from tunnelman.tui.screens.main import MainScreen


class EventActions(AppBase):
    """The log screen and the palette entries of the list's keys."""

    def show_log(self, name: str | None) -> None:
        """The events of every tunnel, filtered to `name` (a key switches to all)."""
        from tunnelman.core.tunnel.events import events_path
        from tunnelman.tui.screens.log import LogScreen

        if not isinstance(self.screen, LogScreen):
            self.push_screen(LogScreen(name, path=events_path()))

    def list_commands(
        self, main: MainScreen, screen: Screen[Any]
    ) -> tuple[tuple[str, str, Callable[[], Any]], ...]:
        """Palette entries, offered over the main screen only (they act on its list)."""
        if screen is not main:
            return ()
        return (
            (
                "Event log",
                "Every tunnel's events: opened, clients, reconnecting, back up, failed, cluster (l)",
                main.action_log,
            ),
            (
                "Filter profiles",
                "Narrow the list as you type: name, description, endpoint, group (/)",
                main.action_filter,
            ),
            ("Sort profiles", "By group (file order), by name, by state (S)", main.action_sort),
            ("Fold / unfold group", "Fold the highlighted group's heading (g)", main.action_fold),
        )
