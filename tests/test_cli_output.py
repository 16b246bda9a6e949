"""Scriptable, honest output: `up --json` (foreground and `--detach`), the exit code of each error
family (also when the agent met the error), `status --json`'s connection count, what `down` cut,
and a local port held by one of tunnelman's own tunnels named by its profile.

Everything runs the real CLI as a subprocess against the lab's OpenSSH bastion and PostgreSQL.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.cli import RunCli
from tests.conftest import LabProfile
from tests.lab.keys import make_key
from tests.lab.toml_profile import write_profile
from tests.test_agent_support import (
    agent_home,  # noqa: F401 - fixture
    agent_pid,
    ok,
    status_json,
    up_detached,
    wait_for,
)
from tests.test_tunnel import closed_port
from tunnelman.cli.held_port import tunnelman_command
from tunnelman.core.errors import EXIT_CODES

pytestmark = pytest.mark.usefixtures("agent_home")

TUNNEL_KEYS = {"name", "state", "local_port", "since", "reconnects", "error", "connections"}


def errline(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("tunnelman: error: ")]
    assert len(lines) == 1, stderr
    return lines[0]


def other_profile(lab: LabProfile, name: str = "other") -> None:
    """A second profile, the same as `lab`, in the same file."""
    write_profile(lab.config, name, **lab.keys)


class Foreground:
    """`tunnelman up ARGS --json` in the foreground: its first stdout line is the tunnel."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tunnelman", "up", *args, "--json"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def tunnel(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, self.close()
        data = json.loads(line)
        assert isinstance(data, dict)
        return data

    def close(self) -> tuple[int, str, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        out, err = self.proc.communicate(timeout=30)
        return self.proc.returncode, out, err


# ----------------------------------------------------------------------------- up --json


def test_up_detach_json_is_the_tunnel_object_and_status_counts_connections(
    run_cli: RunCli,
    lab_profile: LabProfile,
) -> None:
    result = ok(run_cli("up", "lab", "--detach", "--json"))
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout  # one JSON line; the human lines went to stderr
    tunnel = json.loads(lines[0])
    assert tunnel.keys() >= TUNNEL_KEYS
    port = tunnel["local_port"]
    assert isinstance(port, int)
    assert tunnel["name"] == "lab"
    assert tunnel["state"] == "up"
    assert tunnel["address"] == f"127.0.0.1:{port}"
    assert tunnel["engine"] == "sshtunnel"
    assert tunnel["bastion"] == lab_profile.sshd.destination
    assert tunnel["database"] == lab_profile.postgres.database
    assert tunnel["detached"] is True
    assert "Tunnel 'lab' is up" in result.stderr
    assert "psql" in result.stderr

    assert status_json()[0]["connections"] == 0
    pg = lab_profile.postgres
    conns = [
        psycopg.connect(pg.dsn(host="127.0.0.1", port=port, connect_timeout=10), autocommit=True)
        for _ in range(2)
    ]
    try:
        wait_for(lambda: status_json()[0]["connections"] == 2, 10, "2 counted connections")
        table = ok(run_cli("status")).stdout
        assert "CONNECTIONS" in table
        down = ok(run_cli("down", "lab"))
        assert down.stdout == f"Closed 'lab' (127.0.0.1:{port}); cut 2 open client connections.\n"
        for conn in conns:
            with pytest.raises(psycopg.OperationalError):
                conn.execute("select 1")
    finally:
        for conn in conns:
            conn.close()
    assert status_json() == []


def test_down_all_and_down_json_say_what_was_cut(run_cli: RunCli, lab_profile: LabProfile) -> None:
    other_profile(lab_profile)
    port = up_detached("lab")
    up_detached("other")
    pg = lab_profile.postgres
    with psycopg.connect(pg.dsn(host="127.0.0.1", port=port, connect_timeout=10)):
        wait_for(
            lambda: {t["name"]: t["connections"] for t in status_json()}.get("lab") == 1,
            10,
            "one counted connection",
        )
        closed = json.loads(ok(run_cli("down", "--all", "--json")).stdout)
    by_name = {t["name"]: t for t in closed}
    assert set(by_name) == {"lab", "other"}
    assert by_name["lab"]["cut"] == 1
    assert by_name["other"]["cut"] == 0
    assert by_name["lab"].keys() >= TUNNEL_KEYS
    up_detached("lab")
    text = ok(run_cli("down", "--all")).stdout
    assert text.startswith("Closed 'lab' (127.0.0.1:")
    assert text.endswith("; no client connection was open.\n")
    up_detached("other")
    single = json.loads(ok(run_cli("down", "other", "--json")).stdout)
    assert single["name"] == "other"
    assert single["cut"] == 0


def test_foreground_up_json_prints_one_line_then_holds(lab_profile: LabProfile) -> None:
    up = Foreground("lab")
    try:
        tunnel = up.tunnel()
        assert tunnel["state"] == "up"
        assert tunnel["detached"] is False
        port = tunnel["local_port"]
        pg = lab_profile.postgres
        with psycopg.connect(pg.dsn(host="127.0.0.1", port=port, connect_timeout=10)) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
    finally:
        code, out, err = up.close()
    assert code == 0, err
    assert out == ""  # nothing after the JSON line: stdout stays parseable
    assert "Tunnel 'lab' is up" in err
    assert f"Closed the tunnel on 127.0.0.1:{port}." in err


# ----------------------------------------------------------------------------- exit codes


@pytest.mark.parametrize(
    "case", ["config", "unreachable", "auth", "host key", "port busy", "forward"]
)
@pytest.mark.parametrize("detach", [True, False], ids=["detach", "foreground"])
def test_each_failure_family_has_its_exit_code(
    run_cli: RunCli, case: str, detach: bool, lab_profile: LabProfile, tmp_path: Path
) -> None:
    holder = socket.socket()
    args = ["up", "nope" if case == "config" else "lab", "--json"]
    expect = {
        "config": 2,
        "unreachable": 3,
        "auth": 4,
        "host key": 4,
        "port busy": 5,
        "forward": 6,
    }[case]
    if case == "unreachable":
        lab_profile.write(bastion=f"ec2-user@127.0.0.1:{closed_port()}")
    elif case == "auth":
        stranger, _ = make_key(tmp_path, "ed25519", name="stranger")
        lab_profile.write(identity_file=stranger)
    elif case == "host key":
        lab_profile.known_hosts.write_text("")
    elif case == "port busy":
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        args += ["--port", str(holder.getsockname()[1])]
    elif case == "forward":
        lab_profile.write(endpoint=f"127.0.0.1:{closed_port()}")
    if detach:
        args.append("--detach")
    try:
        result = run_cli(*args, timeout=60)
    finally:
        holder.close()
    assert result.returncode == expect, result
    assert result.stdout == ""  # no tunnel object for a tunnel that is not up
    assert "Traceback" not in result.stderr
    errline(result.stderr)


def test_help_documents_the_exit_codes(run_cli: RunCli) -> None:
    for args in (["--help"], ["up", "--help"]):
        text = ok(run_cli(*args)).stdout
        assert "Exit codes:" in text
        for code, meaning in EXIT_CODES:
            assert f"{code:<4} {meaning}" in text, (args, code)
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for code, _meaning in EXIT_CODES:
        assert f"| {code} " in readme


# ----------------------------------------------------------------------------- a port tunnelman holds


def test_a_port_held_by_an_agent_tunnel_names_the_profile(
    run_cli: RunCli, lab_profile: LabProfile
) -> None:
    other_profile(lab_profile)
    port = up_detached("lab")
    pid = agent_pid()
    want = (
        f"local port {port} is held by tunnelman's tunnel 'lab' "
        "(run `tunnelman down lab`, or choose another --port)"
    )
    # (psql and exec never collide: a one-shot tunnel always takes a free port.)
    for args in (
        ["up", "other", "--port", str(port)],
        ["up", "other", "--detach", "--port", str(port)],
        ["up", "other", "--json", "--port", str(port)],
    ):
        result = run_cli(*args, timeout=60)
        assert result.returncode == 5, result
        line = errline(result.stderr)
        assert want in line, (args, line)
        assert "stop that program" not in line
        assert f"pid {pid}" not in line
    assert [t["name"] for t in status_json()] == ["lab"]  # the holder is untouched


def test_a_port_held_by_a_foreground_up_names_it(run_cli: RunCli, lab_profile: LabProfile) -> None:
    other_profile(lab_profile)
    up = Foreground("lab")
    try:
        port = up.tunnel()["local_port"]
        result = run_cli("up", "other", "--port", str(port), timeout=60)
        still_up = up.proc.poll() is None
    finally:
        up.close()
    assert still_up
    assert result.returncode == 5, result
    line = errline(result.stderr)
    assert (
        f"local port {port} is held by tunnelman's tunnel 'lab' "
        f"(`tunnelman up lab`, pid {up.proc.pid})"
    ) in line
    assert "Ctrl-C" in line


def test_another_programs_port_keeps_its_message(run_cli: RunCli, lab_profile: LabProfile) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        result = run_cli("up", "lab", "--port", str(port), timeout=60)
    finally:
        holder.close()
    assert result.returncode == 5
    line = errline(result.stderr)
    assert f"local port {port} is already in use by pid {os.getpid()}" in line
    assert "stop that program" in line


@pytest.mark.parametrize(
    ("argv", "found"),
    [
        (["/usr/bin/python3", "-m", "tunnelman", "up", "prod"], ("up", "prod")),
        (["/home/u/.venv/bin/tunnelman", "--config", "up", "up", "--port", "5", "x"], ("up", "x")),
        (["tunnelman", "psql", "--accept-new-host-key", "geo", "-c", "x"], ("psql", "geo")),
        (["C:\\Tools\\tunnelman.exe", "exec", "geo", "--", "qgis"], ("exec", "geo")),
        (["/usr/bin/python3", "-m", "tunnelman.agent"], None),
        (["tunnelman", "agent", "run"], None),
        (["postgres", "-D", "/var/lib/pg"], None),
        (None, None),
    ],
)
def test_reading_a_tunnelman_command_line(
    argv: list[str] | None, found: tuple[str, str] | None
) -> None:
    assert tunnelman_command(argv) == found
