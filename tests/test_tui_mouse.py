"""Every action is reachable by mouse: the key bar's entries are links, the list is clickable,
the detail pane has buttons. (FakeHost stands in for the tunnel here; the real tunnels are
clicked open in test_tui_lab.py.)"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from textual.screen import Screen
from textual.widgets import Static

from tests.tui_support import FakeAws, FakeHost, sync, wait_for
from tunnelman.tui.app import TunnelmanApp, make_app
from tunnelman.tui.screens.discover import DiscoverScreen
from tunnelman.tui.screens.help import HelpScreen
from tunnelman.tui.screens.modals import ConfirmScreen, SecretScreen
from tunnelman.tui.screens.profile_form import ProfileFormScreen

PROFILES = """\
[profiles.one]
bastion = "ec2-user@bastion.example.com"
endpoint = "db.example.com"
local_port = 15433
cluster = "database-1"
region = "us-east-2"

[profiles.two]
bastion = "ec2-user@bastion.example.com"
endpoint = "db2.example.com"
local_port = 15434
"""


@pytest.fixture
def app(tmp_path: Path) -> TunnelmanApp:
    config = tmp_path / "profiles.toml"
    config.write_text(PROFILES)
    return make_app(config, host=FakeHost(), aws=FakeAws())


async def click_key(app: TunnelmanApp, pilot: object, label: str) -> None:
    """Click the key bar entry whose description is `label`."""
    from textual.pilot import Pilot

    assert isinstance(pilot, Pilot)
    bar = app.screen.query_one("#keybar", Static)
    text = str(bar.render())
    x = text.index(f" {label} ")
    await pilot.click("#keybar", offset=(x + 1, 0))
    await pilot.pause()


def on_top(app: TunnelmanApp, kind: type[Screen[Any]]) -> Callable[[], bool]:
    return lambda: isinstance(app.screen, kind)


@sync
async def test_key_bar_entries_are_clickable(app: TunnelmanApp) -> None:
    async with app.run_test(size=(200, 40)) as pilot:
        for label, screen in (
            ("Help", HelpScreen),
            ("New", ProfileFormScreen),
            ("Edit", ProfileFormScreen),
            ("Delete", ConfirmScreen),
            ("Password", SecretScreen),
            ("Discover", DiscoverScreen),
            ("Start/stop", ConfirmScreen),
        ):
            if label == "Start/stop":
                await wait_for(pilot, lambda: "one" in app.clusters, 5, "cluster status")
            await click_key(app, pilot, label)
            await wait_for(pilot, on_top(app, screen), 2, label)
            await pilot.press("escape")
            await wait_for(pilot, lambda: app.screen is app.main, 2, f"closing {label}")
        await click_key(app, pilot, "Settings")
        assert app.main is not None
        assert app.main.detail.conn_shown
        await click_key(app, pilot, "Copy")
        assert "15433" in app.clipboard
        await click_key(app, pilot, "Open/close")
        await wait_for(pilot, lambda: app.state_of("one")[0] == "up", 5, "the tunnel")
        await click_key(app, pilot, "Refresh")
        aws = app.aws
        assert isinstance(aws, FakeAws)
        assert aws.calls.count("status one") >= 2


@sync
async def test_clicking_a_row_twice_opens_its_tunnel(app: TunnelmanApp) -> None:
    async with app.run_test(size=(160, 40)) as pilot:
        table = app.screen.query_one("#profiles")
        await pilot.click(
            "#profiles", offset=(3, 3)
        )  # the second row: border, header, "one", "two"
        assert app.main is not None
        assert app.main.current == "two"
        assert app.state_of("two")[0] == "stopped"
        await pilot.click("#profiles", offset=(3, 3))
        await wait_for(pilot, lambda: app.state_of("two")[0] == "up", 5, "the tunnel")
        assert table.has_focus
        await pilot.click("#btn-toggle")  # and the button closes it
        await wait_for(pilot, lambda: app.state_of("two")[0] == "stopped", 5, "closing")


@sync
async def test_command_palette_offers_every_action(app: TunnelmanApp) -> None:
    from textual.command import CommandPalette

    async with app.run_test(size=(160, 40)) as pilot:
        titles = [c.title for c in app.get_system_commands(app.screen)]
        for wanted in (
            "Open / close tunnel",
            "Connection settings",
            "Copy setting",
            "Write setting",
            "Refresh cluster status",
            "Start / stop cluster",
            "New profile",
            "Edit profile",
            "Delete profile",
            "Discover clusters",
            "Set password",
            "Keys",
        ):
            assert wanted in titles
        await pilot.press("ctrl+p")
        await wait_for(pilot, lambda: isinstance(app.screen, CommandPalette), 2, "the palette")
        await pilot.press(*"discover clusters")
        await pilot.pause(0.5)
        await pilot.press("enter")
        await wait_for(pilot, on_top(app, DiscoverScreen), 3, "discover via the palette")
