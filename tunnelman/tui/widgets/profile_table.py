"""The profile list: name, state badge, local port, current rate, description, one row per profile.

A DataTable: fast with hundreds of rows, keyboard and mouse (click a row to highlight it, click it
again or press enter to open / close its tunnel). The `/` filter, the sort and group headings
(enter or space on one folds it) come from `tui/listing.py`; the border's title says which are on.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

from rich.text import Text
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.widgets import DataTable

from tunnelman.core.profiles import Profile, printable
from tunnelman.core.tunnel import TunnelState
from tunnelman.tui.format import badge, colour
from tunnelman.tui.listing import HEADING, SORT_LABELS, Heading, Sort, arrange, matches, next_sort
from tunnelman.tui.state import OPEN_STATES, Shown

COLUMNS = (
    ("name", "Profile"),
    ("state", "State"),
    ("port", "Port"),
    ("rate", "Rate"),
    ("description", "Description"),
)


class ProfileTable(DataTable[str | Text]):
    """One row per profile, keyed by profile name; group headings keyed `HEADING` + group."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "select_cursor", "Open/close", priority=False),
        Binding("space", "fold", "Fold group", show=False),
    ]

    DEFAULT_CSS = """
    ProfileTable { height: 1fr; overflow-x: hidden; }
    """

    class Folded(Message):
        """A group heading was folded or unfolded (the highlighted row may have changed)."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=False)
        self.filter_text = ""
        self.sort_mode: Sort = "group"
        self.collapsed: set[str] = set()
        self._profiles: dict[str, Profile] = {}
        self._states: dict[str, tuple[Shown, int | None]] = {}
        self._headings: dict[str, Heading] = {}

    def on_mount(self) -> None:
        for key, label in COLUMNS:
            self.add_column(label, key=key)

    def fill(
        self, profiles: Iterable[Profile], states: dict[str, tuple[Shown, int | None]]
    ) -> None:
        """Replace every row; `states` maps name -> (state, port)."""
        self._profiles = {p.name: p for p in profiles}
        self._states = dict(states)
        self._draw()

    def _draw(self) -> None:
        self.clear()
        self._headings = {}
        stopped = (TunnelState.STOPPED, None)
        rows = arrange(
            self._profiles.values(),
            self._states,
            query=self.filter_text,
            sort=self.sort_mode,
            collapsed=self.collapsed,
        )
        for row in rows:
            if isinstance(row, Heading):
                self._headings[row.group] = row
                self.add_row(*self._heading_cells(row), key=row.key)
            else:
                state, port = self._states.get(row, stopped)
                self.add_row(*self._cells(self._profiles[row], state, port), key=row)
        self._title()

    def _title(self) -> None:
        parts = []
        if self.sort_mode != "group":
            parts.append(f"sorted {SORT_LABELS[self.sort_mode]}")
        query = self.filter_text.strip().lower()
        if query:
            shown = sum(1 for p in self._profiles.values() if matches(p, query))
            parts.append(f"filter '{printable(query)}': {shown} of {len(self._profiles)}")
        self.border_title = " · ".join(parts) or None

    def _heading_cells(self, heading: Heading) -> tuple[str | Text, ...]:
        arrow = "▸" if heading.collapsed else "▾"
        up = sum(1 for n in heading.profiles if self._states.get(n, ("", None))[0] in OPEN_STATES)
        count = len(heading.profiles)
        return (
            Text(f"{arrow} {printable(heading.group)}", style="bold"),
            Text(f"{up} open" if up else "", style=colour("success")),
            Text(""),
            Text(""),
            Text(f"{count} profile{'s' if count != 1 else ''}", style="dim", end=""),
        )

    def _cells(self, profile: Profile, state: Shown, port: int | None) -> tuple[str | Text, ...]:
        shown = port if port else profile.local_port
        port_text = Text(str(shown) if shown else "—", style="bold" if port else "dim")
        # Escaped, and a Text rather than a str: a str cell is parsed as markup ("[/]" would raise)
        # and an escape sequence in the file must not reach the terminal.
        description = printable(profile.description)
        if len(description) > 32:
            description = description[:31] + "…"
        name = (
            profile.name
            if profile.group is None or self.sort_mode != "group"
            else f"  {profile.name}"
        )
        # a failed row wears the error colour whole: it stands out in a long list
        name_text = Text(name, style=colour("error") if state == TunnelState.FAILED else "")
        return (name_text, badge(state), port_text, "", Text(description, end=""))

    def update_state(self, profile: Profile, state: Shown, port: int | None) -> None:
        """Redraw one row's badge and port (and its group's heading); re-sort when sorted by
        state and the state changed."""
        before = self._states.get(profile.name, (TunnelState.STOPPED, None))[0]
        self._states[profile.name] = (state, port)
        self._profiles.setdefault(profile.name, profile)
        if self.sort_mode == "state" and before != state:
            self.rearrange()
            return
        heading = self._headings.get(profile.group or "")
        if heading is not None and heading.key in self.rows:
            self.update_cell(
                heading.key, "state", self._heading_cells(heading)[1], update_width=True
            )
        if profile.name not in self.rows:
            return
        cells = self._cells(profile, state, port)
        # update_width: "◌ connecting…" and a 5-digit port are wider than "○ closed" and "—"
        self.update_cell(profile.name, "name", cells[0])
        self.update_cell(profile.name, "state", cells[1], update_width=True)
        self.update_cell(profile.name, "port", cells[2], update_width=True)

    # ------------------------------------------------------------------ filter, sort, fold

    def rearrange(self) -> None:
        """Draw again after the filter, the sort or a fold changed, keeping the highlighted row
        (when it went: its folded group's heading, else the first profile left)."""
        key = self.current_key
        group = None
        if key is not None and not key.startswith(HEADING) and key in self._profiles:
            group = self._profiles[key].group
        self._draw()
        if key is not None and key in self.rows:
            self.move_cursor(row=self.get_row_index(key))
        elif group in self.collapsed and HEADING + group in self.rows:
            self.move_cursor(row=self.get_row_index(HEADING + group))
        else:  # filtered out: the first profile that is left
            self.select_first_profile()

    def set_query(self, text: str) -> None:
        if text != self.filter_text:
            self.filter_text = text
            self.rearrange()

    def cycle_sort(self) -> Sort:
        self.sort_mode = next_sort(self.sort_mode)
        self.rearrange()
        return self.sort_mode

    def fold(self, group: str | None = None) -> bool:
        """Fold or unfold `group` (default: the highlighted heading's, or the highlighted
        profile's group); False when there is none (not sorted by group, no group)."""
        if group is None:
            group = self.current_group
        if group is None and self.current in self._profiles:
            group = self._profiles[self.current or ""].group
        if group is None or self.sort_mode != "group" or HEADING + group not in self.rows:
            return False
        self.collapsed ^= {group}
        self._draw()
        self.move_cursor(row=self.get_row_index(HEADING + group))
        self.post_message(self.Folded())
        return True

    def action_fold(self) -> None:
        """space: on a heading only (g on the screen folds from any of the group's rows)."""
        if self.current_group is not None:
            self.fold()

    def update_rate(self, name: str, rate: str) -> None:
        """Redraw one row's rate ("2.1 MB/s", or blank when idle)."""
        if name in self.rows:
            self.update_cell(
                name, "rate", Text(rate, style=colour("accent"), end=""), update_width=True
            )

    # ------------------------------------------------------------------ reading

    @property
    def current_key(self) -> str | None:
        """Key of the highlighted row: a profile's name or a heading's key."""
        if not self.row_count:
            return None
        try:
            key, _ = self.coordinate_to_cell_key(self.cursor_coordinate)
        except Exception:  # cursor outside the (just cleared) table
            return None
        return key.value

    @property
    def current(self) -> str | None:
        """Name of the highlighted profile (None on a heading)."""
        key = self.current_key
        return None if key is None or key.startswith(HEADING) else key

    @property
    def current_group(self) -> str | None:
        """The group whose heading is highlighted."""
        key = self.current_key
        return key[len(HEADING) :] if key is not None and key.startswith(HEADING) else None

    def heading(self, group: str) -> Heading | None:
        return self._headings.get(group)

    def select_name(self, name: str) -> bool:
        """Highlight `name`, or its group's heading when the group is folded; False: not listed."""
        if name in self.rows:
            self.move_cursor(row=self.get_row_index(name))
            return True
        profile = self._profiles.get(name)
        if profile is not None and profile.group and HEADING + profile.group in self.rows:
            self.move_cursor(row=self.get_row_index(HEADING + profile.group))
            return True
        return False

    def select_first_profile(self) -> None:
        """Highlight the first profile row (the list may open on a heading)."""
        first = next((k for k in self.rows if not str(k.value).startswith(HEADING)), None)
        if first is not None:
            self.move_cursor(row=self.get_row_index(first))
