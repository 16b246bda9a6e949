"""The agent under abuse, and the client against an agent that talks nonsense.

A real agent process (started by the real client) is flooded from this process: connections that
send nothing, 1 MiB without a newline, one 10 MB line, over the Unix socket and over TCP without
the token (what another local user can do). The owner's `tunnelman status` must keep answering,
the agent must stay small and come back to its resting size afterwards, and bursts of parallel
connects must all get through. A fake agent (a Unix socket served by this test) sends replies with
fields of the wrong type: the CLI prints one line and exits non-zero, never a traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.cli import RunCli
from tests.test_agent_support import (
    agent_files,
    agent_home,  # noqa: F401 - fixture
    agent_processes,
    fd_count,
    ok,
    thread_count,
    wait_for,
)
from tunnelman.agent import protocol
from tunnelman.agent.client import AgentClient
from tunnelman.agent.paths import paths
from tunnelman.core.errors import AgentError

pytestmark = pytest.mark.usefixtures("agent_home")

MiB = 1 << 20


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def start_agent(monkeypatch: pytest.MonkeyPatch, transport: str) -> int:
    monkeypatch.setenv("TUNNELMAN_AGENT_TRANSPORT", transport)
    return AgentClient().ensure_running().pid


def address() -> tuple[int, Any]:
    """(family, address) of the running agent, as a stranger would find it (no token)."""
    state = agent_files().read_state()
    assert state is not None
    if state["transport"] == "tcp":
        return socket.AF_INET, ("127.0.0.1", state["port"])
    return socket.AF_UNIX, str(agent_files().socket)


def connect(timeout: float = 5.0) -> socket.socket:
    family, where = address()
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(where)
    return sock


def drain(sock: socket.socket, within: float) -> tuple[bytes, bool]:
    """What the agent sends on `sock`, and whether it closed it (EOF or reset) within `within` s."""
    sock.settimeout(within)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        return data, False
    except OSError:
        pass
    finally:
        sock.close()
    return data, True


class Flood:
    """`senders` connections that write 1 MiB with no newline, `silent` ones that write nothing,
    and one 10 MB line; each reconnects when the agent drops it, until `stop()` (or 60 s)."""

    def __init__(self, senders: int, silent: int) -> None:
        self.family, self.address = address()
        self.connects = Counter[str]()
        self.failures = Counter[str]()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        payloads = [b"x" * MiB] * senders + [b""] * silent + [b"y" * (10 * MiB) + b"\n"]
        self._threads = [
            threading.Thread(target=self._run, args=(p,), daemon=True) for p in payloads
        ]

    def __enter__(self) -> Flood:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        assert not any(t.is_alive() for t in self._threads)

    def _run(self, payload: bytes) -> None:
        kind = "silent" if not payload else f"{len(payload) // MiB} MiB"
        deadline = time.monotonic() + 60
        while not self._stop.is_set() and time.monotonic() < deadline:
            sock = socket.socket(self.family, socket.SOCK_STREAM)
            sock.settimeout(0.5)
            try:
                sock.connect(self.address)
                with self._lock:
                    self.connects[kind] += 1
                if payload:
                    sock.sendall(payload)
                while not self._stop.is_set() and time.monotonic() < deadline:
                    try:
                        if not sock.recv(65536):
                            break
                    except TimeoutError:
                        continue
            except OSError as exc:
                with self._lock:
                    self.failures[type(exc).__name__] += 1
                self._stop.wait(0.05)
            finally:
                sock.close()


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_held_connections_do_not_starve_the_owner(
    run_cli: RunCli, monkeypatch: pytest.MonkeyPatch, transport: str
) -> None:
    pid = start_agent(monkeypatch, transport)
    rest_fds, rest_threads = fd_count(pid), thread_count(pid)
    print(f"[abuse] {transport} at rest: rss {rss_kib(pid)} KiB, {rest_threads} threads")
    took: list[float] = []
    peak_rss = peak_threads = 0
    with Flood(senders=150, silent=150) as flood:
        # Longer than the first-line deadline, so connections are dropped for every reason.
        deadline = time.monotonic() + protocol.FIRST_LINE_TIMEOUT + 2
        while time.monotonic() < deadline:
            started = time.monotonic()
            result = run_cli("status", timeout=30)
            took.append(time.monotonic() - started)
            assert result.returncode == 0, result.stderr
            assert result.stdout == "No tunnels (the agent holds none).\n"
            peak_rss = max(peak_rss, rss_kib(pid))
            peak_threads = max(peak_threads, thread_count(pid))
        connects = sum(flood.connects.values())
    print(
        f"[abuse] {transport}: {connects} hostile connects {dict(flood.connects)}, "
        f"status took max {max(took):.2f} s over {len(took)} runs, peak rss {peak_rss} KiB, "
        f"peak threads {peak_threads}"
    )
    assert connects >= 300
    assert max(took) < 5
    assert peak_rss < 300 * 1024
    assert peak_threads <= rest_threads + 2  # a connection that says nothing costs no thread
    # Afterwards: back to rest, and serving.
    wait_for(lambda: fd_count(pid) <= rest_fds + 2, 15, "the flood's connections to be closed")
    assert thread_count(pid) <= rest_threads + 1
    assert agent_processes() == [pid]
    with ThreadPoolExecutor(max_workers=20) as pool:
        pings = list(pool.map(lambda _: AgentClient().ping(), range(40)))
    assert all(info is not None and info.pid == pid for info in pings)


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_a_burst_of_parallel_connects_all_get_through(
    monkeypatch: pytest.MonkeyPatch, transport: str
) -> None:
    pid = start_agent(monkeypatch, transport)
    family, where = address()
    token = (agent_files().read_state() or {}).get("token")
    count = 500
    barrier = threading.Barrier(count, timeout=60)

    def raw(_n: int) -> str:
        """A plain connect with a timeout (a Unix one fails at once with EAGAIN on a full
        backlog), then one ping: no retry here, so the backlog alone must absorb the burst."""
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(20)
        try:
            barrier.wait()
            sock.connect(where)
            lines = protocol.LineSocket(sock)
            lines.send({"v": 1, "op": "ping", **({"token": token} if token else {})})
            reply = lines.recv()
            return "ok" if reply and reply.get("pid") == pid else f"reply {reply!r}"
        except OSError as exc:
            return type(exc).__name__
        finally:
            sock.close()

    with ThreadPoolExecutor(max_workers=count) as pool:
        outcomes = Counter(pool.map(raw, range(count)))
    print(f"[abuse] {transport}: {count} parallel raw connects: {dict(outcomes)}")
    assert outcomes == {"ok": count}
    barrier = threading.Barrier(count, timeout=60)

    def client(_n: int) -> str:
        barrier.wait()
        try:
            info = AgentClient().ping()
        except AgentError as exc:
            return str(exc)
        return "ok" if info is not None and info.pid == pid else f"got {info!r}"

    with ThreadPoolExecutor(max_workers=count) as pool:
        outcomes = Counter(pool.map(client, range(count)))
    print(f"[abuse] {transport}: {count} parallel AgentClient().ping(): {dict(outcomes)}")
    assert outcomes == {"ok": count}


def test_the_limits_on_one_connection() -> None:
    pid = AgentClient().ensure_running().pid
    # Nothing sent: closed at the first-line deadline, not before.
    started = time.monotonic()
    assert drain(connect(), protocol.FIRST_LINE_TIMEOUT + 5) == (b"", True)
    waited = time.monotonic() - started
    assert protocol.FIRST_LINE_TIMEOUT - 0.5 <= waited <= protocol.FIRST_LINE_TIMEOUT + 3
    # A line longer than the limit, first or later: closed at once, no reply to it.
    for before in (b"", b'{"v":1,"op":"ping"}\n'):
        sock = connect()
        with contextlib.suppress(OSError):  # the agent may close before it has all of it
            sock.sendall(before + b'{"v":1,"op":"ping","pad":"' + b"p" * protocol.MAX_REQUEST)
        started = time.monotonic()
        data, closed = drain(sock, 3)
        assert closed
        assert time.monotonic() - started < 2
        assert data.count(b"\n") == (1 if before else 0)
    # Requests in turn on one connection, sent at once: answered by the loop, then by a worker.
    sock = connect()
    lines = protocol.LineSocket(sock)
    sock.sendall(b'{"v":1,"op":"ping"}\n{"v":1,"op":"status"}\n{"v":1,"op":"subscribe"}\n')
    replies = [lines.recv() for _ in range(3)]
    assert [r and r.get("ok") for r in replies] == [True, True, True]
    assert replies[0]
    assert replies[0]["pid"] == pid
    assert replies[1]
    assert replies[1]["tunnels"] == []
    lines.close()
    assert AgentClient().ping() is not None


@pytest.mark.parametrize(
    "op", ["[1, 2]", '{"x": 1}', "null", "7", '"nope"'], ids=["list", "dict", "null", "int", "str"]
)
def test_an_op_of_the_wrong_type_costs_only_that_connection(op: str) -> None:
    """Found by the live fuzz: `"op": [...]` (unhashable) once stopped the agent's loop."""
    pid = AgentClient().ensure_running().pid
    sock = connect()
    sock.sendall(b'{"v":1,"op":' + op.encode() + b"}\n")
    drain(sock, 2)
    info = AgentClient().ping()
    assert info is not None
    assert info.pid == pid


def test_workers_are_capped_and_status_still_answers(run_cli: RunCli) -> None:
    pid = AgentClient().ensure_running().pid
    rest = thread_count(pid)
    held: list[protocol.LineSocket] = []
    try:
        for _ in range(protocol.MAX_WORKERS):
            lines = protocol.LineSocket(connect())
            lines.send({"v": 1, "op": "subscribe"})
            reply = lines.recv()
            assert reply is not None
            assert reply["ok"] is True
            held.append(lines)
        assert thread_count(pid) >= rest + protocol.MAX_WORKERS
        extra = protocol.LineSocket(connect())
        extra.send({"v": 1, "op": "subscribe"})
        reply = extra.recv()
        assert reply is not None
        assert reply["ok"] is False
        assert f"busy: {protocol.MAX_WORKERS} requests are in progress" in reply["error"]
        assert extra.recv() is None  # and closed
        extra.close()
        assert ok(run_cli("status")).stdout == "No tunnels (the agent holds none).\n"
    finally:
        for lines in held:
            lines.close()
    wait_for(lambda: thread_count(pid) <= rest + 1, 10, "the subscribers' threads to end")
    lines = protocol.LineSocket(connect())
    lines.send({"v": 1, "op": "subscribe"})
    reply = lines.recv()
    assert reply is not None
    assert reply["ok"] is True
    lines.close()


def test_a_bad_token_is_answered_then_the_connection_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    start_agent(monkeypatch, "tcp")
    for message in ({"v": 1, "op": "ping"}, {"v": 1, "op": "up", "token": "guess"}):
        lines = protocol.LineSocket(connect())
        lines.send(message)
        reply = lines.recv()
        assert reply is not None
        assert reply["ok"] is False
        assert reply["error"] == "bad or missing token"
        assert lines.recv() is None
        lines.close()
    assert AgentClient().ping() is not None


# ----------------------------------------------------------------------------- a fake agent


@contextmanager
def fake_agent(reply_for: Callable[[dict[str, Any]], bytes]) -> Iterator[None]:
    """A Unix socket where the agent's would be, answering each request with `reply_for`."""
    files = paths(create=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(files.socket))
    server.listen(16)
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                try:
                    request = protocol.LineSocket(conn).recv()
                    if request is not None:
                        conn.sendall(reply_for(request))
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()
        files.socket.unlink()


PING = {"ok": True, "v": 1, "pid": 4242, "version": "0.1.0", "protocol": 1, "started": 1.0e9}
TUNNEL = {"name": "lab", "state": "up", "local_port": 5433, "since": 1.0e9, "reconnects": 0}
# (field, a value of the wrong kind); each is read by the client and must be refused.
BAD_PING = [
    ("pid", "abc"),
    ("pid", True),
    ("pid", -1),
    ("pid", 1.5),
    ("protocol", "1"),
    ("started", "yesterday"),
    ("started", float("inf")),
    ("started", 1e300),
    ("tunnels", [1]),
    ("idle_timeout", "never"),
    ("version", 3),
    ("transport", None),
    ("address", ["x"]),
    ("log", {}),
]
BAD_TUNNEL = [
    ("name", 5),
    ("name", ""),
    ("state", "bogus"),
    ("state", 3),
    ("local_port", "5433"),
    ("local_port", 70000),
    ("local_port", False),
    ("since", "now"),
    ("since", float("nan")),
    ("since", -5),
    ("reconnects", "2"),
    ("error", 5),
    ("connections", []),
]
BAD_LIST = [5, "abc", {"name": "lab"}, [5], [None]]


def encode_any(reply: Any) -> bytes:
    return json.dumps(reply).encode() + b"\n"  # NaN and Infinity as Python's json writes them


def replies(ping: dict[str, Any], tunnels: Any) -> Callable[[dict[str, Any]], bytes]:
    def reply_for(request: dict[str, Any]) -> bytes:
        if request.get("op") == "ping":
            return encode_any(ping)
        if request.get("op") == "down":
            first = tunnels[0] if isinstance(tunnels, list) and tunnels else tunnels
            return encode_any({"ok": True, "v": 1, "tunnel": first})
        return encode_any({"ok": True, "v": 1, "tunnels": tunnels})

    return reply_for


def constant(raw: bytes) -> Callable[[dict[str, Any]], bytes]:
    return lambda _request: raw


def one_clear_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_malformed_ping_replies_are_one_clear_error(run_cli: RunCli) -> None:
    for key, value in BAD_PING:
        with fake_agent(replies({**PING, key: value}, [])), pytest.raises(AgentError) as caught:
            AgentClient().ping()
        message = str(caught.value)
        assert message.startswith(f"the agent sent a malformed reply: ping: '{key}' is "), message
        assert "\n" not in message
    with fake_agent(replies({**PING, "pid": "abc"}, [])):
        line = one_clear_line(run_cli("agent", "status", "--json"))
    assert line.startswith("tunnelman: error: the agent sent a malformed reply: ping: 'pid' is")
    assert "'abc'" in line
    assert "tunnelman agent stop" in line


def test_malformed_tunnels_are_one_clear_error(run_cli: RunCli) -> None:
    cases = [[{**TUNNEL, key: value}] for key, value in BAD_TUNNEL] + BAD_LIST
    for tunnels in cases:
        with fake_agent(replies(PING, tunnels)):
            for call in (AgentClient().status, AgentClient().down_all):
                with pytest.raises(AgentError, match=r"^the agent sent a malformed reply: "):
                    call()
            assert AgentClient().find("lab") is None  # find never fails
    with fake_agent(replies(PING, [{**TUNNEL, "local_port": "abc"}])):
        for args in (("status",), ("status", "--json"), ("down", "lab"), ("down", "--all")):
            line = one_clear_line(run_cli(*args))
            assert line.startswith(
                "tunnelman: error: the agent sent a malformed reply: tunnel 'lab': local_port is "
                "'abc', not a whole number from 0 to 65535 or null"
            ), (args, line)


def test_garbage_from_the_agent_is_one_clear_error(run_cli: RunCli) -> None:
    for raw, expected in (
        (b"not json\n", "not a JSON line"),
        (b"[1, 2]\n", "not a JSON object"),
        (b"[" * 100_000 + b"\n", "not a JSON line"),
        (b"\xff\xfe\n", "not a JSON line"),
        (b"x" * (protocol.MAX_LINE + 10), f"message longer than {protocol.MAX_LINE} bytes"),
        (b'{"ok": false, "kind": 5, "error": [1], "hint": 3}\n', "[1] (3)"),
    ):
        with fake_agent(constant(raw)):
            line = one_clear_line(run_cli("agent", "status"))
        assert expected in line, (raw[:30], line)


# ----------------------------------------------------------------------------- names, paths


@pytest.mark.parametrize("running", [False, True])
def test_a_name_that_is_not_text_is_a_clean_error(running: bool) -> None:
    if running:
        AgentClient().ensure_running()
    for raw in (b"\xff\xfe", b"lab\xed\xb3\xbf"):
        result = subprocess.run(
            [sys.executable, "-m", "tunnelman", "down", raw],
            capture_output=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        stderr = result.stderr.decode("utf-8", "replace")
        assert result.returncode == 1, stderr
        assert "Traceback" not in stderr
        assert len(stderr.splitlines()) == 1, stderr
        assert "is not valid text" in stderr
    with pytest.raises(AgentError, match=r"profile name '\\xff\\xfe' is not valid text"):
        AgentClient().down(os.fsdecode(b"\xff\xfe"))
    assert AgentClient().find(os.fsdecode(b"\xff")) is None


def test_a_relative_agent_dir_is_the_same_for_client_and_agent(
    run_cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "w"  # short: the socket path must fit in sun_path
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("TUNNELMAN_AGENT_DIR", "a")
    monkeypatch.setenv("TUNNELMAN_AGENT_LOG", "agent.log")
    assert paths().dir == work / "a"
    script = "from tunnelman.agent.client import AgentClient; print(AgentClient().ensure_running())"
    started = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert started.returncode == 0, started.stderr
    assert f"address='{work / 'a' / 'agent.sock'}'" in started.stdout
    assert f"log='{work / 'agent.log'}'" in started.stdout
    assert (work / "a" / "agent.json").exists()
    assert (work / "agent.log").exists()
    assert "Agent pid" in ok(run_cli("agent", "status")).stdout
