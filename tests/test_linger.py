"""Linger: a one-shot (`psql`/`exec`) with `--linger` or the profile's `linger` leaves its tunnel
with the agent, which closes it once no client has used it for that long; `status` shows the
time left, `down` ends it early, `up --detach` keeps it for good.

Real processes throughout: the CLI, the agent it starts, the lab sshd and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path

import psycopg
import pytest

from tests.cli import RunCli
from tests.conftest import LabProfile
from tests.test_agent_support import (
    agent_home,  # noqa: F401 - fixture
    agent_log_tail,
    ok,
    status_json,
    up_detached,
    wait_for,
)
from tunnelman.agent import protocol
from tunnelman.agent.client import AgentClient
from tunnelman.core import profiles
from tunnelman.core.errors import AgentError

pytestmark = pytest.mark.usefixtures("agent_home")


def logins(lab_profile: LabProfile) -> int:
    return lab_profile.sshd.log_text().count("Accepted publickey")


def with_pgpass(lab_profile: LabProfile) -> None:
    lab_profile.write(password="none")
    pgpass = Path(os.environ["HOME"]) / ".pgpass"
    pgpass.write_text(f"*:*:*:{lab_profile.postgres.user}:{lab_profile.password}\n")
    pgpass.chmod(0o600)


def test_a_lingering_one_shot_stays_then_closes(run_cli: RunCli, lab_profile: LabProfile) -> None:
    with_pgpass(lab_profile)
    done = ok(run_cli("psql", "--linger", "3s", "lab", "-Atc", "select 40 + 2"))
    assert done.stdout.strip() == "42"
    held = status_json()
    assert [(t["name"], t["state"]) for t in held] == [("lab", "up")], agent_log_tail()
    until = dt.datetime.fromisoformat(held[0]["linger_until"])
    left = (until - dt.datetime.now(dt.UTC)).total_seconds()
    assert 0 < left <= 3.5
    table = ok(run_cli("status")).stdout
    assert " s left)" in table, table
    # Nobody connects: the agent closes it once the linger is over.
    wait_for(lambda: AgentClient().status() == [] or None, 15, "the lingering tunnel to close")
    assert "linger of 3 s over" in agent_log_tail(200)


def test_the_second_one_shot_is_warm_and_refreshes(
    run_cli: RunCli, lab_profile: LabProfile
) -> None:
    with_pgpass(lab_profile)
    lab_profile.write(linger="10m")
    ok(run_cli("exec", "lab", "--", "psql", "-Atc", "select 1"))
    first = status_json()[0]["linger_until"]
    assert first is not None
    before = logins(lab_profile)
    port = AgentClient().find("lab")
    assert port is not None
    assert port.local_port is not None
    time.sleep(1.1)
    second = ok(run_cli("psql", "lab", "-Atc", "select 2"))  # the warm path: no new SSH login
    assert second.stdout.strip() == "2"
    assert logins(lab_profile) == before
    again = status_json()[0]
    assert again["local_port"] == port.local_port
    # psql's connection pushed the end forward.
    assert dt.datetime.fromisoformat(again["linger_until"]) > dt.datetime.fromisoformat(first)
    assert "up (10 min left)" in ok(run_cli("status")).stdout
    closed = ok(run_cli("down", "lab"))
    assert "Closed 'lab'" in closed.stdout
    assert AgentClient().status() == []


def test_an_open_connection_keeps_it(run_cli: RunCli, lab_profile: LabProfile) -> None:
    with_pgpass(lab_profile)
    ok(run_cli("exec", "--linger", "2s", "lab", "--", "psql", "-Atc", "select 1"))
    status = AgentClient().find("lab")
    assert status is not None
    assert status.local_port is not None
    pg = lab_profile.postgres
    with psycopg.connect(
        host="127.0.0.1",
        port=status.local_port,
        dbname=pg.database,
        user=pg.user,
        password=pg.password,
        connect_timeout=10,
    ) as conn:
        time.sleep(4)  # twice the linger, with a client connected
        assert conn.execute("select 3").fetchone() == (3,)
        assert [t.name for t in AgentClient().status()] == ["lab"]
    wait_for(lambda: AgentClient().status() == [] or None, 15, "the tunnel to close after use")


def test_up_detach_keeps_a_lingering_tunnel_for_good(
    run_cli: RunCli, lab_profile: LabProfile
) -> None:
    with_pgpass(lab_profile)
    ok(run_cli("psql", "--linger", "2s", "lab", "-Atc", "select 1"))
    assert status_json()[0]["linger_until"] is not None
    up_detached("lab")
    assert status_json()[0]["linger_until"] is None
    time.sleep(3.5)
    assert [t["name"] for t in status_json()] == ["lab"]
    assert "left)" not in ok(run_cli("status")).stdout


def test_a_one_shot_only_borrows_a_tunnel_held_for_good(
    run_cli: RunCli, lab_profile: LabProfile
) -> None:
    with_pgpass(lab_profile)
    up_detached("lab")
    ok(run_cli("psql", "--linger", "2s", "lab", "-Atc", "select 1"))
    time.sleep(3)
    assert [(t["name"], t["linger_until"]) for t in status_json()] == [("lab", None)]


def test_default_is_off(run_cli: RunCli, lab_profile: LabProfile) -> None:
    with_pgpass(lab_profile)
    ok(run_cli("psql", "lab", "-Atc", "select 1"))
    assert AgentClient().status() == []
    assert AgentClient().ping() is None, "no agent was started for a plain one-shot"


def test_linger_zero_on_the_command_line_turns_the_profiles_off(
    run_cli: RunCli, lab_profile: LabProfile
) -> None:
    with_pgpass(lab_profile)
    lab_profile.write(linger="10m")
    ok(run_cli("psql", "--linger", "0", "lab", "-Atc", "select 1"))
    assert AgentClient().status() == []


def test_bad_durations_are_one_clear_line(run_cli: RunCli, lab_profile: LabProfile) -> None:
    with_pgpass(lab_profile)
    bad = run_cli("psql", "--linger", "ten minutes", "lab")
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1, bad.stderr
    assert "--linger" in bad.stderr
    assert "Traceback" not in bad.stderr
    lab_profile.write(linger="2 days")
    bad = run_cli("psql", "lab")
    assert bad.returncode != 0
    assert "linger" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_durations() -> None:
    assert profiles.parse_duration("10m") == 600
    assert profiles.parse_duration("90s") == 90
    assert profiles.parse_duration("1h30m") == 5400
    assert profiles.parse_duration("45") == 45
    assert profiles.parse_duration("off") == 0
    for bad in ("", "m", "10 minutes", "-5", "2d", "25h"):
        with pytest.raises(ValueError, match=r"duration|more than a day"):
            profiles.parse_duration(bad)


def test_the_protocol_addition(lab_profile: LabProfile) -> None:
    client = AgentClient()
    info = client.ensure_running()
    assert "linger" in info.features
    with pytest.raises(AgentError, match="bad linger"):
        client._request("up", name="lab", config=str(lab_profile.config), port=0, linger=-1)
    # An older client's `up` (no linger) holds the tunnel until `down`, as before.
    status = client.up("lab", lab_profile.config, 0)
    assert status.linger_until is None
    assert protocol.status_to_wire(status)["linger_until"] is None


def test_older_peers_both_ways() -> None:
    from tunnelman.agent.client import AgentInfo

    # An older agent: no "features" in ping (the client then never sends "linger"), no
    # "linger_until" in its tunnels.
    assert AgentInfo.from_wire({"pid": 1, "protocol": 1}).features == ()
    old = protocol.status_from_wire(
        {"name": "lab", "state": "up", "local_port": 5433, "since": None, "reconnects": 0}
    )
    assert old.linger_until is None
    assert old.to_json()["linger_until"] is None
    with pytest.raises(protocol.ProtocolError, match="linger_until"):
        protocol.status_from_wire({"name": "lab", "state": "up", "linger_until": "soon"})
