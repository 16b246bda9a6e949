"""Many profiles: the `/` filter, `group` headings that fold, the `S` sort, and the `group` key
itself (the profile file, `profile add --group`, `ls --json`).

The list's rules (`tui/listing.py`) are tested bare; the keys with a Pilot over a real profile
file (FakeHost: no tunnel is opened here, the lab's tunnels are in test_tui_lab.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Input

from tests.cli import RunCli
from tests.test_tui_snapshots import SIZE, SnapCompare, app_with, fixed_world
from tests.tui_support import FakeAws, FakeHost, sync, wait_for
from tunnelman.core import profiles as prof
from tunnelman.core.errors import ConfigError
from tunnelman.core.tunnel import TunnelState
from tunnelman.tui.app import TunnelmanApp, make_app
from tunnelman.tui.listing import HEADING, Heading, arrange
from tunnelman.tui.widgets.profile_table import ProfileTable

__all__ = ["fixed_world"]  # the snapshots' fixture, used here too

GROUPS = ("prod", "staging", "client")


def many_profiles(count: int = 200) -> str:
    """`count` profiles; every fifth has no group, the others are spread over GROUPS."""
    lines = ["[defaults]", 'region = "us-east-2"', ""]
    for i in range(count):
        lines += [
            f"[profiles.db-{i:03d}]",
            f'description = "database number {i}"',
            f'bastion = "ec2-user@bastion-{i}.example.com"',
            f'endpoint = "db-{i}.cluster-abc.us-east-2.rds.amazonaws.com"',
            f"local_port = {20000 + i}",
        ]
        if i % 5:
            lines.append(f'group = "{GROUPS[i % 3]}"')
        lines.append("")
    lines += [
        "[profiles.lab-geo]",
        'description = "The LAB PostGIS"',
        'bastion = "tester@127.0.0.1:2222"',
        'endpoint = "127.0.0.1:5432"',
        'group = "staging"',
        "",
    ]
    return "\n".join(lines)


def app_on(tmp_path: Path, text: str) -> TunnelmanApp:
    config = tmp_path / "profiles.toml"
    config.write_text(text)
    return make_app(config, host=FakeHost(), aws=FakeAws(), poll_interval=3600)


def table_of(app: TunnelmanApp) -> ProfileTable:
    assert app.main is not None
    return app.main.table


def displayed(widget: Input) -> bool:
    return bool(widget.display)  # a call: mypy does not carry narrowing across the key presses


def sort_of(table: ProfileTable) -> str:
    return table.sort_mode


def title_of(table: ProfileTable) -> str | None:
    return str(table.border_title) if table.border_title is not None else None


def names(table: ProfileTable) -> list[str]:
    return [str(key.value) for key in table.rows]


# ---------------------------------------------------------------------- the rules, bare


def test_filter_matches_name_description_endpoint_case_insensitively(tmp_path: Path) -> None:
    path = tmp_path / "profiles.toml"
    path.write_text(many_profiles(20))
    profiles = list(prof.load(path).profiles.values())
    assert arrange(profiles, {}, query="LAB", sort="name") == [
        "lab-geo"
    ]  # its description says LAB, its name lab
    assert arrange(profiles, {}, query="number 13", sort="name") == ["db-013"]  # description
    assert arrange(profiles, {}, query="DB-7.CLUSTER", sort="name") == ["db-007"]  # endpoint
    assert arrange(profiles, {}, query="no such thing", sort="group") == []
    assert len(arrange(profiles, {}, query="", sort="name")) == 21


def test_groups_keep_file_order_headings_and_fold(tmp_path: Path) -> None:
    path = tmp_path / "profiles.toml"
    path.write_text(many_profiles(10))
    profiles = list(prof.load(path).profiles.values())
    rows = arrange(profiles, {}, sort="group")
    headings = [r.group for r in rows if isinstance(r, Heading)]
    assert headings == ["staging", "client", "prod"]  # in the order they first appear
    assert rows[:2] == ["db-000", "db-005"]  # no group: first, under no heading
    folded = arrange(profiles, {}, sort="group", collapsed={"client"})
    client = next(r for r in folded if isinstance(r, Heading) and r.group == "client")
    assert client.collapsed
    assert client.profiles == ["db-002", "db-008"]
    assert "db-002" not in folded
    assert "db-002" in rows
    # a filter keeps the headings where they were, and drops the empty ones
    rows = arrange(profiles, {}, query="db-00", sort="group")
    assert [r.group for r in rows if isinstance(r, Heading)] == ["staging", "client", "prod"]
    rows = arrange(profiles, {}, query="lab", sort="group")
    assert [r.group if isinstance(r, Heading) else r for r in rows] == ["staging", "lab-geo"]


def test_state_sort_puts_open_tunnels_first(tmp_path: Path) -> None:
    path = tmp_path / "profiles.toml"
    path.write_text(many_profiles(6))
    profiles = list(prof.load(path).profiles.values())
    states = {
        "db-004": (TunnelState.UP, 20004),
        "db-002": (TunnelState.FAILED, None),
        "db-003": (TunnelState.RECONNECTING, 20003),
    }
    rows = arrange(profiles, states, sort="state")  # type: ignore[arg-type]
    assert rows[:3] == ["db-004", "db-003", "db-002"]
    assert rows[3:] == ["db-000", "db-001", "db-005", "lab-geo"]


# ---------------------------------------------------------------------- the group key


def test_group_key_loads_and_bad_values_are_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "profiles.toml"
    path.write_text('[profiles.a]\nendpoint = "db"\ngroup = "  prod  "\n[profiles.b]\ngroup = ""\n')
    loaded = prof.load(path)
    assert loaded.get("a").group == "prod"
    assert loaded.get("b").group is None  # empty: no group
    path.write_text('[profiles.a]\nendpoint = "db"\ngroup = 3\n')
    with pytest.raises(ConfigError) as caught:
        prof.load(path)
    assert "profiles.a.group" in str(caught.value)
    assert "must be a string" in str(caught.value)


def test_profile_add_group_and_ls_json(tmp_home: Path, run_cli: RunCli) -> None:
    added = run_cli(
        "profile",
        "add",
        "geo",
        "--endpoint",
        "db.example.com",
        "--bastion",
        "u@b",
        "--group",
        "prod",
    )
    assert added.returncode == 0, added.stderr
    listed = run_cli("ls", "--json")
    assert listed.returncode == 0, listed.stderr
    (geo,) = json.loads(listed.stdout)
    assert geo["group"] == "prod"
    run_cli("profile", "add", "two", "--endpoint", "db2.example.com", "--bastion", "u@b")
    rows = {p["name"]: p for p in json.loads(run_cli("ls", "--json").stdout)}
    assert rows["two"]["group"] is None  # every object has the key
    config = tmp_home / ".config" / "tunnelman" / "profiles.toml"
    assert 'group = "prod"' in config.read_text()


# ---------------------------------------------------------------------- the keys


@sync
async def test_slash_filters_200_profiles_as_you_type_and_escape_restores(tmp_path: Path) -> None:
    app = app_on(tmp_path, many_profiles(200))
    async with app.run_test(size=(160, 45)) as pilot:
        await pilot.pause()
        table = table_of(app)
        everything = names(table)
        assert len([n for n in everything if not n.startswith(HEADING)]) == 201
        await pilot.press("slash")
        box = app.screen.query_one("#filter", Input)
        assert box.has_focus
        await pilot.press(*"db-19")
        await pilot.pause()
        shown = [n for n in names(table) if not n.startswith(HEADING)]
        # names db-190…db-199, and db-019 whose endpoint is db-19.cluster-…
        assert sorted(shown) == ["db-019", *(f"db-{i}" for i in range(190, 200))]
        assert title_of(table) == "filter 'db-19': 11 of 201"
        await pilot.press(*"7")  # narrower as you type
        await pilot.pause()
        assert [n for n in names(table) if not n.startswith(HEADING)] == ["db-197"]
        assert app.main is not None
        assert app.main.current in (None, "db-197")
        await pilot.press(*["backspace"] * len("db-197"))
        await pilot.press(*"LAB")  # description / name, any case
        await pilot.pause()
        assert [n for n in names(table) if not n.startswith(HEADING)] == ["lab-geo"]
        await pilot.press("enter")  # to the list, the filter stays
        await pilot.pause()
        assert table.has_focus
        assert displayed(box)
        assert app.main.current == "lab-geo"
        await pilot.press("slash", "escape")  # back in the box, esc clears it
        await pilot.pause()
        assert names(table) == everything
        assert not displayed(box)
        assert box.value == ""
        assert table.has_focus
        assert title_of(table) is None


@sync
async def test_headings_fold_with_enter_space_and_g(tmp_path: Path) -> None:
    app = app_on(tmp_path, many_profiles(30))
    async with app.run_test(size=(160, 45)) as pilot:
        await pilot.pause()
        table = table_of(app)
        assert app.main is not None
        before = table.row_count
        table.move_cursor(row=table.get_row_index(HEADING + "client"))
        await pilot.pause()
        assert table.current_group == "client"
        assert app.main.current is None
        await pilot.press("enter")
        await pilot.pause()
        assert table.collapsed == {"client"}
        client = table.heading("client")
        assert client is not None
        assert table.row_count == before - len(client.profiles)
        assert all(n not in table.rows for n in client.profiles)
        assert table.current_group == "client"  # the cursor stays on the heading
        assert "▸ client" in str(table.get_row(HEADING + "client")[0])
        await pilot.press("space")
        await pilot.pause()
        assert table.collapsed == set()
        assert table.row_count == before
        # g on a profile folds its group and lands on the heading
        table.move_cursor(row=table.get_row_index("db-003"))  # group prod
        await pilot.pause()
        await pilot.press("g")
        await pilot.pause()
        assert table.collapsed == {"prod"}
        assert table.current_group == "prod"
        assert "db-003" not in table.rows
        # the detail pane tells what a heading is
        detail = str(app.main.query_one("#detail-empty").render())
        assert "Group prod" in detail
        assert "unfolds" in detail


@sync
async def test_s_cycles_the_sort_and_the_border_says_which(tmp_path: Path) -> None:
    app = app_on(tmp_path, many_profiles(12))
    async with app.run_test(size=(160, 45)) as pilot:
        await pilot.pause()
        table = table_of(app)
        assert sort_of(table) == "group"
        assert title_of(table) is None
        assert any(n.startswith(HEADING) for n in names(table))
        await pilot.press("S")
        await pilot.pause()
        assert sort_of(table) == "name"
        assert title_of(table) == "sorted by name"
        assert names(table)[:3] == ["db-000", "db-001", "db-002"]
        assert not any(n.startswith(HEADING) for n in names(table))
        await pilot.press("S")
        await pilot.pause()
        assert sort_of(table) == "state"
        assert title_of(table) == "sorted by state"
        # a tunnel that opens moves to the top
        app.toggle_tunnel("db-007")
        await wait_for(pilot, lambda: app.state_of("db-007")[0] == "up", 5, "the tunnel")
        await pilot.pause()
        assert names(table)[0] == "db-007"
        await pilot.press("S")
        await pilot.pause()
        assert sort_of(table) == "group"
        assert title_of(table) is None


@sync
async def test_list_keys_are_in_the_palette_and_help(tmp_path: Path) -> None:
    from tunnelman.tui.screens.help import KEYS

    app = app_on(tmp_path, many_profiles(3))
    async with app.run_test(size=(160, 45)) as pilot:
        await pilot.pause()
        titles = {c.title for c in app.get_system_commands(app.screen)}
        assert {"Event log", "Filter profiles", "Sort profiles", "Fold / unfold group"} <= titles
        keys = {k for k, _ in KEYS}
        assert {"l", "/", "S", "g"} <= keys


# ---------------------------------------------------------------------- snapshot

GROUPED = """\
[defaults]
region = "us-east-2"

[profiles.prod]
description = "Aurora Serverless PostGIS (geo)"
group       = "prod"
bastion     = "ec2-user@ec2-3-15-21-102.us-east-2.compute.amazonaws.com"
endpoint    = "database-1.cluster-abc123xyz.us-east-2.rds.amazonaws.com"
database    = "geo"
local_port  = 5433

[profiles.prod-reports]
description = "reporting replica of geo"
group       = "prod"
bastion     = "ec2-user@ec2-3-15-21-102.us-east-2.compute.amazonaws.com"
endpoint    = "reports.abcdefgh.us-east-2.rds.amazonaws.com"
local_port  = 5435

[profiles.staging]
description = "staging copy of geo, restored nightly"
group       = "staging"
bastion     = "ec2-user@bastion.staging.example.com"
endpoint    = "staging-db.cluster-def456.us-east-2.rds.amazonaws.com"
local_port  = 5434

[profiles.staging-old]
description = "last year's staging"
group       = "staging"
bastion     = "ec2-user@bastion.staging.example.com"
endpoint    = "old-db.cluster-def456.us-east-2.rds.amazonaws.com"
local_port  = 5436

[profiles.acme]
description = "client Acme's parcels (geo)"
group       = "client"
bastion     = "deploy@jump.acme.example"
endpoint    = "parcels.cluster-ghi.eu-west-1.rds.amazonaws.com"
local_port  = 5440

[profiles.globex]
description = "client Globex, archived"
group       = "client"
bastion     = "deploy@jump.globex.example"
endpoint    = "globex.cluster-jkl.eu-west-1.rds.amazonaws.com"
local_port  = 5441
"""


def test_snapshot_grouped_filtered_list(fixed_world: Path, snap_compare: SnapCompare) -> None:
    """Groups, `client` folded, filtered on "geo" (staging-old and globex drop out)."""
    app = app_with(GROUPED)

    async def arrange_(pilot: Pilot[Any]) -> None:
        await pilot.pause()
        table = table_of(app)
        table.move_cursor(row=table.get_row_index(HEADING + "client"))
        await pilot.press("enter")
        await pilot.press("slash", *"geo", "enter")
        await pilot.pause()
        table.move_cursor(row=table.get_row_index("staging"))
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=arrange_)


@sync
async def test_the_edit_form_sets_the_group(tmp_path: Path) -> None:
    from tunnelman.tui.screens.profile_form import ProfileFormScreen

    app = app_on(tmp_path, many_profiles(6))
    async with app.run_test(size=(160, 45)) as pilot:
        await pilot.pause()
        table = table_of(app)
        table.move_cursor(row=table.get_row_index("db-001"))
        await pilot.pause()
        await pilot.press("e")
        await wait_for(pilot, lambda: isinstance(app.screen, ProfileFormScreen), 5)
        field = app.screen.query_one("#f-group", Input)
        assert field.value == "staging"
        field.value = "archive"
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: not isinstance(app.screen, ProfileFormScreen), 5)
        await pilot.pause()
        assert prof.load(tmp_path / "profiles.toml").get("db-001").group == "archive"
        assert HEADING + "archive" in table.rows
        assert table.current == "db-001"
