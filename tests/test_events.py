"""The tunnel event log: events derived from statuses and clients, the events file, `tunnelman log`.

In-process: the rules that turn a tunnel's successive statuses into events, the file's rotation,
torn lines, and following it. Against the lab (OpenSSH sshd, PostgreSQL, the real agent through
the real CLI): a tunnel the agent holds is opened, serves a brief client (not listed) and one that
stays, loses its bastion's sessions
and comes back; `tunnelman log` lists opened → client-connected → client-disconnected →
reconnecting → back-up, and still does after the agent has stopped; `--follow` prints an event as
it happens.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from tests.cli import TUNNELMAN, RunCli
from tests.lab.postgres import Postgres
from tests.lab.profiles import query
from tests.lab.sshd import Sshd
from tests.test_agent_support import (
    agent_home,  # noqa: F401 - fixture
    ok,
    up_detached,
    wait_for,
    write_bastion_profile,
)
from tunnelman.core.tunnel import TunnelState, TunnelStatus
from tunnelman.core.tunnel import events as ev


def status(state: TunnelState, error: str | None = None, port: int = 5433) -> TunnelStatus:
    return TunnelStatus(
        name="prod",
        state=state,
        local_port=port,
        since=None,
        reconnects=0,
        error=error,
        connections=0,
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


# ----------------------------------------------------------------------------- rules


def test_a_tunnel_s_life_as_events(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "events.jsonl"
    recorder = ev.EventRecorder(path, clock=clock)
    S = TunnelState
    for state, error, dt_ in [
        (S.STARTING, None, 0),
        (S.UP, None, 1),
        (S.RECONNECTING, "no answer from the bastion for 15 s", 60),
        (S.RECONNECTING, "bastion 10.0.0.1:22 refused the connection", 2),
        (S.RECONNECTING, "bastion 10.0.0.1:22 refused the connection", 2),  # same: nothing new
        (S.UP, None, 3.5),
        (S.STOPPED, None, 100),
    ]:
        clock.now += dt_
        recorder.status(status(state, error))
    kinds = [e.kind for e in recorder.recent]
    assert kinds == ["opened", "reconnecting", "retrying", "back-up", "closed"]
    back = recorder.recent[3]
    assert back.message == "back up after 7.5 s on 127.0.0.1:5433"
    assert back.extra["after"] == 7.5
    assert recorder.recent[1].message == "no answer from the bastion for 15 s"
    on_disk = ev.read_events(path)
    assert [e.kind for e in on_disk] == kinds
    assert [e.to_json() for e in on_disk] == [e.to_json() for e in recorder.recent]


def test_a_start_that_fails_is_one_failed_event() -> None:
    recorder = ev.EventRecorder(None)
    recorder.status(status(TunnelState.STARTING))
    recorder.status(status(TunnelState.FAILED, "host key for bastion changed"))
    recorder.status(status(TunnelState.FAILED, "host key for bastion changed"))
    assert [(e.kind, e.message) for e in recorder.recent] == [
        ("failed", "host key for bastion changed")
    ]


def test_clients_are_events_with_the_count_unless_brief() -> None:
    clock = Clock()
    recorder = ev.EventRecorder(None, clock=clock)
    assert recorder.client(status(TunnelState.UP), arrived=True) is None  # not listed yet
    clock.now += 0.5
    assert recorder.client(status(TunnelState.UP), arrived=False) is None  # brief: dropped
    recorder.flush()
    assert recorder.recent == []
    recorder.client(status(TunnelState.UP), arrived=True)
    clock.now += ev.BRIEF
    recorder.flush()
    (event,) = recorder.recent
    assert (event.kind, event.message, event.extra) == (
        "client-connected",
        "a client connected (0 open)",
        {"connections": 0},
    )
    assert event.time == clock.now - ev.BRIEF  # when it connected, not when it was listed
    gone = recorder.client(status(TunnelState.UP), arrived=False)
    assert gone is not None
    assert gone.kind == "client-disconnected"


def test_a_long_connection_is_listed_by_the_timer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ev, "BRIEF", 0.2)
    recorder = ev.EventRecorder(tmp_path / "events.jsonl")
    recorder.client(status(TunnelState.UP), arrived=True)
    path = tmp_path / "events.jsonl"
    wait_for(lambda: bool(ev.read_events(path)), ev.BRIEF + 5, "the connected event in the file")
    assert [e.kind for e in ev.read_events(path)] == ["client-connected"]
    assert [e.kind for e in recorder.recent] == ["client-connected"]


def test_the_file_rotates_and_both_parts_are_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ev, "MAX_BYTES", 2000)
    path = tmp_path / "events.jsonl"
    recorder = ev.EventRecorder(path)
    for n in range(40):
        recorder.status(status(TunnelState.UP if n % 2 else TunnelState.STOPPED, port=n + 1))
    assert path.with_name("events.jsonl.1").exists()
    assert path.stat().st_size <= 2000
    read = ev.read_events(path)
    assert 10 < len(read) <= 40
    assert read == sorted(read, key=lambda e: e.time)
    if os.name == "posix":
        assert path.stat().st_mode & 0o777 == 0o600


def test_torn_and_foreign_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    good = ev.TunnelEvent(1_700_000_000.0, "prod", "opened", "listening on 127.0.0.1:5433")
    path.write_text(
        "not json\n"
        + json.dumps({"name": 5})
        + "\n"
        + json.dumps(good.to_json())
        + '\n{"time": "2026-'
    )
    assert ev.read_events(path) == [good]
    assert ev.read_events(path, "other") == []


def test_following_sees_new_lines_and_a_rotation(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    recorder = ev.EventRecorder(path)
    recorder.status(status(TunnelState.UP))  # before: not followed
    stop = threading.Event()
    seen: list[ev.TunnelEvent] = []

    def follow() -> None:
        for event in ev.tail_events(path, "prod", stop, interval=0.05):
            seen.append(event)

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    time.sleep(0.2)
    recorder.status(status(TunnelState.STOPPED))
    wait_for(lambda: len(seen) == 1, 5, "the appended event")
    os.replace(path, path.with_name("events.jsonl.1"))
    recorder.status(status(TunnelState.UP))
    wait_for(lambda: len(seen) == 2, 5, "the event after the rotation")
    stop.set()
    thread.join(5)
    assert [e.kind for e in seen] == ["closed", "opened"]


def test_backlog_then_tail_from_its_offset_loses_and_repeats_nothing(tmp_path: Path) -> None:
    """What the TUI's log does: read the file, then follow from where that read ended."""
    path = tmp_path / "events.jsonl"
    recorder = ev.EventRecorder(path)
    recorder.status(status(TunnelState.UP))
    with path.open("ab") as fh:
        fh.write(b'{"time": "2026-01-01T00:00:00+00:00", "name": "prod", "event": "cl')  # torn
    events, offset = ev.read_backlog(path)
    assert [e.kind for e in events] == ["opened"]
    assert offset < path.stat().st_size  # the line being written is left to the tail
    with path.open("ab") as fh:
        fh.write(b'osed", "message": "closed"}\n')  # the rest of it, after the backlog was read
    recorder.cluster("prod", "stopped", "cluster db is stopped (was available)")
    stop = threading.Event()
    seen: list[ev.TunnelEvent] = []
    for event in ev.tail_events(path, None, stop, interval=0.01, offset=offset):
        seen.append(event)
        if len(seen) == 2:
            stop.set()
    assert [e.kind for e in seen] == ["closed", "cluster"]
    assert seen[1].extra == {"status": "stopped"}
    assert ev.read_events(path) == [*events, *seen]


# ----------------------------------------------------------------------------- the CLI


def test_no_events_yet_is_said(run_cli: RunCli, tmp_home: Path) -> None:
    result = run_cli("log")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert result.stderr.startswith("No events for any tunnel yet (")
    assert json.loads(ok(run_cli("log", "--json")).stdout) == []


@pytest.mark.usefixtures("agent_home")
@pytest.mark.timeout(120)
def test_the_agent_s_events_outlive_it(
    run_cli: RunCli, make_sshd: Callable[..., Sshd], postgres: Postgres
) -> None:
    bastion = make_sshd()
    write_bastion_profile("lab", bastion, postgres)
    follower = subprocess.Popen(
        [*TUNNELMAN, "log", "lab", "--follow", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        time.sleep(1.0)  # the follower is reading the file's end
        port = up_detached("lab")
        assert query(port, postgres) == 1  # brief: not listed
        with psycopg.connect(postgres.dsn(host="127.0.0.1", port=port)) as held:
            assert held.execute("select 1").fetchone() == (1,)
            time.sleep(ev.BRIEF + 0.5)  # a client that stays: listed
        killed_at = time.monotonic()
        assert bastion.kill_sessions() >= 1

        def kinds() -> list[str]:
            return [e["event"] for e in json.loads(ok(run_cli("log", "lab", "--json")).stdout)]

        wait_for(lambda: "back-up" in kinds(), 30, "back-up in the log")
        print(f"[events] back up in the log {time.monotonic() - killed_at:.2f} s after the kill")
        assert kinds() == [
            "opened",
            "client-connected",
            "client-disconnected",
            "reconnecting",
            "back-up",
        ]
        first = _read_line(follower, 10)
        assert json.loads(first)["event"] == "opened"
    finally:
        follower.terminate()
        follower.wait(10)
    ok(run_cli("agent", "stop"))
    text = ok(run_cli("log", "lab")).stdout.splitlines()
    assert [line.split("  ")[2].split(":")[0] for line in text] == [
        "opened",
        "client-connected",
        "client-disconnected",
        "reconnecting",
        "back-up",
        "closed",
    ]
    assert "lab  reconnecting: " in text[3]
    assert "back up after " in text[4]


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "no line from `tunnelman log --follow`"
    return proc.stdout.readline()


@pytest.mark.usefixtures("agent_home")
def test_openssh_direct_mode_lists_clients_ssh_accepted(
    run_cli: RunCli, make_sshd: Callable[..., Sshd], postgres: Postgres
) -> None:
    """engine = "openssh": ssh accepts the clients itself; the kernel's sockets tell of them."""
    bastion = make_sshd()
    write_bastion_profile("ossh", bastion, postgres, engine="openssh")
    port = up_detached("ossh")

    def kinds() -> list[str]:
        return [e["event"] for e in json.loads(ok(run_cli("log", "ossh", "--json")).stdout)]

    assert query(port, postgres) == 1  # brief: not listed
    with psycopg.connect(postgres.dsn(host="127.0.0.1", port=port)) as held:
        assert held.execute("select 1").fetchone() == (1,)
        time.sleep(ev.BRIEF + 1.5)  # the kernel is looked at once a second
        wait_for(lambda: "client-connected" in kinds(), 10, "client-connected in the log")
    wait_for(lambda: "client-disconnected" in kinds(), 10, "client-disconnected in the log")
    events = json.loads(ok(run_cli("log", "ossh", "--json")).stdout)
    assert [e["event"] for e in events] == ["opened", "client-connected", "client-disconnected"]
    ok(run_cli("down", "ossh"))
