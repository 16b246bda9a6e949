"""Fault tests: detached tunnels held by the agent, against the real lab (OpenSSH sshd, PostGIS,
network namespaces). Each test starts its agent through the real CLI, in its own runtime dir, and
stops it at teardown. Timings are printed (`pytest -s`) as `[timing] …` lines.

Acceptance (issue 6): `up --detach` returns within 5 s of the port being ready, `status --json`
lists it up, psql works through it and the terminal that ran `up` can close; after every bastion
session is killed, or the bastion is away for 5 s, a query through the same port works within 5 s
(and `status` said `reconnecting` meanwhile); `down NAME` / `down --all` close the ports; a host key
changed between reconnects leaves the tunnel failed, with the reason, not retrying, port closed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.cli import RunCli
from tests.conftest import LabProfile
from tests.lab import need
from tests.lab.netns import NetnsPair
from tests.lab.ports import port_open, wait_port_closed
from tests.lab.postgres import Postgres
from tests.lab.profiles import query
from tests.lab.sshd import Sshd
from tests.test_agent_support import (
    Recorder,
    agent_home,  # noqa: F401 - fixture
    agent_log_tail,
    agent_pid,
    agent_processes,
    fd_count,
    ok,
    query_within,
    status_json,
    thread_count,
    up_detached,
    wait_for,
    write_bastion_profile,
)
from tunnelman.agent.client import AgentClient

pytestmark = pytest.mark.usefixtures("agent_home")


def one(name: str) -> dict[str, Any]:
    """NAME's row of `tunnelman status --json`."""
    rows = [t for t in status_json() if t["name"] == name]
    assert len(rows) == 1, rows
    return rows[0]


def wait_state(name: str, state: str, timeout: float) -> dict[str, Any]:
    """Poll `status --json` until NAME is in `state`; its row."""
    found: list[dict[str, Any]] = []

    def check() -> bool:
        row = one(name)
        if row["state"] == state:
            found.append(row)
            return True
        return False

    wait_for(check, timeout, f"{name} to be {state}", step=0.2)
    return found[-1]


# ----------------------------------------------------------------------------- acceptance: up


def test_up_detach_returns_once_the_port_is_ready_and_status_lists_it(
    run_cli: RunCli,
    lab_profile: LabProfile,
) -> None:
    start = time.time()
    result = ok(run_cli("up", "lab", "--detach"))
    returned = time.time()
    port = int(re.search(r"127\.0\.0\.1:(\d+)", result.stdout).group(1))  # type: ignore[union-attr]
    assert "psql" in result.stdout
    row = one("lab")
    assert row["state"] == "up"
    assert row["local_port"] == port
    since = datetime.fromisoformat(str(row["since"])).timestamp()
    print(
        f"[timing] up --detach: {returned - start:.2f} s in all, {returned - since:.2f} s after up"
    )
    assert returned - since < 5
    assert row["error"] is None
    psql = shutil.which("psql")
    if psql is None:
        need("psql not installed (apt-get install postgresql-client)")
    env = dict(os.environ, PGPASSWORD=lab_profile.password)
    out = subprocess.run(
        [
            psql,
            f"host=127.0.0.1 port={port} dbname=geo user={lab_profile.postgres.user}",
            "-Atc",
            "select postgis_lib_version()",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert re.match(r"\d+\.\d+", out.stdout.strip())


def test_the_terminal_that_ran_up_can_close(lab_profile: LabProfile, tmp_path: Path) -> None:
    tmux = shutil.which("tmux")
    if tmux is None:
        need("tmux not installed (apt-get install tmux)")
    sock = str(tmp_path / "tmux.sock")
    out = tmp_path / "up.out"
    shell = (
        f"{sys.executable} -m tunnelman up lab --detach > {out} 2>&1; "
        f"echo exit=$? >> {out}; exec sleep 600"
    )
    subprocess.run(
        [tmux, "-S", sock, "new-session", "-d", "-x", "120", "-y", "30", shell],
        check=True,
        timeout=30,
    )
    try:
        wait_for(lambda: "exit=" in (out.read_text() if out.exists() else ""), 90, "up in tmux")
        text = out.read_text()
        assert "exit=0" in text, text
        port = int(re.search(r"is up: 127\.0\.0\.1:(\d+)", text).group(1))  # type: ignore[union-attr]
        pane = subprocess.run(
            [tmux, "-S", sock, "display", "-p", "#{pane_pid}"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        pane_pid = int(pane.stdout.strip())
    finally:
        # The terminal goes away: its shell gets SIGHUP, as when a window is closed.
        subprocess.run([tmux, "-S", sock, "kill-server"], check=False, timeout=30)
    wait_for(lambda: not os.path.exists(f"/proc/{pane_pid}"), 10, "the terminal's shell to exit")
    pid = agent_pid()
    assert pid is not None
    assert os.getsid(pid) == pid, "the agent leads its own session"
    assert query(port, lab_profile.postgres) == 1
    assert one("lab")["state"] == "up"


# ----------------------------------------------------------------------------- acceptance: faults


@pytest.fixture
def bastion(make_sshd: Callable[..., Sshd], postgres: Postgres, agent_home: Path) -> Sshd:  # noqa: F811
    """A private bastion (these tests kill, stop and re-key it) and profile `lab` through it."""
    server = make_sshd()
    write_bastion_profile("lab", server, postgres)
    return server


def test_killed_sessions_reconnect_on_the_same_port(bastion: Sshd, postgres: Postgres) -> None:
    port = up_detached("lab")
    assert query(port, postgres) == 1
    with Recorder() as events:
        killed_at = time.monotonic()
        assert bastion.kill_sessions() >= 1
        elapsed = query_within(port, postgres, 5)
        print(f"[timing] query through the same port {elapsed:.2f} s after kill_sessions")
        assert elapsed < 5
        wait_for(lambda: "up" in events.states("lab", killed_at), 10, "up again")
        states = events.states("lab", killed_at)
    print(f"[status] states after kill_sessions: {states}")
    assert "reconnecting" in states
    assert states.index("reconnecting") < len(states) - 1 - states[::-1].index("up")
    row = one("lab")
    assert row["state"] == "up"
    assert row["local_port"] == port
    assert int(str(row["reconnects"])) >= 1


def test_bastion_away_for_5_s_then_back(bastion: Sshd, postgres: Postgres) -> None:
    port = up_detached("lab")
    assert query(port, postgres) == 1
    bastion.stop()
    stopped = time.monotonic()
    during = wait_state("lab", "reconnecting", 10)
    print("[status] status --json while the bastion is away:\n" + json.dumps(during, indent=2))
    assert during["local_port"] == port
    assert port_open("127.0.0.1", port), "the local port stays bound while reconnecting"
    time.sleep(max(0.0, 4 - (time.monotonic() - stopped)))
    # A client arriving while the bastion is away waits for the tunnel instead of being refused.
    early: list[object] = []
    waiting = threading.Thread(target=lambda: early.append(_query_or_error(port, postgres)))
    waiting.start()
    time.sleep(max(0.0, 5 - (time.monotonic() - stopped)))
    bastion.start()
    back = time.monotonic()
    elapsed = query_within(port, postgres, 5)
    print(f"[timing] query through the same port {elapsed:.2f} s after the bastion returned")
    assert elapsed < 5
    waiting.join(timeout=30)
    print(
        f"[timing] the client that came during the outage got its answer {time.monotonic() - back:.2f} s after the return at the latest"
    )
    assert early == [1], early
    assert one("lab")["state"] == "up"


def _query_or_error(port: int, pg: Postgres) -> object:
    try:
        return query(port, pg, timeout=20)
    except psycopg.Error as exc:
        return exc


def test_login_refused_on_reconnect_fails_for_good(bastion: Sshd, postgres: Postgres) -> None:
    port = up_detached("lab")
    assert query(port, postgres) == 1
    bastion.clear_authorized()
    bastion.kill_sessions()
    row = wait_state("lab", "failed", 30)
    print(f"[status] after the bastion stopped accepting the key: {json.dumps(row)}")
    assert "refused" in str(row["error"])
    wait_port_closed("127.0.0.1", port, timeout=5)
    attempts = bastion.log_text().count("Connection from")
    time.sleep(5)
    assert bastion.log_text().count("Connection from") == attempts, "no retry loop"
    assert one("lab")["state"] == "failed"


def test_host_key_changed_between_reconnects_fails_for_good(
    bastion: Sshd, postgres: Postgres
) -> None:
    port = up_detached("lab")
    assert query(port, postgres) == 1
    new = bastion.rotate_host_key()
    bastion.kill_sessions()
    row = wait_state("lab", "failed", 30)
    print(f"[status] after the host key changed: {json.dumps(row)}")
    assert "CHANGED" in str(row["error"])
    assert new in str(row["error"])
    wait_port_closed("127.0.0.1", port, timeout=5)
    # No retry loop: nobody connects to the bastion any more, the state stays failed.
    logins = bastion.log_text().count("Connection from")
    time.sleep(5)
    assert bastion.log_text().count("Connection from") == logins
    again = one("lab")
    assert again["state"] == "failed"
    assert again["reconnects"] == row["reconnects"]
    assert not port_open("127.0.0.1", port)


def test_link_cut_and_restored_in_a_network_namespace(
    netns_pair: NetnsPair,
    make_sshd: Callable[..., Sshd],
    make_postgres: Callable[..., Postgres],
) -> None:
    net = netns_pair
    pg = make_postgres(host=net.db_addr, port=5432, netns=net.db.name)
    server = make_sshd(host=net.bastion_addr, port=22, netns=net.bastion.name)
    # keepalive 2 s: a silent link is noticed after ~3 keepalives (TCP_USER_TIMEOUT).
    write_bastion_profile("vpc", server, pg, keepalive=2, connect_timeout=3)
    port = up_detached("vpc")
    assert query(port, pg, "select inet_server_addr()::text") == f"{net.db_addr}/32"
    with Recorder() as events:
        cut = time.monotonic()
        net.link_down()
        wait_for(lambda: "reconnecting" in events.states("vpc", cut), 40, "the cut to be noticed")
        noticed = time.monotonic() - cut
        print(f"[timing] cut link noticed after {noticed:.1f} s (keepalive 2 s)")
        during = one("vpc")
        assert during["state"] == "reconnecting"
        assert port_open("127.0.0.1", port)
        time.sleep(2)
        net.link_up()
        elapsed = query_within(port, pg, 10)
        print(f"[timing] query through the same port {elapsed:.2f} s after the link returned")
        assert elapsed < 10
    assert one("vpc")["state"] == "up"


@pytest.mark.slow
def test_a_silent_link_is_noticed_within_about_15_s_by_default(
    netns_pair: NetnsPair,
    make_sshd: Callable[..., Sshd],
    make_postgres: Callable[..., Postgres],
) -> None:
    net = netns_pair
    pg = make_postgres(host=net.db_addr, port=5432, netns=net.db.name)
    server = make_sshd(host=net.bastion_addr, port=22, netns=net.bastion.name)
    write_bastion_profile("vpc", server, pg)  # default keepalive and connect_timeout
    port = up_detached("vpc")
    assert query(port, pg) == 1
    with Recorder() as events:
        cut = time.monotonic()
        net.link_down()
        try:
            deadline = cut + 17  # probes every 5 s, 10 s without an answer, plus slack
            while "reconnecting" not in events.states("vpc", cut):
                assert time.monotonic() < deadline, "not noticed within 17 s"
                time.sleep(0.1)
            print(f"[timing] silent link noticed after {time.monotonic() - cut:.1f} s")
        finally:
            net.link_up()


def test_down_closes_the_port_and_down_all_closes_every_port(
    run_cli: RunCli, lab_profile: LabProfile
) -> None:
    lab_profile.write(local_port=None)
    write_bastion_profile("other", lab_profile.sshd, lab_profile.postgres)
    first = up_detached("lab")
    second = up_detached("other")
    assert query(first, lab_profile.postgres) == query(second, lab_profile.postgres) == 1
    down = ok(run_cli("down", "lab"))
    assert f"127.0.0.1:{first}" in down.stdout
    assert not port_open("127.0.0.1", first)
    assert [t["name"] for t in status_json()] == ["other"]
    missing = run_cli("down", "lab")
    assert missing.returncode == 1
    assert "no tunnel 'lab' is held by the agent" in missing.stderr
    assert "other" in missing.stderr
    up_detached("lab")
    ports = [int(str(t["local_port"])) for t in status_json()]
    assert len(ports) == 2
    result = ok(run_cli("down", "--all"))
    assert result.stdout.count("Closed") == 2
    for p in ports:
        assert not port_open("127.0.0.1", p)
    assert status_json() == []
    assert "No tunnels" in ok(run_cli("status")).stdout


# ----------------------------------------------------------------------------- load and leaks


@pytest.mark.slow
def test_50_concurrent_sessions_through_one_tunnel(lab_profile: LabProfile) -> None:
    pg = lab_profile.postgres
    port = up_detached("lab")
    barrier = threading.Barrier(50, timeout=60)

    def session(n: int) -> int:
        with psycopg.connect(
            pg.dsn(host="127.0.0.1", port=port, connect_timeout=30), autocommit=True
        ) as conn:
            barrier.wait()  # all 50 are connected at once here
            row = conn.execute("select %s::int + count(*)::int from pg_stat_activity", (n,))
            value = row.fetchone()
            barrier.wait()
        assert value is not None
        return int(value[0]) - n

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=50) as pool:
        seen = list(pool.map(session, range(50)))
    print(f"[timing] 50 concurrent sessions in {time.monotonic() - started:.1f} s")
    assert min(seen) >= 50, "each session saw the other 49 connected"
    assert one("lab")["state"] == "up"


@pytest.mark.slow
def test_ten_tunnels_at_once_from_concurrent_commands_share_one_agent(
    lab_profile: LabProfile,
) -> None:
    names = [f"lab{i}" for i in range(10)]
    for name in names:
        write_bastion_profile(name, lab_profile.sshd, lab_profile.postgres)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tunnelman", "up", name, "--detach"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        for name in names
    ]
    for proc in procs:
        _stdout, stderr = proc.communicate(timeout=180)
        assert proc.returncode == 0, stderr + agent_log_tail()
    assert len(agent_processes()) == 1, "ten concurrent starts gave one agent"
    rows = {t["name"]: t for t in status_json()}
    assert sorted(rows) == names
    ports = {int(str(rows[n]["local_port"])) for n in names}
    assert len(ports) == 10
    with ThreadPoolExecutor(max_workers=10) as pool:
        assert list(pool.map(lambda p: query(p, lab_profile.postgres), ports)) == [1] * 10


@pytest.mark.slow
def test_no_fds_or_threads_leak_after_1000_connections(lab_profile: LabProfile) -> None:
    pg = lab_profile.postgres
    port = up_detached("lab")
    pid = agent_pid()
    assert pid is not None

    def connect(_n: int) -> None:
        assert query(port, pg) == 1

    for n in range(10):  # warm up: lazy imports, first-use caches
        connect(n)

    def settled() -> tuple[int, int] | None:
        counts = (fd_count(pid), thread_count(pid))
        time.sleep(0.5)
        return counts if counts == (fd_count(pid), thread_count(pid)) else None

    before = wait_for(settled, 20, "the agent to settle")
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(connect, range(1000)))
    took = time.monotonic() - started
    status = AgentClient().find("lab")
    assert status is not None
    after_fds = wait_for(lambda: fd_count(pid) <= before[0] and fd_count(pid), 20, "fds to return")
    after_threads = wait_for(
        lambda: thread_count(pid) <= before[1] and thread_count(pid), 20, "threads to end"
    )
    print(
        f"[leaks] 1000 connections in {took:.1f} s; agent pid {pid}: fds {before[0]} -> "
        f"{after_fds}, threads {before[1]} -> {after_threads}"
    )
    assert status.state == "up"


# ----------------------------------------------------------------------------- the agent dies


def test_agent_killed_with_9_is_reported_and_replaced(
    run_cli: RunCli, lab_profile: LabProfile
) -> None:
    port = up_detached("lab")
    old = agent_pid()
    assert old is not None
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: not os.path.exists(f"/proc/{old}") or _zombie(old), 10, "the agent to die")
    # The kernel closes a killed process's sockets once its last thread is gone (soon after the
    # leader turns zombie).
    wait_port_closed("127.0.0.1", port, timeout=10)
    status = ok(run_cli("status"))
    assert "the agent had stopped unexpectedly; it held: lab" in status.stdout
    result = ok(run_cli("up", "lab", "--detach"))
    assert "the agent had stopped; started a new one" in result.stderr
    assert "lab" in result.stderr
    new = agent_pid()
    assert new is not None
    assert new != old
    port = int(re.search(r"127\.0\.0\.1:(\d+)", result.stdout).group(1))  # type: ignore[union-attr]
    assert query(port, lab_profile.postgres) == 1
    assert agent_processes() == [new]


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except OSError:
        return True


def test_an_error_met_by_the_agent_is_one_line(run_cli: RunCli, agent_home: Path) -> None:  # noqa: F811
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    free = port.getsockname()[1]
    port.close()
    from tests.lab.toml_profile import write_profile

    write_profile(
        os.environ["TUNNELMAN_CONFIG"],
        "nowhere",
        bastion=f"root@127.0.0.1:{free}",
        endpoint="127.0.0.1:5432",
        database="geo",
        user="postgres",
        identity_file=str(agent_home / ".ssh" / "missing"),
    )
    result = run_cli("up", "nowhere", "--detach")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("tunnelman: error: ")
