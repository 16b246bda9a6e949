"""Which rows the profile list shows, in what order: the `/` filter, the sort, group headings.

Pure (no Textual): `arrange` turns the profiles, their shown states, the filter text, the sort and
the collapsed groups into rows, so the rules are tested without a Pilot and `ProfileTable` only
draws them. A heading row's key is `HEADING` + the group: a profile name never holds a NUL.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal

from tunnelman.core.tunnel import TunnelState
from tunnelman.tui.state import CONNECTING

if TYPE_CHECKING:
    from tunnelman.core.profiles import Profile
    from tunnelman.tui.state import Shown

Sort = Literal["group", "name", "state"]
SORTS: Final[tuple[Sort, ...]] = ("group", "name", "state")
SORT_LABELS: Final[dict[Sort, str]] = {
    "group": "by group (file order)",
    "name": "by name",
    "state": "by state",
}
HEADING: Final = "\0group:"

_RANK: Final[dict[str, int]] = {
    TunnelState.UP: 0,
    TunnelState.RECONNECTING: 1,
    TunnelState.STARTING: 2,
    CONNECTING: 2,
    TunnelState.FAILED: 3,
    TunnelState.STOPPED: 4,
}


def next_sort(sort: Sort) -> Sort:
    return SORTS[(SORTS.index(sort) + 1) % len(SORTS)]


def state_rank(state: Shown) -> int:
    """Open tunnels first, then those on their way, failed, closed."""
    return _RANK.get(state, 4)


def matches(profile: Profile, query: str) -> bool:
    """`query` (already lower-case) in the name, description, endpoint or group."""
    if not query:
        return True
    fields = (profile.name, profile.description, str(profile.endpoint or ""), profile.group or "")
    return any(query in text.lower() for text in fields)


@dataclass
class Heading:
    """A group's heading: its name, how many of its profiles the filter lets through, open ones."""

    group: str
    collapsed: bool
    profiles: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return HEADING + self.group


Row = Heading | str  # a heading, or a profile's name


def arrange(
    profiles: Iterable[Profile],
    states: dict[str, tuple[Shown, int | None]],
    *,
    query: str = "",
    sort: Sort = "group",
    collapsed: frozenset[str] | set[str] = frozenset(),
) -> list[Row]:
    """The rows to show. `group`: profiles without a group first, then one heading per group (in
    the order groups first appear in the file) over its profiles, unless collapsed; `name` and
    `state` (open first): one flat list."""
    query = query.strip().lower()
    every = list(profiles)
    shown = [p for p in every if matches(p, query)]
    if sort == "name":
        shown.sort(key=lambda p: (p.name.lower(), p.name))
        return [p.name for p in shown]
    if sort == "state":

        def rank(p: Profile) -> tuple[int, str]:
            return state_rank(states.get(p.name, (TunnelState.STOPPED, None))[0]), p.name.lower()

        shown.sort(key=rank)
        return [p.name for p in shown]
    rows: list[Row] = []
    # Every group in file order, whatever the filter lets through: headings do not move as you type.
    headings = {p.group: Heading(p.group, p.group in collapsed) for p in every if p.group}
    for p in shown:
        if p.group is None:
            rows.append(p.name)
        else:
            headings[p.group].profiles.append(p.name)
    for heading in headings.values():
        if not heading.profiles:
            continue
        rows.append(heading)
        if not heading.collapsed:
            rows.extend(heading.profiles)
    return rows
