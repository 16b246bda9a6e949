"""What a tunnel carried: byte counts and rates from both engines, in-process and through the agent.

The counting rules (`tunnelman/core/tunnel/traffic.py`) are tested in-process; the kernel's
per-socket counters (`ports.loopback_traffic`, Linux sock_diag) against a real socket served by
another process; then real transfers through the lab (OpenSSH sshd, PostgreSQL): a COPY of a few
MB each way through each engine (the OpenSSH engine in both of its modes) must show at least the
bytes copied, and a non-zero rate right after; `tunnelman status --json` shows the same for a
tunnel the agent holds.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.cli import RunCli
from tests.lab.postgres import Postgres
from tests.lab.profiles import make_profile
from tests.lab.sshd import Sshd
from tests.test_agent_support import (
    agent_home,  # noqa: F401 - fixture
    up_detached,
    write_bastion_profile,
)
from tunnelman.core.tunnel import TunnelStatus, open_tunnel, ports
from tunnelman.core.tunnel.traffic import KernelCounts, Traffic, human_bytes

DOWN_ROWS = 5000  # × 1000 bytes: ~5 MB from the database
UP_BYTES = 2_000_000  # to the database

# ----------------------------------------------------------------------------- counting rules


def test_flows_add_up_while_open_and_after_they_close() -> None:
    traffic = Traffic()
    a, b = traffic.flow(), traffic.flow()
    a.up, a.down, a.down_direct = 10, 100, 1000
    b.up, b.down = 5, 50
    assert traffic.totals() == (15, 1150)
    traffic.done(a)
    traffic.done(a)  # twice is once
    b.up += 1
    assert traffic.totals() == (16, 1150)
    traffic.done(b)
    assert traffic.totals() == (16, 1150)


def test_rates_come_from_the_last_samples_and_fade_when_sampling_stops() -> None:
    traffic = Traffic()
    flow = traffic.flow()
    now = time.monotonic()
    for second in range(5):
        flow.down = second * 1_000_000
        flow.up = second * 1000
        traffic.sample(now - 4 + second)
    rates = traffic.rates()
    assert rates.received == pytest.approx(1_000_000)
    assert rates.sent == pytest.approx(1000)
    assert [round(r.received) for r in traffic.history()] == [1_000_000] * 4
    stale = Traffic()
    stale.sample(now - 20)
    stale.sample(now - 19)
    assert stale.rates().received == 0  # nobody sampled lately: not "up"


def test_the_sampler_runs_while_a_tunnel_is_up_and_ends_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tunnelman.core.tunnel import traffic as traffic_module

    monkeypatch.setattr(traffic_module, "SAMPLE_INTERVAL", 0.1)
    traffic = Traffic()
    flow = traffic.flow()
    traffic.running(True)
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(traffic.history()) < 2:
            flow.down += 500_000
            time.sleep(0.1)
        assert len(traffic.history()) >= 2
        assert traffic.rates().received > 0
    finally:
        traffic.running(False)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _sampler_alive():
        time.sleep(0.05)
    assert not _sampler_alive()


def _sampler_alive() -> bool:
    import threading

    return any(t.name == "tunnelman-traffic" for t in threading.enumerate())


def test_kernel_counts_keep_the_bytes_of_closed_sockets() -> None:
    reads: list[dict[int, tuple[int, int]] | None] = [
        {1: (10, 100)},
        {1: (20, 200), 2: (1, 1)},
        {2: (2, 2)},  # socket 1 closed: its last counts stay
        None,  # the kernel could not be asked: nothing open is known, nothing is lost
        {3: (5, 5)},
    ]
    counts = KernelCounts(lambda: reads.pop(0))
    assert counts() == (10, 100)
    assert counts() == (21, 201)
    assert counts() == (22, 202)
    assert counts() == (22, 202)
    assert counts() == (27, 207)


def test_kernel_counts_tally_sockets_that_came_and_went() -> None:
    reads: list[dict[int, tuple[int, int]] | None] = [
        {1: (1, 1)},
        {1: (1, 1), 2: (1, 1), 3: (1, 1)},
        None,  # not readable: no news, not "everything went"
        {3: (1, 1)},
    ]
    counts = KernelCounts(lambda: reads.pop(0))
    counts()
    assert counts.changes() == (1, 0)
    assert counts.changes() == (0, 0)  # taken
    counts()
    counts()
    assert counts.changes() == (2, 0)
    counts()
    assert counts.changes() == (0, 2)  # the unreadable look between told nothing


def test_a_late_sampler_is_made_up_for_on_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """Busy relay threads can keep the sampler thread from its turn: a read samples itself."""
    from tunnelman.core.tunnel import traffic as traffic_module

    monkeypatch.setattr(traffic_module._sampler, "add", lambda traffic: None)  # a starved sampler
    traffic = Traffic()
    flow = traffic.flow()
    traffic.running(True)
    now = time.monotonic()
    traffic.sample(now - 2.5)
    flow.down = 5_000_000
    traffic.sample(now - 2.0)  # the sampler's last turn, two seconds ago
    flow.down = 10_000_000
    assert traffic.rates().received > 0  # sampled now: 5 MB in the last two seconds
    traffic.running(False)
    idle = Traffic()
    idle.sample(now - 2.5)
    idle.sample(now - 2.0)
    assert idle.rates().received == 0  # not running: an old sample is not refreshed


@pytest.mark.parametrize(
    ("count", "text"),
    [(0, "0 B"), (512, "512 B"), (1536, "1.5 kB"), (52_700_000, "50.3 MB"), (3 << 30, "3.0 GB")],
)
def test_human_bytes(count: int, text: str) -> None:
    assert human_bytes(count) == text


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sock_diag is Linux's")
def test_the_kernel_counts_another_process_s_sockets_and_not_ours() -> None:
    """What the OpenSSH engine's direct mode reads: sockets another process (ssh) accepted."""
    server = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import socket, sys\n"
            "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
            "print(s.getsockname()[1], flush=True)\n"
            "a, _ = s.accept(); n = 0\n"
            "while n < 300000: n += len(a.recv(65536))\n"
            "a.sendall(b'y' * 70000); sys.stdin.read()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        import socket

        with socket.create_connection(("127.0.0.1", port)) as client:
            client.sendall(b"x" * 300_000)
            got = 0
            while got < 70_000:
                got += len(client.recv(65536))
            time.sleep(0.2)  # the last ACK
            found = ports.loopback_traffic(port)
        assert found is not None
        assert list(found.values()) == [(300_000, 70_000)]  # theirs only, not our client's
    finally:
        server.kill()
        server.wait()


# ----------------------------------------------------------------------------- through the lab


def transfer(port: int, pg: Postgres) -> None:
    """~5 MB from the database and 2 MB to it, through 127.0.0.1:PORT."""
    with psycopg.connect(pg.dsn(host="127.0.0.1", port=port), autocommit=True) as conn:
        got = 0
        with conn.cursor() as cur:
            with cur.copy(
                f"copy (select repeat('x', 999) from generate_series(1, {DOWN_ROWS})) to stdout"
            ) as copy:
                for chunk in copy:
                    got += len(chunk)
            assert got >= DOWN_ROWS * 1000
            cur.execute("create temp table up (t text)")
            line = b"u" * 999 + b"\n"
            with cur.copy("copy up from stdin") as copy:
                for _ in range(UP_BYTES // len(line) + 1):
                    copy.write(line)


def assert_counted(status: TunnelStatus | dict[str, Any]) -> None:
    get = status.get if isinstance(status, dict) else lambda key: getattr(status, key)
    received, sent = get("bytes_received"), get("bytes_sent")
    assert received is not None, status
    assert sent is not None, status
    assert received >= DOWN_ROWS * 1000, status
    assert sent >= UP_BYTES, status
    assert received < DOWN_ROWS * 1000 * 1.5 + 1_000_000, status  # counted once, not twice
    assert sent < UP_BYTES * 1.5 + 1_000_000, status


@pytest.mark.parametrize("mode", ["sshtunnel", "openssh", "openssh-relay"])
def test_each_engine_counts_what_it_carried(
    mode: str,
    make_sshd: Any,
    postgres: Postgres,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if mode == "openssh-relay":  # Windows' way: tunnelman's listener in front of ssh.exe
        from tunnelman.core.platform import process

        monkeypatch.setattr(process, "ssh_multiplexing", lambda platform="win32": False)
    server: Sshd = make_sshd()
    profile = make_profile(server, postgres, tmp_path, engine=mode.split("-", maxsplit=1)[0])
    with open_tunnel(profile) as tunnel:
        port = tunnel.local_port
        assert port is not None
        before = tunnel.status
        assert before.bytes_received is not None
        assert before.bytes_received < 100_000
        started = time.monotonic()
        transfer(port, postgres)
        elapsed = time.monotonic() - started
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and not tunnel.status.rate_received:
            time.sleep(0.1)
        status = tunnel.status
        print(
            f"[traffic] {mode}: {status.bytes_received} B received, {status.bytes_sent} B sent "
            f"in {elapsed:.2f} s; rate now {status.rate_received:.0f} B/s"
        )
        assert_counted(status)
        assert status.rate_received
        assert status.rate_received > 0
        assert status.to_json()["bytes_received"] == status.bytes_received


@pytest.mark.usefixtures("agent_home")
def test_status_json_shows_what_the_agent_s_tunnel_carried(
    run_cli: RunCli, sshd: Sshd, postgres: Postgres
) -> None:
    write_bastion_profile("lab", sshd, postgres)
    port = up_detached("lab")
    transfer(port, postgres)
    result = run_cli("status", "--json")
    assert result.returncode == 0, result.stderr
    (tunnel,) = json.loads(result.stdout)
    assert_counted(tunnel)
    assert isinstance(tunnel["rate_received"], int)
    table = run_cli("status")
    assert "SENT / RECEIVED" in table.stdout
    assert re.search(r"\d+(\.\d)? [kM]?B / [4-9]\.\d MB", table.stdout), table.stdout
    assert "…" not in table.stdout, table.stdout  # nothing cut to fit


def test_the_agent_s_rate_history_reply_is_read_leniently() -> None:
    from tunnelman.agent import protocol

    reply = {
        "tunnels": [
            {"name": "a", "history": [0, 1500, 2.5e6]},
            {"name": "old-agent"},  # an agent without the feature sends none
            {"name": "bad", "history": [True, -1, "x", 7]},  # only 7 is a rate
            "not a tunnel",
        ]
    }
    assert protocol.reply_history(reply) == {"a": [0.0, 1500.0, 2.5e6], "bad": [7.0]}
    assert protocol.reply_history({"tunnels": [{"name": "a", "history": list(range(400))}]})[
        "a"
    ] == [float(x) for x in range(100, 400)]  # five minutes at most
    assert "history" in protocol.FEATURES
