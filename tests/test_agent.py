"""The agent as a process: starting on demand, one per user, private files, the protocol, host keys
asked on the user's terminal, idle exit, stale sockets, the foreground `agent run`, and the
commands around it. Real processes throughout (the agent is started by the real CLI or client,
the bastion is the lab's OpenSSH); fault injection lives in test_faults.py.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.cli import RunCli
from tests.conftest import LabProfile
from tests.lab import need
from tests.lab.keys import make_key
from tests.lab.ports import port_open
from tests.lab.profiles import query
from tests.test_agent_support import (
    Recorder,
    agent_files,
    agent_home,  # noqa: F401 - fixture
    agent_pid,
    agent_processes,
    ok,
    status_json,
    up_detached,
    wait_for,
)
from tunnelman.agent import protocol
from tunnelman.agent.client import AgentClient
from tunnelman.core.errors import AgentError

pytestmark = pytest.mark.usefixtures("agent_home")


def raw_request(message: dict[str, Any] | bytes) -> dict[str, Any] | None:
    """One request on a fresh connection to the agent's Unix socket; its reply (None: closed)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(agent_files().socket))
    lines = protocol.LineSocket(sock)
    try:
        if isinstance(message, bytes):
            sock.sendall(message)
        else:
            lines.send(message)
        return lines.recv()
    finally:
        lines.close()


# ----------------------------------------------------------------------------- no agent


def test_status_and_down_without_an_agent_start_none(run_cli: RunCli) -> None:
    assert ok(run_cli("status")).stdout == "No tunnels (the agent is not running).\n"
    assert json.loads(ok(run_cli("status", "--json")).stdout) == []
    assert ok(run_cli("down", "--all")).stdout == "No tunnels to close.\n"
    down = run_cli("down", "lab")
    assert down.returncode == 1
    assert down.stderr.startswith("tunnelman: error: no tunnel 'lab' is held: the agent is not")
    assert "The agent is not running" in ok(run_cli("agent", "status")).stdout
    assert json.loads(ok(run_cli("agent", "status", "--json")).stdout)["running"] is False
    assert ok(run_cli("agent", "stop")).stdout == "The agent is not running.\n"
    usage = run_cli("down")
    assert usage.returncode == 2
    assert "give a profile NAME or --all" in usage.stderr
    assert agent_processes() == []
    assert not agent_files().socket.exists()


def test_find_is_cheap_and_light() -> None:
    script = (
        "import sys, time\n"
        "t = time.perf_counter()\n"
        "from tunnelman.agent.client import AgentClient\n"
        "found = AgentClient().find('lab')\n"
        "took = time.perf_counter() - t\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & "
        "{'paramiko', 'sshtunnel', 'click', 'textual', 'boto3', 'psycopg', 'cryptography'})\n"
        "print(found, heavy, took)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.startswith("None [] "), result.stdout  # not found, nothing heavy
    client = AgentClient()
    started = time.perf_counter()
    for _ in range(20):
        assert client.find("lab") is None
    per_call = (time.perf_counter() - started) / 20
    print(f"[timing] find() with no agent: {per_call * 1000:.2f} ms")
    assert per_call < 0.05


def test_find_and_status_through_a_running_agent(run_cli: RunCli, lab_profile: LabProfile) -> None:
    port = up_detached("lab")
    client = AgentClient()
    found = client.find("lab")
    assert found is not None
    assert (found.name, str(found.state), found.local_port) == ("lab", "up", port)
    assert client.find("other") is None
    assert [s.name for s in client.status()] == ["lab"]
    table = ok(run_cli("status")).stdout.splitlines()
    assert table[0].split()[:3] == ["NAME", "STATE", "ADDRESS"]
    assert table[2].split()[:3] == ["lab", "up", f"127.0.0.1:{port}"]


# ----------------------------------------------------------------------------- files and starts


def test_the_agent_files_are_private(lab_profile: LabProfile) -> None:
    up_detached("lab")
    files = agent_files()
    assert stat.S_IMODE(files.dir.stat().st_mode) == 0o700
    info = files.socket.lstat()
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert stat.S_IMODE(files.state.stat().st_mode) == 0o600
    pid = agent_pid()
    assert files.lock.read_text() == str(pid)
    state = json.loads(files.state.read_text())
    assert state["pid"] == pid
    assert state["tunnels"] == {"lab": one_port()}


def one_port() -> int:
    rows = status_json()
    assert len(rows) == 1
    return int(rows[0]["local_port"])


def test_a_stale_socket_is_replaced(run_cli: RunCli, lab_profile: LabProfile) -> None:
    files = agent_files()
    files.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(files.socket))
    stale.close()  # the file stays, nobody listens: connect is refused
    assert AgentClient().find("lab") is None
    assert "No tunnels" in ok(run_cli("status")).stdout
    result = ok(run_cli("up", "lab", "--detach"))
    assert "the agent had stopped; started a new one" in result.stderr
    assert query(one_port(), lab_profile.postgres) == 1


def test_concurrent_starts_give_one_agent() -> None:
    barrier = threading.Barrier(6)

    def start(_n: int) -> int:
        barrier.wait()
        return AgentClient().ensure_running().pid

    with ThreadPoolExecutor(max_workers=6) as pool:
        pids = set(pool.map(start, range(6)))
    assert len(pids) == 1
    assert agent_processes() == sorted(pids)


def test_a_second_agent_refuses_to_run(run_cli: RunCli) -> None:
    first = AgentClient().ensure_running()
    second = subprocess.run(
        [sys.executable, "-m", "tunnelman.agent", "--lock-wait", "0"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert second.returncode == 3
    run = run_cli("agent", "run")
    assert run.returncode == 1
    assert f"an agent is already running (pid {first.pid})" in run.stderr
    assert agent_processes() == [first.pid]


def test_an_idle_agent_exits_and_cleans_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNNELMAN_AGENT_IDLE", "1")
    info = AgentClient().ensure_running()
    wait_for(lambda: AgentClient().ping() is None, 20, "the idle agent to exit")
    wait_for(lambda: not agent_processes(), 10, f"pid {info.pid} to end")
    files = agent_files()
    assert not files.socket.exists()
    assert not files.state.exists()
    assert AgentClient().crashed() is None


def test_an_agent_holding_a_tunnel_stays_until_it_is_closed(
    run_cli: RunCli, lab_profile: LabProfile, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNNELMAN_AGENT_IDLE", "1")
    port = up_detached("lab")
    time.sleep(3)
    assert AgentClient().find("lab") is not None
    assert query(port, lab_profile.postgres) == 1
    ok(run_cli("down", "lab"))
    wait_for(lambda: not agent_processes(), 20, "the agent to exit once idle")


def test_sigterm_closes_every_tunnel_and_removes_the_files(
    run_cli: RunCli, lab_profile: LabProfile
) -> None:
    port = up_detached("lab")
    pid = agent_pid()
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not agent_processes(), 20, "the agent to stop")
    assert not port_open("127.0.0.1", port)
    files = agent_files()
    assert not files.socket.exists()
    assert not files.state.exists()
    assert ok(run_cli("status")).stdout == "No tunnels (the agent is not running).\n"


def test_agent_run_in_the_foreground_then_agent_stop(
    run_cli: RunCli, lab_profile: LabProfile
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunnelman", "agent", "run", "--idle-timeout", "0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        info = wait_for(lambda: AgentClient().ping(), 30, "agent run to answer")
        assert info.pid == proc.pid
        assert info.idle_timeout == 0
        assert f"Agent pid {proc.pid}" in ok(run_cli("agent", "status")).stdout
        port = up_detached("lab")
        stopped = ok(run_cli("agent", "stop"))
        assert stopped.stdout == f"Stopped the agent (pid {proc.pid}, closed 1 tunnel(s)).\n"
        _out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0
        assert "Agent running" in err
        assert "up lab" in err  # its log goes to the terminal too
        assert not port_open("127.0.0.1", port)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


# ----------------------------------------------------------------------------- the protocol


def test_the_protocol_refuses_what_it_does_not_speak() -> None:
    AgentClient().ensure_running()
    assert raw_request(b"not json\n") is None  # the connection is closed
    reply = raw_request({"v": 2, "op": "ping"})
    assert reply is not None
    assert reply["ok"] is False
    assert reply["kind"] == "AgentError"
    assert "protocol version 1" in reply["error"]
    reply = raw_request({"v": 1, "op": "launch"})
    assert reply is not None
    assert "unknown request 'launch'" in reply["error"]
    reply = raw_request({"v": 1, "op": "up"})
    assert reply is not None
    assert "request without 'name'" in reply["error"]
    reply = raw_request({"v": 1, "op": "up", "name": "lab", "config": "profiles.toml"})
    assert reply is not None
    assert "absolute path" in reply["error"]
    reply = raw_request({"v": 1, "op": "ping"})
    assert reply is not None
    assert reply["ok"] is True
    assert reply["pid"] == agent_pid()


def test_errors_keep_their_class_across_the_socket(
    run_cli: RunCli, lab_profile: LabProfile
) -> None:
    client = AgentClient()
    config = os.environ["TUNNELMAN_CONFIG"]
    from tunnelman.core.errors import ProfileNotFound

    with pytest.raises(ProfileNotFound) as caught:
        client.up("nope", config)
    assert "nope" in str(caught.value)
    missing = run_cli("up", "nope", "--detach")
    assert missing.returncode == 2  # ConfigError's exit code, as for every command
    with pytest.raises(AgentError, match="no tunnel 'lab' is held by the agent"):
        client.down("lab")


def test_subscribe_streams_state_changes(lab_profile: LabProfile) -> None:
    AgentClient().ensure_running()
    with Recorder() as events:
        AgentClient().up("lab", os.environ["TUNNELMAN_CONFIG"])
        AgentClient().down("lab")
        wait_for(lambda: "removed" in events.states("lab"), 10, "the removal event")
        states = events.states("lab")
    assert states[:2] == ["starting", "up"]
    assert states[-1] == "removed"


def test_tcp_transport_with_a_token(
    run_cli: RunCli, lab_profile: LabProfile, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNNELMAN_AGENT_TRANSPORT", "tcp")
    port = up_detached("lab")
    files = agent_files()
    assert not files.socket.exists()
    state = json.loads(files.state.read_text())
    assert stat.S_IMODE(files.state.stat().st_mode) == 0o600
    assert state["transport"] == "tcp"
    assert len(state["token"]) >= 32
    assert status_json()[0]["local_port"] == port
    for token in (None, "wrong"):
        sock = socket.create_connection(("127.0.0.1", state["port"]), timeout=10)
        lines = protocol.LineSocket(sock)
        message: dict[str, Any] = {"v": 1, "op": "status"}
        if token:
            message["token"] = token
        lines.send(message)
        reply = lines.recv()
        lines.close()
        assert reply is not None
        assert reply["ok"] is False
        assert "token" in reply["error"]
    assert query(port, lab_profile.postgres) == 1
    ok(run_cli("down", "--all"))


# ----------------------------------------------------------------------------- up


def test_up_twice_is_the_same_tunnel_and_another_port_is_refused(
    run_cli: RunCli,
    lab_profile: LabProfile,
) -> None:
    port = up_detached("lab")
    assert up_detached("lab") == port
    assert len(status_json()) == 1
    other = run_cli("up", "lab", "--detach", "--port", str(port + 1 if port < 65535 else 1024))
    assert other.returncode == 1
    assert f"already up on 127.0.0.1:{port}" in other.stderr
    lab_profile.write(description="renamed only")
    assert up_detached("lab") == port
    lab_profile.write(keepalive=7)
    changed = run_cli("up", "lab", "--detach")
    assert changed.returncode == 1
    assert "the profile has changed since" in changed.stderr


def test_a_busy_port_is_reported_by_the_agent(run_cli: RunCli, lab_profile: LabProfile) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    busy = holder.getsockname()[1]
    try:
        result = run_cli("up", "lab", "--detach", "--port", str(busy))
    finally:
        holder.close()
    assert result.returncode == 5  # port busy, through the agent
    assert str(busy) in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("tunnelman: error: ")
    assert status_json() == []


def test_a_passphrase_protected_key_points_to_ssh_add(
    run_cli: RunCli, lab_profile: LabProfile, tmp_path: Path
) -> None:
    key, _pub = make_key(tmp_path, "ed25519", passphrase="correct horse")
    lab_profile.write(identity_file=key)
    result = run_cli("up", "lab", "--detach")
    assert result.returncode == 4  # the key cannot be used: authentication
    assert "passphrase-protected" in result.stderr
    assert f"ssh-add {key}" in result.stderr


# ----------------------------------------------------------------------------- host keys


def test_an_unknown_host_key_without_a_terminal_names_the_way_out(
    run_cli: RunCli,
    lab_profile: LabProfile,
) -> None:
    lab_profile.known_hosts.write_text("")
    fingerprint = lab_profile.sshd.host_key_fingerprint()
    refused = run_cli("up", "lab", "--detach")
    assert refused.returncode == 4  # host key refused
    assert fingerprint in refused.stderr
    assert "--accept-new-host-key" in refused.stderr
    assert lab_profile.known_hosts.read_text() == ""
    assert status_json() == []
    up_detached("lab", "--accept-new-host-key")
    assert lab_profile.sshd.host_public_key() in lab_profile.known_hosts.read_text()


def tmux_run(tmp_path: Path, shell: str, name: str) -> tuple[list[str], Path]:
    """Run `shell` in a detached tmux session (a real terminal); (tmux argv prefix, output)."""
    tmux = subprocess.run(["which", "tmux"], capture_output=True, text=True, check=False)
    if tmux.returncode != 0:
        need("tmux not installed (apt-get install tmux)")
    prefix = [tmux.stdout.strip(), "-S", str(tmp_path / f"{name}.sock")]
    out = tmp_path / f"{name}.out"
    subprocess.run(
        [*prefix, "new-session", "-d", "-x", "200", "-y", "40", f"{shell}; exec sleep 600"],
        check=True,
        timeout=30,
    )
    return prefix, out


def screen(prefix: list[str]) -> str:
    result = subprocess.run(
        [*prefix, "capture-pane", "-p", "-J"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return result.stdout


def test_an_unknown_host_key_is_asked_on_the_terminal_before_the_agent_opens_it(
    lab_profile: LabProfile, tmp_path: Path
) -> None:
    lab_profile.known_hosts.write_text("")
    fingerprint = lab_profile.sshd.host_key_fingerprint()
    command = f"{sys.executable} -m tunnelman up lab --detach; echo exit=$?"
    for answer, expected in (("no", "exit=4"), ("yes", "exit=0")):  # 4: host key refused
        prefix, _out = tmux_run(tmp_path, command, answer)
        try:
            wait_for(lambda p=prefix: "(yes/no" in screen(p), 60, "the host key question")  # type: ignore[misc]
            text = screen(prefix)
            assert fingerprint in text
            assert status_json() == [], "nothing is opened before the answer"
            subprocess.run([*prefix, "send-keys", answer, "Enter"], check=True, timeout=30)
            wait_for(lambda p=prefix: "exit=" in screen(p), 60, "up to finish")  # type: ignore[misc]
            text = screen(prefix)
            assert expected in text, text
        finally:
            subprocess.run([*prefix, "kill-server"], check=False, timeout=30)
        if answer == "no":
            assert "not accepted" in text
            assert lab_profile.known_hosts.read_text() == ""
            assert status_json() == []
    assert "is up: 127.0.0.1:" in text
    assert lab_profile.sshd.host_public_key() in lab_profile.known_hosts.read_text()
    assert status_json()[0]["state"] == "up"


# ----------------------------------------------------------------------------- one-shot reuse


def test_one_shot_commands_reuse_the_agents_tunnel(
    run_cli: RunCli, lab_profile: LabProfile
) -> None:
    lab_profile.write(password="none")
    pgpass = Path(os.environ["HOME"]) / ".pgpass"
    pgpass.write_text(f"*:*:*:{lab_profile.postgres.user}:{lab_profile.password}\n")
    pgpass.chmod(0o600)
    port = up_detached("lab")
    logins = lab_profile.sshd.log_text().count("Accepted publickey")
    printed = ok(run_cli("exec", "lab", "--", "printenv", "PGPORT"))
    assert printed.stdout.strip() == str(port)
    psql = ok(run_cli("psql", "lab", "-Atc", "select 40 + 2"))
    assert psql.stdout.strip() == "42"
    assert lab_profile.sshd.log_text().count("Accepted publickey") == logins, "no new SSH login"


def test_ctrl_c_during_up_cancels_the_tunnel_in_the_agent(lab_profile: LabProfile) -> None:
    mute = socket.socket()  # accepts TCP (backlog) but never speaks SSH: `up` hangs
    mute.bind(("127.0.0.1", 0))
    mute.listen(8)
    try:
        lab_profile.write(bastion=f"root@127.0.0.1:{mute.getsockname()[1]}", connect_timeout=60)
        proc = subprocess.Popen(
            [sys.executable, "-m", "tunnelman", "up", "lab", "--detach"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for(
                lambda: [str(s.state) for s in AgentClient().status()] == ["starting"],
                60,
                "the agent to be opening the tunnel",
            )
            proc.send_signal(signal.SIGINT)
            _out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        assert proc.returncode == 130
        assert "Traceback" not in err
        wait_for(lambda: AgentClient().status() == [], 10, "the agent to drop the tunnel")
    finally:
        mute.close()


def test_the_agent_listens_again_when_its_directory_is_removed(lab_profile: LabProfile) -> None:
    port = up_detached("lab")
    pid = agent_pid()
    files = agent_files()
    for path in files.dir.iterdir():  # what a logout's runtime-dir cleanup does
        path.unlink()
    files.dir.rmdir()
    found = wait_for(lambda: AgentClient().find("lab"), 15, "the agent to be reachable again")
    assert found.local_port == port
    assert agent_pid() == pid
    assert up_detached("lab") == port
    assert agent_processes() == [pid], "no second agent"
    assert stat.S_IMODE(files.socket.stat().st_mode) == 0o600
