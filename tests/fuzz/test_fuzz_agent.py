"""Fuzz: the agent's wire protocol, in-process and against a live agent over its socket.

Invariants: `protocol.decode` returns a dict or raises `ProtocolError` for any bytes;
`error_from_wire` turns any reply into a `TunnelmanError`; the server's request handling
(`Agent._handle`) answers any JSON object (unknown ops, wrong types in every field) with a reply,
never with "internal error in the agent" (an exception that was not a `TunnelmanError`); a live
agent fed garbage, huge and partial lines keeps answering `ping`, and `tunnelman status` still
works afterwards.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.cli import run_cli
from tests.fuzz import strategies as fs
from tests.fuzz.budget import count, examples
from tests.test_agent_support import agent_home
from tunnelman.agent import protocol
from tunnelman.agent.client import AgentClient
from tunnelman.agent.paths import paths
from tunnelman.agent.server import Agent
from tunnelman.core.errors import TunnelmanError

pytestmark = pytest.mark.fuzz
__all__ = ["agent_home"]  # the fixture, used by name below

OPS = [*sorted(protocol.OPS), "nosuch", "PING", ""]
_KINDS = ["HostKeyChanged", "HostKeyUnknown", "HostKeyTypeMismatch", "ConfigError", "Exception"]
FIELDS = ("name", "config", "port", "accept_new", "accept_fingerprint", "token", "ssh_auth_sock")


def _field_value(pool: list[str]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.sampled_from(pool), st.sampled_from(_KINDS), fs.json_value, st.integers(-(2**80), 2**80)
    )


@st.composite
def requests(draw: st.DrawFn, pool: list[str]) -> dict[str, Any]:
    message: dict[str, Any] = {}
    if draw(st.integers(0, 4)):
        message["v"] = draw(st.one_of(st.just(protocol.VERSION), fs.json_value))
    if draw(st.integers(0, 4)):
        message["op"] = draw(st.one_of(st.sampled_from(OPS), fs.json_value))
    for key in draw(st.lists(st.sampled_from(FIELDS), unique=True)):
        message[key] = draw(_field_value(pool))
    if draw(st.integers(0, 9)) == 0:
        message[draw(fs.any_text)] = draw(fs.json_value)
    return message


def _encode_loosely(message: dict[str, Any]) -> bytes:
    return json.dumps(message, ensure_ascii=draw_ascii(message)).encode("utf-8", "surrogatepass")


def draw_ascii(message: dict[str, Any]) -> bool:
    return len(message) % 2 == 0  # both spellings of non-ASCII text reach the server


@st.composite
def lines(draw: st.DrawFn, pool: list[str]) -> bytes:
    """One line (or not quite one) as a client might send it."""
    kind = draw(st.integers(0, 9))
    if kind <= 4:
        return _encode_loosely(draw(requests(pool))) + b"\n"
    if kind == 5:
        return draw(st.binary(max_size=64)).replace(b"\n", b"") + b"\n"
    if kind == 6:
        body = _encode_loosely(draw(requests(pool)))
        return body[: draw(st.integers(0, len(body)))]  # partial: no newline
    if kind == 7:
        return draw(
            st.sampled_from(
                [b"null\n", b"[]\n", b'"x"\n', b"1e99999\n", b"\n", b"{}\n", b"\xff\xfe\n"]
            )
        )
    if kind == 8:
        return b"[" * draw(st.integers(1000, 100_000)) + b"\n"  # deep nesting
    return b'{"op":"ping","x":"' + b"a" * draw(st.sampled_from([1000, protocol.MAX_LINE])) + b'"}\n'


# ----------------------------------------------------------------------------- in-process


@settings(max_examples=examples(ci=150, long=3000))
@given(data=st.one_of(st.binary(max_size=200), lines(["x"])))
def test_decode_never_raises_anything_else(data: bytes) -> None:
    count("protocol lines decoded")
    for line in data.split(b"\n"):
        try:
            message = protocol.decode(line)
        except protocol.ProtocolError:
            continue
        assert isinstance(message, dict)


@settings(max_examples=examples(ci=100, long=2000))
@given(
    reply=st.dictionaries(
        st.sampled_from(
            [
                "kind",
                "kind",
                "message",
                "error",
                "hint",
                "host_key",
                "known_hosts",
                "line",
                "expected",
                "known",
                "ok",
            ]
        ),
        st.one_of(st.sampled_from(_KINDS), fs.json_value),
    )
)
def test_error_from_wire_is_always_a_tunnelman_error(reply: dict[str, Any]) -> None:
    count("protocol replies decoded")
    assert isinstance(protocol.error_from_wire(reply), TunnelmanError)
    for tunnel in (reply, reply.get("host_key")):
        with contextlib.suppress(protocol.ProtocolError):
            protocol.status_from_wire(tunnel)


@pytest.fixture
def request_pool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)  # `up` may adopt one from the request
    (tmp_path / "broken.toml").write_text("[profiles.a\n")
    return [
        "a",
        "prod",
        str(tmp_path / "missing.toml"),
        str(tmp_path / "broken.toml"),
        str(tmp_path),
        "relative.toml",
        "SHA256:abc",
    ]


@settings(max_examples=examples(ci=150, long=3000))
@given(data=st.data())
def test_server_validates_any_request(
    request_pool: list[str], tmp_path: Path, data: st.DataObject
) -> None:
    agent = Agent(paths())
    message = data.draw(requests(request_pool), label="request")
    count("agent requests validated in-process")
    reply = agent._handle(message, None)  # type: ignore[arg-type]  # no op used here reads lines
    assert reply["v"] == protocol.VERSION
    assert "ok" in reply, reply
    assert "internal error" not in str(reply.get("error")), (message, reply)
    json.dumps(reply)  # the reply can be sent


# ----------------------------------------------------------------------------- live


@pytest.fixture
def live_agent(agent_home: Path) -> Path:
    AgentClient().ensure_running()
    return paths().socket


def _send(sock_path: Path, payload: list[bytes]) -> int:
    """Send the lines on one connection, read what comes back; the number of reply lines."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(sock_path))
        try:
            for chunk in payload:
                sock.sendall(chunk)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            return 0  # the agent may hang up on a bad line: that is an answer too
        received = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            except TimeoutError:
                # Only a subscription stays open (it streams events until the client leaves).
                assert any(b"subscribe" in line for line in payload), payload
                break
            if not chunk:
                break
            received += chunk
    return received.count(b"\n")


@settings(max_examples=examples(ci=30, long=1000))
@given(data=st.data())
def test_live_agent_survives_garbage(live_agent: Path, tmp_path: Path, data: st.DataObject) -> None:
    pool = ["a", str(tmp_path / "missing.toml"), "x"]
    payload = data.draw(
        st.lists(lines(pool).filter(lambda b: b'"shutdown"' not in b), min_size=1, max_size=6),
        label="lines",
    )
    # A subscription carries only events from then on: the agent reads no more requests there.
    first_sub = next((i for i, line in enumerate(payload) if b"subscribe" in line), None)
    if first_sub is not None:
        payload = payload[: first_sub + 1]
    count("agent live lines sent", len(payload))
    count("agent live connections")
    _send(live_agent, payload)
    info = AgentClient().ping()
    assert info is not None, f"the agent stopped answering after {payload!r}"[:2000]


def test_status_answers_after_garbage(live_agent: Path) -> None:
    _send(live_agent, [b"\xff\n", b"[" * 50_000 + b"\n", b'{"v":1,"op":"nosuch"}\n', b"{"])
    result = run_cli("status", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_decode_deep_nesting_is_a_protocol_error() -> None:
    """Found by the fuzz: `[` x 100,000 raised RecursionError out of `decode` (server and client)."""
    with pytest.raises(protocol.ProtocolError, match="nested too deeply"):
        protocol.decode(b"[" * 100_000)
