"""The `l` event log: events written before the TUI started are listed, new ones appear while it is
open, `a` switches between one profile and all, kinds have colours; cluster state changes seen by
the TUI are events too (`tunnelman log` shows them); against the lab: a bastion that drops the
agent's tunnel shows reconnecting → back-up, still listed after the TUI is reopened.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rich.text import Text
from textual.pilot import Pilot

from tests.cli import RunCli
from tests.lab.moto_server import MotoServer
from tests.lab.postgres import Postgres
from tests.lab.profiles import query
from tests.lab.sshd import Sshd
from tests.test_agent_support import (
    agent_home,
    ok,
    write_bastion_profile,
)
from tests.test_aws_lab import client, seed
from tests.test_tui_aws import geo_profile
from tests.test_tui_snapshots import SIZE, SnapCompare, app_with, fixed_world
from tests.tui_support import FIXED_NOW, FakeAws, FakeHost, sync, wait_for
from tunnelman.core.tunnel import TunnelState, TunnelStatus
from tunnelman.core.tunnel.events import EventRecorder, events_path, read_events
from tunnelman.tui.app import TunnelmanApp, make_app
from tunnelman.tui.screens.log import LogScreen
from tunnelman.tui.screens.main import MainScreen

__all__ = ["agent_home", "fixed_world"]  # fixtures

PROFILES = """\
[profiles.geo]
description = "Aurora PostGIS"
bastion = "ec2-user@bastion.example.com"
endpoint = "geo.cluster-x.us-east-2.rds.amazonaws.com"
local_port = 5433

[profiles.reports]
bastion = "jump@10.20.0.5:2222"
endpoint = "reports.abcdefgh.us-east-2.rds.amazonaws.com"
local_port = 5435
"""


def status(name: str, state: TunnelState, error: str | None = None) -> TunnelStatus:
    return TunnelStatus(
        name=name,
        state=state,
        local_port=5433,
        since=None,
        reconnects=1 if state is TunnelState.UP else 0,
        error=error,
        connections=0,
    )


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        self.now += 7.5
        return self.now


def a_day_of_events(path: Path, start: float = FIXED_NOW - 3600) -> None:
    """geo: opened, dropped, back up; reports: opened, then failed for good."""
    recorder = EventRecorder(path, clock=Clock(start))
    recorder.status(status("geo", TunnelState.UP))
    recorder.status(status("reports", TunnelState.UP))
    recorder.status(status("geo", TunnelState.RECONNECTING, "the bastion closed the connection"))
    recorder.status(status("geo", TunnelState.UP))
    recorder.status(
        status("reports", TunnelState.FAILED, "bastion 10.20.0.5:2222 refused the login")
    )


def rows(screen: LogScreen) -> list[tuple[str, str, str]]:
    """(profile, kind, message) of each listed row."""
    table = screen.table
    out = []
    for i in range(table.row_count):
        cells = table.get_row_at(i)
        out.append((str(cells[1]), str(cells[2]), str(cells[3])))
    return out


def log_screen(app: TunnelmanApp) -> LogScreen:
    screen = app.screen
    assert isinstance(screen, LogScreen)
    return screen


@sync
async def test_log_lists_earlier_events_and_follows_new_ones(tmp_home: Path) -> None:
    path = events_path()
    a_day_of_events(path)
    config = tmp_home / "profiles.toml"
    config.write_text(PROFILES)
    app = make_app(config, initial_profile="geo", host=FakeHost(), aws=FakeAws())
    async with app.run_test(size=(160, 45)) as pilot:
        await pilot.pause()
        await pilot.press("l")
        await wait_for(pilot, lambda: isinstance(app.screen, LogScreen) and app.screen.loaded, 5)
        screen = log_screen(app)
        # opened on geo: geo's events, oldest first, newest at the bottom and highlighted
        assert [(n, k) for n, k, _ in rows(screen)] == [
            ("geo", "opened"),
            ("geo", "reconnecting"),
            ("geo", "back-up"),
        ]
        assert rows(screen)[1][2] == "the bastion closed the connection"
        assert rows(screen)[2][2].startswith("back up after 7.5 s")
        assert screen.table.cursor_row == 2
        # a: every tunnel
        await pilot.press("a")
        await pilot.pause()
        kinds = [(n, k) for n, k, _ in rows(screen)]
        assert kinds[1] == ("reports", "opened")
        assert kinds[-1] == ("reports", "failed")
        assert len(kinds) == 5
        failed = screen.table.get_row_at(4)
        theme = app.current_theme
        assert isinstance(failed[2], Text)
        assert theme.error is not None
        assert theme.error.lower() in str(failed[2].style).lower()  # failed: the error colour
        back_up = screen.table.get_row_at(3)[2]
        assert isinstance(back_up, Text)
        assert theme.success is not None
        assert theme.success.lower() in str(back_up.style).lower()
        # another process appends (as the agent does): it appears, at the bottom
        subprocess.run(
            [
                sys.executable,
                "-c",
                "from tunnelman.core.tunnel import TunnelState, TunnelStatus\n"
                "from tunnelman.core.tunnel.events import EventRecorder, events_path\n"
                "s = TunnelStatus('geo', TunnelState.STOPPED, None, None, 0, None, 0)\n"
                "r = EventRecorder(events_path())\n"
                "r.status(TunnelStatus('geo', TunnelState.UP, 5433, None, 0, None, 0))\n"
                "r.status(s)\n",
            ],
            check=True,
            timeout=30,
        )
        await wait_for(pilot, lambda: len(rows(screen)) == 7, 5, "the appended events")
        assert [k for _, k, _ in rows(screen)][-2:] == ["opened", "closed"]
        assert screen.table.cursor_row == 6  # following: the newest is in view
        # a again: only geo, the new ones included
        await pilot.press("a")
        await pilot.pause()
        assert [k for _, k, _ in rows(screen)] == [
            "opened",
            "reconnecting",
            "back-up",
            "opened",
            "closed",
        ]
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, MainScreen)
    assert screen._stop.is_set()  # the worker following the file ends with the screen


@sync
async def test_log_without_events_says_so(tmp_home: Path) -> None:
    config = tmp_home / "profiles.toml"
    config.write_text(PROFILES)
    app = make_app(config, host=FakeHost(), aws=FakeAws())
    async with app.run_test(size=(160, 45)) as pilot:
        await pilot.pause()
        await pilot.press("l")
        await wait_for(pilot, lambda: isinstance(app.screen, LogScreen) and app.screen.loaded, 5)
        title = str(app.screen.query_one("#log-title").render())
        assert "none yet" in title
        assert log_screen(app).table.row_count == 0


@sync
async def test_a_cluster_state_change_is_an_event(
    aws_env: MotoServer, tmp_home: Path, run_cli: RunCli
) -> None:
    seed(aws_env)
    config = tmp_home / ".config" / "tunnelman" / "profiles.toml"
    geo_profile(config)
    app = make_app(config, initial_profile="geo")
    async with app.run_test(size=(160, 45)) as pilot:
        await wait_for(pilot, lambda: "geo" in app.clusters, 30, "cluster status from moto")
        first = app.clusters["geo"]
        await pilot.press("r")  # the same state again: no event
        await wait_for(pilot, lambda: app.clusters["geo"] is not first, 30, "a refresh")
        assert read_events(events_path()) == []
        client(aws_env, "rds").stop_db_cluster(DBClusterIdentifier="geo-prod")
        before = app.clusters["geo"]
        await pilot.press("r")
        await wait_for(pilot, lambda: app.clusters["geo"] is not before, 30, "a refresh")
        await pilot.pause()
        (event,) = read_events(events_path())
        assert event.name == "geo"
        assert event.kind == "cluster"
        assert event.extra == {"status": "stopped"}
        assert event.message == "cluster geo-prod is stopped (was available)"
        # and the l screen lists it
        await pilot.press("l")
        await wait_for(pilot, lambda: isinstance(app.screen, LogScreen) and app.screen.loaded, 5)
        assert rows(log_screen(app)) == [("geo", "cluster", event.message)]
    shown = ok(run_cli("log", "geo")).stdout
    assert "geo  cluster: cluster geo-prod is stopped (was available)" in shown


@pytest.mark.usefixtures("agent_home")
@pytest.mark.timeout(180)
@sync
async def test_a_dropped_bastion_shows_reconnecting_then_back_up_and_outlives_the_tui(
    make_sshd: Callable[..., Sshd], postgres: Postgres
) -> None:
    """The acceptance path: open a tunnel in the TUI (the agent holds it), the bastion drops its
    sessions, the open log shows reconnecting → back-up; quit, reopen: still listed."""
    bastion = make_sshd()
    config = write_bastion_profile("lab", bastion, postgres)
    app = make_app(config, initial_profile="lab")
    async with app.run_test(size=(160, 45)) as pilot:
        await pilot.pause()
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.state_of("lab")[0] == "up", 60, "the tunnel")
        port = app.state_of("lab")[1]
        assert port is not None
        assert query(port, postgres) == 1
        await pilot.press("l")
        await wait_for(pilot, lambda: isinstance(app.screen, LogScreen) and app.screen.loaded, 5)
        screen = log_screen(app)
        assert bastion.kill_sessions() >= 1
        killed = time.monotonic()

        def kinds() -> list[str]:
            return [k for _, k, _ in rows(screen)]

        await wait_for(pilot, lambda: "back-up" in kinds(), 60, "back-up in the TUI's log")
        print(f"[tui log] back-up listed {time.monotonic() - killed:.2f} s after the kill")
        assert kinds()[0] == "opened"
        assert kinds().index("reconnecting") < kinds().index("back-up")
        await pilot.press("escape")
        await pilot.pause()
    # the agent keeps the tunnel; a new TUI lists what happened
    again = make_app(config, initial_profile="lab")
    async with again.run_test(size=(160, 45)) as pilot:
        await pilot.pause()
        await pilot.press("l")
        await wait_for(
            pilot, lambda: isinstance(again.screen, LogScreen) and again.screen.loaded, 5
        )
        listed = [k for _, k, _ in rows(log_screen(again))]
        assert "reconnecting" in listed
        assert "back-up" in listed


def test_snapshot_event_log(
    fixed_world: Path, snap_compare: SnapCompare, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNNELMAN_LOG", "tunnelman.log")  # relative: the same path in every run
    a_day_of_events(events_path())
    EventRecorder(events_path(), clock=lambda: FIXED_NOW - 60).cluster(
        "prod", "stopped", "cluster database-1 is stopped (was available)"
    )
    app = app_with(PROFILES.replace("geo", "prod"), profile="prod")
    # the events name geo; the snapshot's profiles call it prod
    path = events_path()
    path.write_text(path.read_text().replace('"geo"', '"prod"'))

    async def open_log(pilot: Pilot[Any]) -> None:
        await pilot.pause()
        await pilot.press("l")
        await wait_for(pilot, lambda: isinstance(app.screen, LogScreen) and app.screen.loaded, 5)
        await pilot.press("a")
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=open_log)
