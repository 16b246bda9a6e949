"""The profile list: name, state badge, local port, current rate, description, one row per profile.

A DataTable: fast with hundreds of rows, keyboard and mouse (click a row to highlight it, click it
again or press enter to open / close its tunnel).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

from rich.text import Text
from textual.binding import Binding, BindingType
from textual.widgets import DataTable

from tunnelman.core.profiles import Profile, printable
from tunnelman.core.tunnel import TunnelState
from tunnelman.tui.format import badge
from tunnelman.tui.state import Shown

COLUMNS = (
    ("name", "Profile"),
    ("state", "State"),
    ("port", "Port"),
    ("rate", "Rate"),
    ("description", "Description"),
)


class ProfileTable(DataTable[str | Text]):
    """One row per profile, keyed by profile name."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "select_cursor", "Open/close", priority=False),
    ]

    DEFAULT_CSS = """
    ProfileTable { height: 1fr; overflow-x: hidden; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=False)

    def on_mount(self) -> None:
        for key, label in COLUMNS:
            self.add_column(label, key=key)

    def fill(
        self, profiles: Iterable[Profile], states: dict[str, tuple[Shown, int | None]]
    ) -> None:
        """Replace every row; `states` maps name -> (state, port)."""
        self.clear()
        for profile in profiles:
            state, port = states.get(profile.name, (TunnelState.STOPPED, None))
            self.add_row(*self._cells(profile, state, port), key=profile.name)

    def _cells(self, profile: Profile, state: Shown, port: int | None) -> tuple[str | Text, ...]:
        shown = port if port else profile.local_port
        port_text = Text(str(shown) if shown else "—", style="bold" if port else "dim")
        # Escaped, and a Text rather than a str: a str cell is parsed as markup ("[/]" would raise)
        # and an escape sequence in the file must not reach the terminal.
        description = printable(profile.description)
        if len(description) > 32:
            description = description[:31] + "…"
        return (profile.name, badge(state), port_text, "", Text(description, end=""))

    def update_state(self, profile: Profile, state: Shown, port: int | None) -> None:
        """Redraw one row's badge and port."""
        if profile.name not in self.rows:
            return
        cells = self._cells(profile, state, port)
        # update_width: "◌ connecting…" and a 5-digit port are wider than "○ closed" and "—"
        self.update_cell(profile.name, "state", cells[1], update_width=True)
        self.update_cell(profile.name, "port", cells[2], update_width=True)

    def update_rate(self, name: str, rate: str) -> None:
        """Redraw one row's rate ("2.1 MB/s", or blank when idle)."""
        if name in self.rows:
            self.update_cell(name, "rate", Text(rate, style="cyan", end=""), update_width=True)

    @property
    def current(self) -> str | None:
        """Name of the highlighted profile."""
        if not self.row_count:
            return None
        try:
            key, _ = self.coordinate_to_cell_key(self.cursor_coordinate)
        except Exception:  # cursor outside the (just cleared) table
            return None
        return key.value

    def select_name(self, name: str) -> None:
        if name in self.rows:
            self.move_cursor(row=self.get_row_index(name))
