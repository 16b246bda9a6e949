"""Helpers and fixtures for the agent and fault tests (no tests here).

Every agent a test starts lives in that test's own runtime dir (``tmp_home`` gives each test a
fresh ``XDG_RUNTIME_DIR``) and is stopped at teardown by ``agent_home``: politely with
``shutdown``, then ``kill -9`` for any agent process still running with that runtime dir.
The CLI is run as a real subprocess (``run_cli`` from tests/cli.py), as a user would run it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest

from tests.cli import run_cli
from tests.lab.postgres import Postgres
from tests.lab.profiles import query
from tests.lab.sshd import Sshd
from tests.lab.toml_profile import write_profile
from tunnelman.agent.client import AgentClient, AgentEvent
from tunnelman.agent.paths import AgentPaths, paths

__test__ = False  # helpers only

T = TypeVar("T")


# ----------------------------------------------------------------------------- waiting


def wait_for(predicate: Callable[[], T | None], timeout: float, what: str, step: float = 0.05) -> T:
    """Poll `predicate` until it returns something truthy; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}\n{agent_log_tail()}")
        time.sleep(step)


# ----------------------------------------------------------------------------- the CLI


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, (
        f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}\n"
        + agent_log_tail()
    )
    return result


def status_json() -> list[dict[str, Any]]:
    data = json.loads(ok(run_cli("status", "--json")).stdout)
    assert isinstance(data, list)
    return data


def up_detached(name: str, *extra: str) -> int:
    """`tunnelman up NAME --detach`; the port it printed."""
    result = ok(run_cli("up", name, "--detach", *extra))
    first = result.stdout.splitlines()[0]
    assert "127.0.0.1:" in first, result.stdout
    return int(first.split("127.0.0.1:", 1)[1].split()[0])


# ----------------------------------------------------------------------------- the agent


def agent_files() -> AgentPaths:
    return paths()


def agent_pid() -> int | None:
    """The pid of the agent running for this test, if any."""
    info = AgentClient().ping()
    return info.pid if info else None


def agent_processes() -> list[int]:
    """Pids of `python -m tunnelman.agent` processes using this test's runtime dir."""
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            if b"tunnelman.agent" not in cmdline:
                continue
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"XDG_RUNTIME_DIR={runtime}".encode() in environ:
            found.append(int(entry.name))
    return sorted(found)


def stop_agents() -> None:
    """Shut the test's agent down; kill -9 whatever agent process of this test remains."""
    with contextlib.suppress(Exception):
        AgentClient().shutdown(wait=30)
    for pid in agent_processes():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while agent_processes() and time.monotonic() < deadline:
        time.sleep(0.05)


def agent_log_tail(lines: int = 40) -> str:
    try:
        from tunnelman.agent.paths import log_path

        text = log_path().read_text(errors="replace")
    except OSError:
        return "(no agent log)"
    return "agent log:\n" + "\n".join(text.splitlines()[-lines:])


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


class Recorder:
    """Subscribes to the agent in a thread and keeps every (time, name, state) it is told."""

    def __init__(self) -> None:
        self.events: list[tuple[float, str, str]] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Recorder:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        stream = AgentClient().subscribe(self._stop)
        first = True
        for event in stream:
            self._record(event)
            if first:
                self._ready.set()
                first = False
        self._ready.set()

    def _record(self, event: AgentEvent) -> None:
        if event.status is not None:
            self.events.append((time.monotonic(), event.name, str(event.status.state)))
        else:
            self.events.append((time.monotonic(), event.name, event.kind))

    def states(self, name: str, since: float = 0.0) -> list[str]:
        return [state for t, n, state in list(self.events) if n == name and t >= since]


# ----------------------------------------------------------------------------- profiles


def write_bastion_profile(name: str, bastion: Sshd, pg: Postgres, **extra: Any) -> Path:
    """Profile NAME in $TUNNELMAN_CONFIG for `bastion` → `pg`, its key and host key in ~/.ssh."""
    assert bastion.key_path is not None
    ssh_dir = Path(os.environ["HOME"]) / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    key = ssh_dir / f"id_{bastion.port}_{bastion.host.replace('.', '_')}"
    if not key.exists():
        shutil.copyfile(bastion.key_path, key)
        key.chmod(0o600)
    known_hosts = ssh_dir / "known_hosts"
    line = bastion.host_key_line()
    existing = known_hosts.read_text() if known_hosts.exists() else ""
    if line not in existing:
        with known_hosts.open("a") as fh:
            fh.write(line + "\n")
        known_hosts.chmod(0o600)
    keys: dict[str, Any] = {
        "bastion": bastion.destination,
        "identity_file": key,
        "known_hosts": known_hosts,
        "endpoint": f"{pg.host}:{pg.port}",
        "database": pg.database,
        "user": pg.user,
        "password": "none",
    }
    keys.update(extra)
    return write_profile(os.environ["TUNNELMAN_CONFIG"], name, **keys)


# ----------------------------------------------------------------------------- database


def query_within(port: int, pg: Postgres, limit: float) -> float:
    """Seconds until a query through PORT works (retrying), failing after `limit` + 10 s."""
    start = time.monotonic()
    deadline = start + limit + 10
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            assert query(port, pg, timeout=max(1, int(deadline - time.monotonic()))) == 1
            return time.monotonic() - start
        except psycopg.OperationalError as exc:
            last = exc
            time.sleep(0.1)
    pytest.fail(f"no query through port {port} within {limit + 10:g} s: {last}\n{agent_log_tail()}")


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture
def agent_home(tmp_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """`tmp_home`, plus: every agent started in the test is stopped at teardown."""
    monkeypatch.setenv("TUNNELMAN_AGENT_IDLE", "300")
    try:
        yield tmp_home
    finally:
        stop_agents()
