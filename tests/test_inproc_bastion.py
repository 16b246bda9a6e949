"""The in-process bastion (`tunnelman.demo.bastion`) against real SSH clients.

OpenSSH's `ssh -N -L` and paramiko connect to it with strict host-key checking against its
`host_key_line()`; forwards reach only the allowed targets; `stop()` leaves no thread behind. The
tunnel engine is run through it too, as the demo does.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from tunnelman.core.profiles import Profile, parse_bastion, parse_endpoint
from tunnelman.core.ssh.known_hosts import HostKeyPolicy
from tunnelman.core.tunnel import open_tunnel
from tunnelman.demo.bastion import InprocBastion, fingerprint, generate_key, public_line


def _need(reason: str) -> None:
    """Skip locally, fail in CI (where scripts/dev installs everything)."""
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        pytest.fail(f"unavailable in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class EchoServer:
    """A TCP (or Unix socket) echo server: the stand-in for a database."""

    def __init__(self, unix_path: str | None = None) -> None:
        if unix_path:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.bind(unix_path)
        else:
            self.sock = socket.socket()
            self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = 0 if unix_path else self.sock.getsockname()[1]
        self.accepted = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


def _bastion_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("inproc-bastion")]


def _client(bastion: InprocBastion, pkey: paramiko.PKey, tmp_path: Path) -> paramiko.SSHClient:
    known = tmp_path / "known_hosts"
    known.write_text(bastion.host_key_line() + "\n")
    client = paramiko.SSHClient()
    client.load_host_keys(str(known))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        "127.0.0.1",
        bastion.port,
        username="demo",
        pkey=pkey,
        look_for_keys=False,
        allow_agent=False,
        timeout=10,
    )
    return client


def _roundtrip(chan: paramiko.Channel, payload: bytes) -> bytes:
    def send() -> None:
        chan.sendall(payload)
        chan.shutdown_write()

    sender = threading.Thread(target=send)
    sender.start()
    got = bytearray()
    while data := chan.recv(65536):
        got += data
    sender.join()
    return bytes(got)


def test_paramiko_client_forwards_to_allowed_target_only(echo: EchoServer, tmp_path: Path) -> None:
    user = generate_key()
    with InprocBastion(user.pkey, allowed=[("127.0.0.1", echo.port)], username="demo") as bastion:
        client = _client(bastion, user.pkey, tmp_path)
        transport = client.get_transport()
        assert transport is not None
        assert transport.get_remote_server_key().asbytes() == bastion.host_key.asbytes()

        chan = transport.open_channel("direct-tcpip", ("127.0.0.1", echo.port), ("127.0.0.1", 1))
        payload = os.urandom(3_000_000)
        assert _roundtrip(chan, payload) == payload

        blocked = ("127.0.0.1", _free_port())
        with pytest.raises(paramiko.ChannelException) as info:
            transport.open_channel("direct-tcpip", blocked, ("127.0.0.1", 1))
        assert info.value.code == paramiko.common.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
        assert bastion.refused == [blocked]

        with pytest.raises(paramiko.ChannelException):
            transport.open_session()  # no shells on this bastion
        client.close()
    assert _bastion_threads() == []


def test_routes_send_a_name_to_a_unix_socket(tmp_path: Path) -> None:
    server = EchoServer(unix_path=str(tmp_path / "db.sock"))
    user = generate_key()
    route = {("db.sandbox.invalid", 5432): str(tmp_path / "db.sock")}
    try:
        with InprocBastion(user.pkey, routes=route) as bastion:
            client = _client(bastion, user.pkey, tmp_path)
            transport = client.get_transport()
            assert transport is not None
            chan = transport.open_channel(
                "direct-tcpip", ("db.sandbox.invalid", 5432), ("127.0.0.1", 1)
            )
            assert _roundtrip(chan, b"select 1") == b"select 1"
            client.close()
    finally:
        server.close()


def test_other_keys_and_users_are_refused(echo: EchoServer, tmp_path: Path) -> None:
    user, stranger = generate_key(), generate_key()
    line = user.public_line("someone@laptop")
    with InprocBastion(line, allowed=[("127.0.0.1", echo.port)], username="demo") as bastion:
        with pytest.raises(paramiko.AuthenticationException):
            _client(bastion, stranger.pkey, tmp_path)
        known = tmp_path / "known_hosts"
        client = paramiko.SSHClient()
        client.load_host_keys(str(known))
        with pytest.raises(paramiko.AuthenticationException):
            client.connect(
                "127.0.0.1",
                bastion.port,
                username="root",
                pkey=user.pkey,
                look_for_keys=False,
                allow_agent=False,
            )
        client.close()
        _client(bastion, user.pkey, tmp_path).close()


def test_host_key_line_and_fingerprint_match_openssh(tmp_path: Path) -> None:
    if shutil.which("ssh-keygen") is None:
        _need("ssh-keygen (openssh-client) is not installed")
    user = generate_key()
    with InprocBastion(user.pkey) as bastion:
        line = bastion.host_key_line()
        assert line.startswith(f"[127.0.0.1]:{bastion.port} ssh-ed25519 ")
        known = tmp_path / "known_hosts"
        known.write_text(line + "\n")
        listed = subprocess.run(
            ["ssh-keygen", "-l", "-f", str(known)], capture_output=True, text=True, check=True
        )
        assert fingerprint(bastion.host_key) in listed.stdout


def _ssh_forward(
    bastion: InprocBastion, key: Path, known: Path, local: int, target: str
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            "ssh",
            "-N",
            "-F",
            "/dev/null",
            "-L",
            f"127.0.0.1:{local}:{target}",
            "-i",
            str(key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={known}",
            "-o",
            "ExitOnForwardFailure=yes",
            "-p",
            str(bastion.port),
            "demo@127.0.0.1",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _connect_when_up(port: int, proc: subprocess.Popen[bytes]) -> socket.socket:
    deadline = time.monotonic() + 15
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            if proc.poll() is not None:
                stderr = proc.stderr.read().decode() if proc.stderr else ""
                pytest.fail(f"ssh exited {proc.returncode}: {stderr}")
            if time.monotonic() > deadline:
                pytest.fail("ssh -L did not open its port")
            time.sleep(0.05)


def test_openssh_client_forwards_through_it(echo: EchoServer, tmp_path: Path) -> None:
    if shutil.which("ssh") is None:
        _need("ssh (openssh-client) is not installed")
    user = generate_key()
    key = tmp_path / "id_ed25519"
    key.write_text(user.private_text)
    key.chmod(0o600)
    known = tmp_path / "known_hosts"
    with InprocBastion(user.pkey, allowed=[("127.0.0.1", echo.port)], username="demo") as bastion:
        known.write_text(bastion.host_key_line() + "\n")
        local = _free_port()
        proc = _ssh_forward(bastion, key, known, local, f"127.0.0.1:{echo.port}")
        try:
            with _connect_when_up(local, proc) as conn:
                payload = os.urandom(1_000_000)
                threading.Thread(target=conn.sendall, args=(payload,), daemon=True).start()
                got = bytearray()
                while len(got) < len(payload):
                    data = conn.recv(65536)
                    assert data, "connection closed early"
                    got += data
                assert bytes(got) == payload

            # A forward the bastion does not allow: ssh accepts locally, then closes it.
            blocked_local = _free_port()
            blocked_target = ("127.0.0.1", _free_port())
            proc2 = _ssh_forward(
                bastion, key, known, blocked_local, f"{blocked_target[0]}:{blocked_target[1]}"
            )
            try:
                with _connect_when_up(blocked_local, proc2) as conn:
                    conn.settimeout(10)
                    assert conn.recv(10) == b""
                assert bastion.refused == [blocked_target]
            finally:
                # SIGKILL: OpenSSH 9.2 can miss a SIGTERM that lands just before its poll().
                proc2.kill()
                _, stderr = proc2.communicate(timeout=10)
            assert b"administratively prohibited" in stderr
        finally:
            proc.kill()
            proc.communicate(timeout=10)
    assert _bastion_threads() == []


def test_openssh_refuses_a_different_host_key(echo: EchoServer, tmp_path: Path) -> None:
    if shutil.which("ssh") is None:
        _need("ssh (openssh-client) is not installed")
    user = generate_key()
    key = tmp_path / "id_ed25519"
    key.write_text(user.private_text)
    key.chmod(0o600)
    known = tmp_path / "known_hosts"
    with InprocBastion(user.pkey, allowed=[("127.0.0.1", echo.port)]) as bastion:
        other = generate_key().pkey  # known_hosts says this bastion has another key
        known.write_text(f"[127.0.0.1]:{bastion.port} {public_line(other)}\n")
        proc = _ssh_forward(bastion, key, known, _free_port(), f"127.0.0.1:{echo.port}")
        _, stderr = proc.communicate(timeout=15)
        assert proc.returncode != 0
        assert b"HOST IDENTIFICATION HAS CHANGED" in stderr


def _profile(bastion: InprocBastion, key: Path, known: Path, endpoint: str) -> Profile:
    return Profile(
        name="inproc",
        bastion=parse_bastion(f"demo@127.0.0.1:{bastion.port}"),
        identity_file=key,
        known_hosts=known,
        endpoint=parse_endpoint(endpoint),
        password="none",
        connect_timeout=5,
    )


def test_tunnel_engine_through_the_inproc_bastion(echo: EchoServer, tmp_path: Path) -> None:
    user = generate_key()
    key = tmp_path / "id_ed25519"
    key.write_text(user.private_text)
    key.chmod(0o600)
    known = tmp_path / "known_hosts"
    with InprocBastion(user.pkey, allowed=[("127.0.0.1", echo.port)], username="demo") as bastion:
        known.write_text(bastion.host_key_line() + "\n")
        profile = _profile(bastion, key, known, f"127.0.0.1:{echo.port}")
        with open_tunnel(profile, host_keys=HostKeyPolicy()) as tunnel:
            port = tunnel.local_port
            assert port is not None
            for _ in range(3):
                with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
                    conn.sendall(b"ping")
                    assert conn.recv(4) == b"ping"
        assert bastion.active_forwards == 0 or _settles(lambda: bastion.active_forwards == 0)


def test_disconnect_all_drops_sessions_but_keeps_listening(
    echo: EchoServer, tmp_path: Path
) -> None:
    user = generate_key()
    with InprocBastion(user.pkey, allowed=[("127.0.0.1", echo.port)]) as bastion:
        client = _client(bastion, user.pkey, tmp_path)
        transport = client.get_transport()
        assert transport is not None
        chan = transport.open_channel("direct-tcpip", ("127.0.0.1", echo.port), ("127.0.0.1", 1))
        chan.sendall(b"x")
        assert chan.recv(1) == b"x"
        bastion.disconnect_all()
        assert _settles(lambda: not transport.is_active())
        client.close()
        _client(bastion, user.pkey, tmp_path).close()  # still accepting
    assert _bastion_threads() == []


def _settles(predicate: object, timeout: float = 5.0) -> bool:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True
