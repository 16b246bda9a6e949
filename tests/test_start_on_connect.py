"""Start on connect (issue 14, item 2): `psql`/`up`/… and the TUI find the profile's cluster
stopped, start it (after asking, or with `--start-cluster`), wait until its writer instance is
available, then connect through the lab bastion to the lab PostgreSQL.

The cluster lives in the moto server (over HTTP); its endpoint in the profile is the lab
database, so "connect" is real. moto starts a cluster in one step and never shows a writer that
lags behind its cluster; that sequence (cluster available, writer still starting) comes from
botocore's Stubber with the real API's shapes, because nothing here can produce it.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from botocore.stub import Stubber

from tests.cli import run_cli, run_on_pty
from tests.conftest import LabProfile
from tests.lab.moto_server import REGION, MotoServer
from tests.lab.profiles import query
from tests.lab.stubbed import Stubs, stubs_fixture
from tests.test_aws_lab import cli_env, client, load_json
from tests.tui_support import main_text, sync, wait_for, wait_for_screen
from tunnelman.cli.main import main
from tunnelman.core import aws
from tunnelman.core.errors import AWSError
from tunnelman.core.profiles import Profile
from tunnelman.tui.app import make_app
from tunnelman.tui.hosts import InProcessHost
from tunnelman.tui.screens.modals import ConfirmScreen

CLUSTER = "geo-prod"
WRITER = "geo-prod-1"
FAST = {aws.POLL_INTERVAL_ENV: "0.05"}


def _pgpass(home: Path, lab: LabProfile) -> None:
    # password = "none": libpq reads the person's own ~/.pgpass (no keyring needed here)
    pg = lab.postgres
    path = home / ".pgpass"
    path.write_text(f"127.0.0.1:*:*:{pg.user}:{pg.password}\n")
    path.chmod(0o600)


def _status(moto: MotoServer) -> str:
    found = client(moto, "rds").describe_db_clusters(DBClusterIdentifier=CLUSTER)["DBClusters"]
    return str(found[0]["Status"])


@pytest.fixture
def stopped(aws_env: MotoServer, lab_profile: LabProfile, tmp_home: Path) -> LabProfile:
    """A stopped Aurora cluster with one writer in moto; profile `lab` names it (its endpoint
    stays the lab database, behind the lab bastion)."""
    rds = client(aws_env, "rds")
    rds.create_db_cluster(
        DBClusterIdentifier=CLUSTER,
        Engine="aurora-postgresql",
        MasterUsername="geoadmin",
        MasterUserPassword="not-used-here",
    )
    rds.create_db_instance(
        DBInstanceIdentifier=WRITER,
        DBClusterIdentifier=CLUSTER,
        Engine="aurora-postgresql",
        DBInstanceClass="db.serverless",
    )
    rds.stop_db_cluster(DBClusterIdentifier=CLUSTER)
    assert _status(aws_env) == "stopped"
    lab_profile.write(cluster=CLUSTER, region=REGION, password="none")
    _pgpass(tmp_home, lab_profile)
    aws.clear_cache()
    return lab_profile


def _env(moto: MotoServer) -> dict[str, str]:
    return {**cli_env(moto), **FAST}


# ----------------------------------------------------------------------------- the CLI, moto


def test_psql_with_start_cluster_starts_waits_and_runs(
    stopped: LabProfile, aws_env: MotoServer
) -> None:
    res = run_cli(
        "psql", "lab", "--start-cluster", "-XAt", "-c", "select 1", env=_env(aws_env)
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "1"
    assert (
        f"tunnelman: Starting cluster '{CLUSTER}' in {REGION}; waiting until its writer "
        "instance is available"
    ) in res.stderr
    assert f"tunnelman: cluster '{CLUSTER}' is available (" in res.stderr
    assert _status(aws_env) == "available"


def test_no_terminal_and_no_flag_refuses_and_starts_nothing(
    stopped: LabProfile, aws_env: MotoServer
) -> None:
    res = run_cli("psql", "lab", "-XAt", "-c", "select 1", env=_env(aws_env))
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("tunnelman: error:")]
    assert errors == [
        f"tunnelman: error: cluster '{CLUSTER}' is stopped and there is no terminal to ask: "
        "pass --start-cluster to start it and connect "
        "(or run `tunnelman cluster start lab` first)"
    ]
    assert res.stdout == ""
    assert _status(aws_env) == "stopped"


def test_up_detach_refuses_too_and_a_profile_without_cluster_is_unaffected(
    stopped: LabProfile, aws_env: MotoServer
) -> None:
    res = run_cli("up", "lab", "--detach", env=_env(aws_env))
    assert res.returncode != 0
    assert "pass --start-cluster" in res.stderr
    assert _status(aws_env) == "stopped"
    stopped.write(cluster=None, region=None)
    ok = run_cli("psql", "lab", "-XAt", "-c", "select 2", env=_env(aws_env))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "2"
    assert "cluster" not in ok.stderr


def test_db_commands_start_the_cluster_as_psql_does(
    stopped: LabProfile, aws_env: MotoServer
) -> None:
    no = run_cli("db", "create-user", "lab", "waker", "--password-stdin", input="waker-pw-123\n",
                 env=_env(aws_env))  # fmt: skip
    assert no.returncode != 0
    assert "is stopped and there is no terminal to ask: pass --start-cluster" in no.stderr
    assert _status(aws_env) == "stopped"
    res = run_cli("db", "create-user", "lab", "waker", "--password-stdin", "--start-cluster",
                  input="waker-pw-123\n", env=_env(aws_env))  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert f"tunnelman: Starting cluster '{CLUSTER}' in {REGION}" in res.stderr
    assert _status(aws_env) == "available"
    with psycopg.connect(stopped.postgres.dsn()) as conn:
        found = conn.execute("select rolcanlogin from pg_roles where rolname = 'waker'").fetchone()
    assert found == (True,)


def test_env_with_start_cluster_starts_it(stopped: LabProfile, aws_env: MotoServer) -> None:
    res = run_cli("env", "lab", "--port", "5999", "--start-cluster", env=_env(aws_env))
    assert res.returncode == 0, res.stderr
    assert "PGPORT" in res.stdout
    assert f"cluster '{CLUSTER}' is available" in res.stderr
    assert _status(aws_env) == "available"


def test_a_terminal_is_asked(stopped: LabProfile, aws_env: MotoServer) -> None:
    # a pty of 0 rows would make psql start its pager
    args = ["psql", "lab", "-XAt", "-P", "pager=off", "-c", "select 3"]
    code, output = run_on_pty(args, _env(aws_env), "n")
    assert f"Cluster '{CLUSTER}' is stopped. Start it now? [y/N]" in output
    assert code == 1
    assert f"cluster '{CLUSTER}' is stopped; not starting it" in output
    assert _status(aws_env) == "stopped"
    code, output = run_on_pty(args, _env(aws_env), "y")
    assert code == 0, output
    assert output.rstrip().endswith("3")
    assert _status(aws_env) == "available"


# ----------------------------------------------------------------------------- Stubber


stubs = stubs_fixture()


def _cluster(status: str) -> dict[str, Any]:
    data = load_json("describe_db_clusters_v2_custom.json")
    data["DBClusters"][0]["Status"] = status
    return dict(data)


def _writer(status: str) -> dict[str, Any]:
    data = load_json("describe_db_instances_v2_members.json")
    item = next(i for i in data["DBInstances"] if i["DBInstanceIdentifier"] == WRITER)
    item["DBInstanceStatus"] = status
    return {"DBInstances": [item]}


def _start_sequence(rds: Stubber, writer: list[str]) -> None:
    """stopped → start → starting → available while the writer goes through `writer`."""
    ident = {"DBClusterIdentifier": CLUSTER}
    rds.add_response("describe_db_clusters", _cluster("stopped"), ident)
    rds.add_response("start_db_cluster", {"DBCluster": _cluster("starting")["DBClusters"][0]})
    rds.add_response("describe_db_clusters", _cluster("starting"), ident)
    for status in writer:
        rds.add_response("describe_db_clusters", _cluster("available"), ident)
        rds.add_response("describe_db_instances", _writer(status), {"DBInstanceIdentifier": WRITER})


def test_waits_for_the_writer_instance_not_just_the_cluster(stubs: Stubs) -> None:
    _start_sequence(stubs("rds"), ["starting", "starting", "available"])
    profile = Profile(name="geo", cluster=CLUSTER, region=REGION)
    found = aws.wake_needed(profile)
    assert found is not None
    db, need = found
    assert (db.status, need) == ("stopped", "start")
    seen: list[str] = []
    final = aws.wake(profile, db, need, on_status=lambda s, _t: seen.append(s), interval=0.01)
    assert final.status == "available"
    assert seen == ["starting", f"writer {WRITER} starting", "available"]
    stubs.verify()  # every answer used: the writer was asked until it was available


def test_the_overall_timeout_names_the_writer(stubs: Stubs) -> None:
    _start_sequence(stubs("rds"), ["starting"] * 60)
    profile = Profile(name="geo", cluster=CLUSTER, region=REGION)
    found = aws.wake_needed(profile)
    assert found is not None
    with pytest.raises(
        AWSError,
        match=rf"writer instance '{WRITER}' of cluster '{CLUSTER}' is still starting after "
        r"\d+ s; the start continues in AWS",
    ):
        aws.wake(profile, *found, timeout=0.1, interval=0.01)


def test_starting_already_is_waited_for_without_asking(stubs: Stubs) -> None:
    rds = stubs("rds")
    ident = {"DBClusterIdentifier": CLUSTER}
    rds.add_response("describe_db_clusters", _cluster("starting"), ident)
    rds.add_response("describe_db_clusters", _cluster("available"), ident)
    rds.add_response(
        "describe_db_instances", _writer("available"), {"DBInstanceIdentifier": WRITER}
    )
    profile = Profile(name="geo", cluster=CLUSTER, region=REGION)
    found = aws.wake_needed(profile)
    assert found is not None
    assert found[1] == "wait"
    assert aws.wake(profile, *found, interval=0.01).status == "available"
    stubs.verify()  # no start_db_cluster was sent


def test_psql_start_cluster_waits_for_the_writer_then_runs(
    stubs: Stubs,
    lab_profile: LabProfile,
    tmp_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    lab_profile.write(cluster=CLUSTER, region=REGION, password="none")
    _pgpass(tmp_home, lab_profile)
    monkeypatch.setenv(aws.POLL_INTERVAL_ENV, "0.01")
    _start_sequence(stubs("rds"), ["starting", "available"])
    with pytest.raises(SystemExit) as exited:
        main(["psql", "lab", "--start-cluster", "-XAt", "-c", "select 1"])
    out, err = capfd.readouterr()
    assert exited.value.code == 0, err
    assert out.strip() == "1"
    assert f"  writer {WRITER} starting… (" in err
    assert err.index("writer") < err.index(f"cluster '{CLUSTER}' is available")
    stubs.verify()


def test_ctrl_c_while_waiting_exits_130(
    stubs: Stubs,
    lab_profile: LabProfile,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    lab_profile.write(cluster=CLUSTER, region=REGION, password="none")
    rds = stubs("rds")
    ident = {"DBClusterIdentifier": CLUSTER}
    rds.add_response("describe_db_clusters", _cluster("stopped"), ident)
    rds.add_response("start_db_cluster", {"DBCluster": _cluster("starting")["DBClusters"][0]})
    rds.add_response("describe_db_clusters", _cluster("starting"), ident)

    def interrupted(_seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(time, "sleep", interrupted)  # Ctrl-C in the first pause between polls
    with pytest.raises(SystemExit) as exited:
        main(["up", "lab", "--start-cluster"])
    _out, err = capfd.readouterr()
    assert exited.value.code == 130
    assert (
        f"tunnelman: stopped waiting; cluster '{CLUSTER}' keeps starting in AWS: "
        "check with `tunnelman cluster status lab`"
    ) in err
    assert "Traceback" not in err


# ----------------------------------------------------------------------------- the TUI, moto

SIZE = (160, 45)


@sync
async def test_tui_decline_starts_nothing(stopped: LabProfile, aws_env: MotoServer) -> None:
    app = make_app(stopped.config, initial_profile="lab", host=InProcessHost())
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("enter")
        await wait_for_screen(pilot, app, ConfirmScreen, "#no", 20, "the start-cluster question")
        assert "is stopped. Start it now?" in str(app.screen.query_one(".dialog-body").render())
        await pilot.click("#no")
        await wait_for(pilot, lambda: "lab" not in app.connecting, 10, "the attempt to end")
        assert app.state_of("lab")[0] == "stopped"
        assert "lab" not in app.last_errors
    assert _status(aws_env) == "stopped"


@sync
async def test_tui_accept_starts_the_cluster_and_opens_the_tunnel(
    stopped: LabProfile, aws_env: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(aws.POLL_INTERVAL_ENV, "0.05")
    app = make_app(stopped.config, initial_profile="lab", host=InProcessHost())
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("enter")
        await wait_for_screen(pilot, app, ConfirmScreen, "#yes", 20, "the start-cluster question")
        await pilot.click("#yes")
        await wait_for(pilot, lambda: app.state_of("lab")[0] == "up", 30, "the tunnel")
        port = app.state_of("lab")[1]
        assert port is not None
        assert f"127.0.0.1:{port}" in main_text(app, "#tunnel-info")
        await wait_for(
            pilot,
            lambda: (
                app.clusters.get("lab") is not None and app.clusters["lab"].status == "available"
            ),
            10,
            "the cluster box to say available",
        )
        assert await asyncio.to_thread(query, port, stopped.postgres) == 1
    assert _status(aws_env) == "available"


@pytest.mark.lab  # the whole app under Pilot
@sync
async def test_tui_wait_keeps_the_ui_responsive_and_enter_cancels_it(
    stubs: Stubs, tmp_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(aws.POLL_INTERVAL_ENV, "0.05")
    rds = stubs("rds")
    ident = {"DBClusterIdentifier": CLUSTER}
    rds.add_response("describe_db_clusters", _cluster("stopped"), ident)
    rds.add_response("start_db_cluster", {"DBCluster": _cluster("starting")["DBClusters"][0]})
    for _ in range(600):  # 30 s of "starting" at most: the test cancels long before
        rds.add_response("describe_db_clusters", _cluster("starting"), ident)
    config = Path(os.environ["TUNNELMAN_CONFIG"])
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(
        '[profiles.geo]\nbastion = "ec2-user@192.0.2.1"\n'
        f'endpoint = "geo.example.com"\ncluster = "{CLUSTER}"\nregion = "{REGION}"\n'
    )
    app = make_app(config, initial_profile="geo", host=InProcessHost())
    app.CLUSTER_FETCH_DELAY = 3600  # the stubbed answers are for the start, in order
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("enter")
        await wait_for_screen(pilot, app, ConfirmScreen, "#yes", 20, "the start-cluster question")
        await pilot.click("#yes")
        await wait_for(
            pilot,
            lambda: (
                app.clusters.get("geo") is not None and app.clusters["geo"].status == "starting"
            ),
            10,
            "the cluster box to say starting",
        )
        assert app.state_of("geo")[0] == "connecting"
        await pilot.press("question_mark")  # the UI answers while the worker waits
        await wait_for(pilot, lambda: type(app.screen).__name__ == "HelpScreen", 5, "help")
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.main is app.screen, 5, "the main screen")
        await pilot.press("enter")  # cancels the attempt, and with it the wait
        await wait_for(pilot, lambda: "geo" not in app.connecting, 5, "the cancel")
        assert app.state_of("geo")[0] == "stopped"
        assert "geo" not in app.last_errors
        assert app.host.statuses() == {}
