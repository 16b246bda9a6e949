"""The TUI's next steps and looks: `o` runs psql in the terminal, the header's tunnel counts,
failed rows and `h`, the theme's colours, NO_COLOR, and the cluster start/stop wait.

`o` is tested where it matters, in a real terminal (tmux) against the lab's sshd and PostgreSQL:
psql runs a query through the tunnel and the TUI comes back after `\\q`. Under a Pilot (no
terminal to hand over) it must say so, not crash. The rest runs with the snapshot stand-ins
(`FakeHost`, `FakeAws`, tests/tui_support.py) so states and colours are deterministic.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from rich.text import Text
from textual.pilot import Pilot
from textual.widgets import DataTable

from tests.conftest import LabProfile
from tests.lab.moto_server import MotoServer
from tests.test_tui_tmux import Tmux
from tests.test_tui_tmux import tmux as tmux_fixture  # noqa: F401 (registers `tmux`)
from tests.tui_support import FIXED_NOW, FakeAws, FakeHost, sync, wait_for
from tunnelman.core.aws import Action, Database
from tunnelman.core.profiles import Profile
from tunnelman.core.tunnel import TunnelState, TunnelStatus
from tunnelman.tui import format as fmt
from tunnelman.tui.app import TunnelmanApp, make_app
from tunnelman.tui.messages import TunnelChanged
from tunnelman.tui.screens.progress import ClusterWaitScreen

SIZE = (140, 40)
SnapCompare = Callable[..., bool]

PROFILES = """\
[defaults]
region = "us-east-2"

[profiles.prod]
description   = "Aurora Serverless PostGIS (geo)"
bastion       = "ec2-user@ec2-3-15-21-102.us-east-2.compute.amazonaws.com"
endpoint      = "database-1.cluster-abc123xyz.us-east-2.rds.amazonaws.com"
database      = "geo"
user          = "postgres"
local_port    = 5433
cluster       = "database-1"

[profiles.staging]
description   = "staging copy, restored nightly"
bastion       = "ec2-user@bastion.staging.example.com"
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
"""

FAILURE = (
    "bastion 10.20.0.5:2222 did not answer within 15 s (connection timed out) "
    "(check that the bastion is running and that its security group allows SSH from your IP)"
)


@pytest.fixture
def fixed_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """As test_tui_snapshots.py: a relative profile path, a fixed HOME and TZ."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", "/home/analyst")
    monkeypatch.setenv("TZ", "UTC")
    monkeypatch.delenv("NO_COLOR", raising=False)
    time.tzset()
    try:
        yield tmp_path
    finally:
        monkeypatch.undo()
        time.tzset()


def app_with(
    *,
    host: FakeHost | None = None,
    aws: FakeAws | None = None,
    profile: str = "staging",
    clock: Callable[[], float] = lambda: FIXED_NOW,
) -> TunnelmanApp:
    path = Path("profiles.toml")
    path.write_text(PROFILES)
    app = make_app(
        path,
        initial_profile=profile,
        host=host or FakeHost(fail={"reports": FAILURE}),
        aws=aws or FakeAws(),
        clock=clock,
        poll_interval=3600,
    )
    app.animation_level = "none"
    return app


def summary(app: TunnelmanApp) -> str:
    main = app.main
    assert main is not None
    return str(main.query_one("#summary").render())


def cell(app: TunnelmanApp, row: str, column: str) -> Text:
    main = app.main
    assert main is not None
    value = main.query_one("#profiles", DataTable).get_cell(row, column)
    assert isinstance(value, Text)
    return value


def reconnecting(name: str) -> TunnelStatus:
    return TunnelStatus(
        name=name,
        state=TunnelState.RECONNECTING,
        local_port=5433,
        since=FIXED_NOW - 60,
        reconnects=1,
        error="keepalive missed",
        connections=0,
    )


async def one_of_each(app: TunnelmanApp, pilot: Pilot[Any]) -> None:
    """staging up, reports failed, prod reconnecting (news as the agent would send it)."""
    await wait_for(pilot, lambda: app.main is not None and bool(app.main.query("#profiles")), 5)
    if app.state_of("staging")[0] != "up":
        app.open_tunnel("staging")
    await wait_for(pilot, lambda: app.state_of("staging")[0] == "up", 5, "staging up")
    app.open_tunnel("reports")
    await wait_for(pilot, lambda: "reports" in app.last_errors, 5, "reports failed")
    app.post_message(TunnelChanged("prod", reconnecting("prod")))
    await wait_for(pilot, lambda: app.state_of("prod")[0] == "reconnecting", 5)
    await pilot.pause()


# ----------------------------------------------------------------------------- header, failed rows


@sync
async def test_the_header_counts_tunnels_up_reconnecting_failed(fixed_world: Path) -> None:
    app = app_with()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.main is not None and bool(app.main.query("#summary")), 5)
        assert summary(app) == "no tunnel open"
        await pilot.press("enter")
        await wait_for(pilot, lambda: summary(app) == "1 up", 5, "1 up")
        await one_of_each(app, pilot)
        hint = "   h on a failed row: its error and hint"
        assert summary(app) == "1 up · 1 reconnecting · 1 failed" + hint
        await pilot.press("enter")  # closes staging
        await wait_for(
            pilot, lambda: summary(app) == "1 reconnecting · 1 failed" + hint, 5, "closed"
        )


@sync
async def test_a_failed_row_wears_the_error_colour_and_h_shows_error_and_hint(
    fixed_world: Path,
) -> None:
    app = app_with()
    async with app.run_test(size=SIZE) as pilot:
        await one_of_each(app, pilot)
        error = app.theme_variables["error"]
        assert cell(app, "reports", "name").style == error
        assert cell(app, "reports", "state").style == f"bold {error}"
        assert cell(app, "staging", "name").style == ""  # only the failed row
        assert cell(app, "staging", "state").style == f"bold {app.theme_variables['success']}"
        main = app.main
        assert main is not None
        main.table.select_name("reports")
        await pilot.pause()
        await pilot.press("h")
        await pilot.pause()
        shown = [str(n.message) for n in app._notifications]
        assert any("did not answer within 15 s" in m and "security group" in m for m in shown), (
            shown
        )
        assert any("k runs the checks" in m for m in shown)
        assert any(str(n.title) == "Tunnel 'reports' failed" for n in app._notifications)
        main.table.select_name("prod")  # reconnecting: its last error, not "failed"
        await pilot.pause()
        await pilot.press("h")
        await pilot.pause()
        last = list(app._notifications)[-1]
        assert str(last.title) == "Tunnel 'prod' — last error"
        assert "keepalive missed" in str(last.message)
        main.table.select_name("staging")
        await pilot.pause()
        await pilot.press("h")
        await pilot.pause()
        assert any("'staging' has no error" in str(n.message) for n in app._notifications)


@sync
async def test_switching_theme_recolours_the_states(fixed_world: Path) -> None:
    app = app_with()
    async with app.run_test(size=SIZE) as pilot:
        await one_of_each(app, pilot)
        before = cell(app, "reports", "state").style
        assert before == f"bold {app.theme_variables['error']}"
        app.theme = "catppuccin-latte"  # what the palette's "Change theme" does
        await pilot.pause()
        await pilot.pause()
        error = app.theme_variables["error"]
        theirs = str(app.current_theme.error)  # the theme's own value (variables round it)
        assert all(
            abs(int(error[i : i + 2], 16) - int(theirs[i : i + 2], 16)) <= 2 for i in (1, 3, 5)
        )
        assert cell(app, "reports", "state").style == f"bold {error}"
        assert cell(app, "reports", "state").style != before
        assert cell(app, "reports", "name").style == error
        assert cell(app, "staging", "state").style == f"bold {app.theme_variables['success']}"
        assert fmt.colour("error") == error  # the detail pane's `last error` line too


def colours_of(svg: str) -> set[tuple[int, int, int]]:
    """Every fill colour of an exported screen (Rich's SVG: `fill: #rrggbb`)."""
    found = re.findall(r"fill:\s*#([0-9a-fA-F]{6})", svg)
    return {(int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)) for c in found}


def chromatic(colours: set[tuple[int, int, int]]) -> set[tuple[int, int, int]]:
    return {c for c in colours if max(c) - min(c) > 8}


@sync
async def test_no_color_means_no_colour_even_in_our_own_text(
    fixed_world: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = app_with()
    async with app.run_test(size=SIZE) as pilot:
        await one_of_each(app, pilot)
        error = app.theme_variables["error"].lstrip("#")
        coloured = app.export_screenshot()
    red = (int(error[0:2], 16), int(error[2:4], 16), int(error[4:6], 16))
    assert red in colours_of(coloured)  # the check below could fail

    monkeypatch.setenv("NO_COLOR", "1")
    app = app_with()
    async with app.run_test(size=SIZE) as pilot:
        await one_of_each(app, pilot)
        plain = app.export_screenshot()
        states = [str(cell(app, n, "state")) for n in ("staging", "reports", "prod")]
    assert app.no_color
    assert chromatic(colours_of(plain)) == set(), sorted(chromatic(colours_of(plain)))
    assert states == ["● up", "✗ failed", "↻ reconnecting"]  # the glyphs still tell them apart


def test_snapshot_a_failed_row_and_the_header(fixed_world: Path, snap_compare: SnapCompare) -> None:
    app = app_with(profile="reports")

    async def states(pilot: Pilot[Any]) -> None:
        await one_of_each(app, pilot)
        main = app.main
        assert main is not None
        main.table.select_name("reports")
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=states)


# ----------------------------------------------------------------------------- o: psql


@sync
async def test_o_under_a_pilot_says_the_terminal_cannot_be_handed_over(fixed_world: Path) -> None:
    app = app_with()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.main is not None and bool(app.main.query("#profiles")), 5)
        await pilot.press("o")
        await pilot.pause()
        messages = [str(n.message) for n in app._notifications]
        assert any("cannot be handed over" in m and "tunnelman psql staging" in m for m in messages)
        assert app.is_running
    assert app.psql_argv("staging") == [
        sys.executable,
        "-m",
        "tunnelman",
        "--config",
        "profiles.toml",
        "psql",
        "staging",
    ]


@sync
async def test_o_without_psql_installed_says_how_to_install_it(
    fixed_world: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = fixed_world / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    app = app_with()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.main is not None and bool(app.main.query("#profiles")), 5)
        await pilot.press("o")
        await pilot.pause()
        shown = [(str(n.title), str(n.message)) for n in app._notifications]
        assert any(t == "psql is not installed" and "postgresql-client" in m for t, m in shown), (
            shown
        )
        assert app.is_running


def test_o_runs_psql_in_a_real_terminal_and_the_tui_comes_back(
    lab_profile: LabProfile, keyring_backend: Any, request: pytest.FixtureRequest
) -> None:
    import keyring

    tmux: Tmux = request.getfixturevalue("tmux_fixture")  # tests/test_tui_tmux.py's fixture

    keyring.set_password("tunnelman", "lab", lab_profile.password)
    try:
        tmux.start(
            f"env -u COLUMNS -u LINES {sys.executable} -m tunnelman --config {lab_profile.config}"
        )
        tmux.wait(lambda s: "tunnelman test lab" in s and "no tunnel open" in s, 20, "the list")
        tmux.keys("o")
        # psql's prompt: the database name, then `=#` / `=>`
        prompt = re.compile(rf"^{re.escape(lab_profile.postgres.database)}=[#>]", re.M)
        tmux.wait(prompt.search, 30, "psql's prompt")
        # `\\g`, not `;`: tmux reads an argument ending in `;` as its own command separator
        tmux.keys("select 6 * 7 as a, postgis_version() > '' as g \\g", "Enter")
        screen = tmux.wait(lambda s: re.search(r"^\s*42 \| t\s*$", s, re.M), 15, "the answer")
        assert "Open tunnel" not in screen  # psql has the whole terminal
        assert "opening a tunnel to 'lab'" in screen  # nothing open: psql's own tunnel
        tmux.keys("\\q", "Enter")
        tmux.wait(lambda s: "tunnelman test lab" in s and "Open tunnel" in s, 15, "the TUI back")

        # with the tunnel open (in the agent) `o` reuses it
        tmux.keys("Enter")
        tmux.wait(lambda s: "1 up" in s and "listening" in s, 30, "the tunnel up")
        tmux.keys("o")
        # the terminal's normal screen still shows the first session above the second one
        screen = tmux.wait(lambda s: len(prompt.findall(s)) >= 3, 30, "psql's prompt again")
        assert screen.count('Type "help" for help.') == 2, screen
        assert screen.count("opening a tunnel") == 1, screen  # the first session's only
        tmux.keys("\\q", "Enter")
        tmux.wait(lambda s: "1 up" in s and "Close tunnel" in s, 15, "the TUI back again")
        tmux.keys("?")  # and it takes keys
        tmux.wait(lambda s: "tunnelman — keys" in s, 5, "the help screen")
        tmux.keys("Escape")
        tmux.wait(lambda s: "tunnelman — keys" not in s, 5, "help to close")
        tmux.keys("q")
        deadline = time.monotonic() + 10
        while tmux.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not tmux.alive(), tmux.screen()
    finally:
        keyring.delete_password("tunnelman", "lab")


# ----------------------------------------------------------------------------- cluster wait


class SlowAws(FakeAws):
    """A start that takes until `go` is set, saying each status on the way (as rds.wait_for)."""

    def __init__(self) -> None:
        super().__init__(cluster=replace(FakeAws().cluster, status="stopped"))
        self.go = threading.Event()
        self.returned = threading.Event()

    def wait_for(
        self,
        profile: Profile,
        action: Action,
        *,
        on_status: Callable[[str, float], None] | None = None,
        cancel: threading.Event | None = None,
        interval: float = 5.0,
        writer: bool = False,
    ) -> Database:
        self.calls.append(f"wait {profile.name} {action}{' writer' if writer else ''}")
        assert on_status is not None
        assert cancel is not None
        on_status("starting", 0.0)
        started = time.monotonic()
        while not self.go.is_set() and not cancel.is_set():
            time.sleep(0.05)
        if cancel.is_set():
            self.returned.set()
            return self.cluster  # as rds.wait_for: returns early, AWS carries on
        on_status("writer database-1-instance-1 starting", time.monotonic() - started)
        self.cluster = replace(self.cluster, status="available")
        self.returned.set()
        return self.cluster


async def start_the_cluster(app: TunnelmanApp, pilot: Pilot[Any]) -> ClusterWaitScreen:
    from tunnelman.tui.screens.modals import ConfirmScreen

    await wait_for(pilot, lambda: "prod" in app.clusters, 5, "the cluster status")
    await pilot.press("s")
    await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), 2, "the question")
    await pilot.press("y")
    await wait_for(pilot, lambda: isinstance(app.screen, ClusterWaitScreen), 2, "the wait")
    screen = app.screen
    assert isinstance(screen, ClusterWaitScreen)
    return screen


@sync
async def test_a_cluster_start_waits_with_progress_and_the_ui_stays_live(fixed_world: Path) -> None:
    aws = SlowAws()
    now = [FIXED_NOW]
    app = app_with(aws=aws, profile="prod", clock=lambda: now[0])
    async with app.run_test(size=SIZE) as pilot:
        screen = await start_the_cluster(app, pilot)
        await wait_for(pilot, lambda: screen.status == "starting", 5, "the status")
        assert "starting" in str(screen.query_one("#wait-status").render())
        assert screen.query_one("#wait-bar")  # the indeterminate bar
        # the UI thread is free: the elapsed seconds tick while AWS is being waited for
        now[0] += 3
        await wait_for(
            pilot, lambda: "(3 s)" in str(screen.query_one("#wait-status").render()), 5, "a tick"
        )
        assert app.clusters["prod"].status == "starting"  # the cluster box follows
        aws.go.set()
        await wait_for(pilot, lambda: not isinstance(app.screen, ClusterWaitScreen), 5, "done")
        await wait_for(pilot, lambda: app.clusters["prod"].status == "available", 5)
        assert aws.calls.count("wait prod start writer") == 1  # until the writer accepts
        await wait_for(
            pilot,
            lambda: any(
                "'database-1' accepts connections" in str(n.message) for n in app._notifications
            ),
            5,
            "the notice",
        )
        assert not any("Stopped waiting" in str(n.message) for n in app._notifications)


def test_snapshot_the_cluster_start_wait(fixed_world: Path, snap_compare: SnapCompare) -> None:
    aws = SlowAws()
    app = app_with(aws=aws, profile="prod")

    async def waiting(pilot: Pilot[Any]) -> None:
        screen = await start_the_cluster(app, pilot)
        await wait_for(pilot, lambda: screen.status == "starting", 5, "the status")
        await pilot.pause()

    try:
        assert snap_compare(app, terminal_size=SIZE, run_before=waiting)
    finally:
        aws.go.set()


@sync
async def test_escape_stops_waiting_and_says_the_cluster_keeps_starting(fixed_world: Path) -> None:
    aws = SlowAws()
    app = app_with(aws=aws, profile="prod")
    async with app.run_test(size=SIZE) as pilot:
        screen = await start_the_cluster(app, pilot)
        await wait_for(pilot, lambda: screen.status == "starting", 5, "the status")
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, ClusterWaitScreen), 2, "gone")
        assert screen.cancel.is_set()
        await wait_for(pilot, aws.returned.is_set, 5, "the worker to stop polling")
        await wait_for(
            pilot,
            lambda: any("keeps starting in AWS" in str(n.message) for n in app._notifications),
            5,
            "the notice",
        )
        await pilot.pause(0.2)
        assert not any("accepts connections" in str(n.message) for n in app._notifications)
        assert app.is_running


@sync
async def test_stop_then_start_against_moto_waits_until_done(
    aws_env: MotoServer, tmp_home: Path
) -> None:
    """boto3 over HTTP (moto): `s` stops and the wait ends at "stopped"; `s` starts and the wait
    ends once the cluster and its writer instance are available."""
    from tests.test_aws_lab import client, seed
    from tests.test_tui_aws import geo_profile
    from tunnelman.tui.screens.modals import ConfirmScreen

    seed(aws_env)
    config = tmp_home / ".config" / "tunnelman" / "profiles.toml"
    geo_profile(config)
    rds = client(aws_env, "rds")
    app = make_app(config, initial_profile="geo")
    app.CLUSTER_POLL_INTERVAL = 0.2

    def said(text: str) -> bool:
        return any(text in str(n.message) for n in app._notifications)

    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: "geo" in app.clusters, 30, "cluster status")
        for goal, done in (("stopped", "is stopped"), ("available", "accepts connections")):
            await pilot.press("s")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), 2, "the question")
            await pilot.press("y")
            await wait_for(pilot, lambda: said(done), 30, f"the {goal} notice")  # noqa: B023
            assert not isinstance(app.screen, ClusterWaitScreen)
            assert app.clusters["geo"].status == goal
            found = rds.describe_db_clusters(DBClusterIdentifier="geo-prod")["DBClusters"][0]
            assert found["Status"] == goal
        assert not any(n.severity == "error" for n in app._notifications), [
            str(n.message) for n in app._notifications
        ]


@sync
async def test_quitting_while_waiting_ends_the_wait(fixed_world: Path) -> None:
    aws = SlowAws()
    app = app_with(aws=aws, profile="prod")
    async with app.run_test(size=SIZE) as pilot:
        await start_the_cluster(app, pilot)
        await wait_for(pilot, lambda: "wait prod start writer" in aws.calls, 5, "the wait")
    assert aws.returned.wait(5)  # the worker stopped polling: the app's exit does not hang
    assert not aws.go.is_set()
