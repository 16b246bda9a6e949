"""SVG snapshots of the TUI's main states (pytest-textual-snapshot's `snap_compare`).

Deterministic by construction, so they hold in CI: a fixed terminal size, a relative profile path,
HOME=/home/analyst (paths in profiles expand the same everywhere), TZ=UTC and a fixed clock, and
`FakeHost`/`FakeAws` from tests/tui_support.py instead of random lab ports and moto's random endpoint
names. The same behaviour runs against the real lab in test_tui_lab.py and test_tui_aws.py.
Update after an intended change: `pytest tests/test_tui_snapshots.py --snapshot-update`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Input

from tests.tui_support import FIXED_NOW, FakeAws, FakeHost, fixed_health, wait_for
from tunnelman.core.ssh.known_hosts import HostKeyInfo
from tunnelman.tui.app import TunnelmanApp, make_app
from tunnelman.tui.messages import TunnelChanged
from tunnelman.tui.screens.modals import HostKeyChangedScreen, HostKeyScreen

SIZE = (140, 40)

PROFILES = """\
# tunnelman profiles
[defaults]
region = "us-east-2"
sslmode = "require"

[profiles.prod]
description   = "Aurora Serverless PostGIS (geo)"
bastion       = "ec2-user@ec2-3-15-21-102.us-east-2.compute.amazonaws.com"
identity_file = "~/.ssh/aws-ec2.pem"
endpoint      = "database-1.cluster-abc123xyz.us-east-2.rds.amazonaws.com"
database      = "geo"
user          = "postgres"
local_port    = 5433
cluster       = "database-1"

[profiles.staging]
description   = "staging copy, restored nightly"
bastion       = "ec2-user@bastion.staging.example.com"
identity_file = "~/.ssh/staging.pem"
endpoint      = "staging-db.cluster-def456.us-east-2.rds.amazonaws.com"
database      = "geo"
user          = "analyst"
local_port    = 5434

[profiles.reports]
description   = "RDS reporting instance"
bastion       = "jump@10.20.0.5:2222"
endpoint      = "reports.abcdefgh.us-east-2.rds.amazonaws.com:5433"
database      = "reports"
user          = "reader"
local_port    = 5435
password      = "prompt"
"""

SnapCompare = Callable[..., bool]


@pytest.fixture
def fixed_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", "/home/analyst")
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        yield tmp_path
    finally:
        monkeypatch.undo()
        time.tzset()


def app_with(
    text: str | None,
    *,
    host: FakeHost | None = None,
    aws: FakeAws | None = None,
    profile: str | None = None,
) -> TunnelmanApp:
    path = Path("profiles.toml")
    if text is not None:
        path.write_text(text)
    app = make_app(
        path,
        initial_profile=profile,
        host=host or FakeHost(),
        aws=aws or FakeAws(),
        clock=lambda: FIXED_NOW,
        poll_interval=3600,
        health=fixed_health,
    )
    app.animation_level = "none"  # the tab underline slides: a snapshot must not catch it mid-way
    return app


async def opened(app: TunnelmanApp, pilot: Pilot[Any], name: str) -> None:
    """enter, then wait for the tunnel to be up and its (fixed) health check to be shown."""
    await pilot.press("enter")
    await wait_for(pilot, lambda: app.state_of(name)[0] == "up", 5)
    await wait_for(pilot, lambda: app.state[name].health_shown() is not None, 5, "health")
    await pilot.pause()


async def settle(app: TunnelmanApp, pilot: Pilot[Any]) -> None:
    """Let the highlighted profile's cluster status (fetched after a short delay) arrive."""
    await wait_for(pilot, lambda: app.main is not None and bool(app.main.query("#profiles")), 5)
    name = app.main.current if app.main is not None else None
    profile = app.profiles.get(name) if name else None
    if profile is not None and profile.cluster:
        await wait_for(pilot, lambda: name in app.clusters, 5, "cluster status")
    await pilot.pause()


def test_snapshot_no_profiles_yet(fixed_world: Path, snap_compare: SnapCompare) -> None:
    assert snap_compare(app_with(None), terminal_size=SIZE)


def test_snapshot_list_with_an_open_tunnel(fixed_world: Path, snap_compare: SnapCompare) -> None:
    app = app_with(PROFILES, profile="staging")

    async def open_tunnel(pilot: Pilot[Any]) -> None:
        await opened(app, pilot, "staging")

    assert snap_compare(app, terminal_size=SIZE, run_before=open_tunnel)


def test_snapshot_live_traffic_and_health(fixed_world: Path, snap_compare: SnapCompare) -> None:
    """Bytes, rates, the sparkline of a COPY a minute ago and one now, the list's rate column."""
    app = app_with(PROFILES, profile="staging")

    async def busy(pilot: Pilot[Any]) -> None:
        await opened(app, pilot, "staging")
        status = app.state["staging"].tunnel
        assert status is not None
        mb = 1024 * 1024
        app.post_message(
            TunnelChanged(
                "staging",
                dataclasses.replace(
                    status,
                    bytes_sent=183_500,
                    bytes_received=52 * mb,
                    rate_sent=12_300.0,
                    rate_received=2.1 * mb,
                ),
            )
        )
        ramp = [0.0] * 60 + [i * 0.4 * mb for i in range(10)] + [3.5 * mb] * 20 + [0.0] * 120
        app.state["staging"].rates.extend([*ramp, *[2.1 * mb] * 30])
        await wait_for(pilot, lambda: app.state["staging"].rate() is not None, 5, "the rate")
        app.main.refresh_profile("staging")  # type: ignore[union-attr]
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=busy)


def test_snapshot_connection_settings(fixed_world: Path, snap_compare: SnapCompare) -> None:
    app = app_with(PROFILES, profile="staging")

    async def show(pilot: Pilot[Any]) -> None:
        await opened(app, pilot, "staging")
        await pilot.press("c")
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=show)


def test_snapshot_cluster_status(fixed_world: Path, snap_compare: SnapCompare) -> None:
    app = app_with(PROFILES, profile="prod")

    async def loaded(pilot: Pilot[Any]) -> None:
        await settle(app, pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=loaded)


def test_snapshot_an_error(fixed_world: Path, snap_compare: SnapCompare) -> None:
    host = FakeHost(
        fail={
            "reports": "bastion 10.20.0.5:2222 did not answer within 15 s (connection timed out) "
            "(check that the bastion is running and that its security group allows SSH from your IP)"
        }
    )
    app = app_with(PROFILES, host=host, profile="reports")

    async def fail(pilot: Pilot[Any]) -> None:
        await pilot.press("enter")
        await wait_for(pilot, lambda: "reports" in app.last_errors, 5)
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=fail)


def test_snapshot_config_error(fixed_world: Path, snap_compare: SnapCompare) -> None:
    broken = PROFILES.replace("local_port    = 5434", 'local_port    = "5434"').replace(
        'user          = "reader"', 'usr           = "reader"'
    )
    assert snap_compare(app_with(broken), terminal_size=SIZE)


QUESTION = HostKeyInfo(
    host="ec2-3-15-21-102.us-east-2.compute.amazonaws.com",
    port=22,
    key_type="ssh-ed25519",
    fingerprint="SHA256:p2QAMXNIC1TJYWeIOttrVc98/R1BUFWu3/LiyKgUfQM",
)


def test_snapshot_host_key_modal(fixed_world: Path, snap_compare: SnapCompare) -> None:
    app = app_with(PROFILES, profile="prod")

    async def ask(pilot: Pilot[Any]) -> None:
        await settle(app, pilot)
        await app.push_screen(HostKeyScreen(QUESTION, Path("/home/analyst/.ssh/known_hosts")))
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=ask)


def test_snapshot_host_key_changed_modal(fixed_world: Path, snap_compare: SnapCompare) -> None:
    app = app_with(PROFILES, profile="prod")

    async def refuse(pilot: Pilot[Any]) -> None:
        await settle(app, pilot)
        await app.push_screen(
            HostKeyChangedScreen(
                QUESTION,
                expected="SHA256:Xq3Zl0mJ0y2kJcYh3c1VvH8h9nN0pQ4yZ1r7m2s5tU8",
                known_hosts=Path("/home/analyst/.ssh/known_hosts"),
                line=12,
            )
        )
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=refuse)


def test_snapshot_help(fixed_world: Path, snap_compare: SnapCompare) -> None:
    app = app_with(PROFILES)

    async def help_(pilot: Pilot[Any]) -> None:
        await settle(app, pilot)
        await pilot.press("question_mark")
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=help_)


def test_snapshot_edit_form(fixed_world: Path, snap_compare: SnapCompare) -> None:
    app = app_with(PROFILES, profile="staging")

    async def edit(pilot: Pilot[Any]) -> None:
        await settle(app, pilot)
        await pilot.press("e")
        await pilot.pause()
        for field in app.screen.query(Input):
            field.cursor_blink = False  # a blinking cursor would differ run to run
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=edit)
