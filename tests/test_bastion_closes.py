"""A bastion that hangs up at each stage gives one line saying so, never "aborted" or a traceback.

paramiko re-raises its transport thread's EOFError / ConnectionResetError in the caller; click
turns a stray EOFError into "Aborted" (exit 130). The bastions here are real servers on loopback
that close at a chosen moment: a raw socket (before or right after the SSH banner) and a paramiko
server (during login, or when asked to open the forward), driven through the real CLI.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest
from paramiko.common import AUTH_FAILED, AUTH_SUCCESSFUL, OPEN_FAILED_CONNECT_FAILED

from tests.cli import RunCli
from tests.lab.toml_profile import write_profile
from tests.test_cli_up import errline, no_traceback


class ClosingBastion:
    """A loopback server that hangs up at `stage`: accept, banner, auth or forward."""

    def __init__(self, stage: str, tmp: Path) -> None:
        self.stage = stage
        self.host_key = paramiko.Ed25519Key.from_private_key_file(_host_key(tmp))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        if self.stage == "accept":
            conn.close()
            return
        if self.stage == "banner":
            conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
            conn.settimeout(5)
            try:
                conn.recv(4096)
            finally:
                conn.close()
            return
        transport = paramiko.Transport(conn)
        transport.add_server_key(self.host_key)
        transport.start_server(server=_Server(self.stage, transport))
        for _ in range(100):  # bounded: 10 s
            if not transport.is_active() or self.stop.wait(0.1):
                break
        transport.close()

    def close(self) -> None:
        self.stop.set()
        self.listener.close()
        self.thread.join(5)


class _Server(paramiko.ServerInterface):
    def __init__(self, stage: str, transport: paramiko.Transport) -> None:
        self.stage = stage
        self.transport = transport

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        if self.stage == "auth":
            self.transport.sock.shutdown(socket.SHUT_RDWR)
            return AUTH_FAILED
        return AUTH_SUCCESSFUL

    def check_channel_direct_tcpip_request(
        self, chanid: int, origin: tuple[str, int], destination: tuple[str, int]
    ) -> int:
        self.transport.sock.shutdown(socket.SHUT_RDWR)
        return OPEN_FAILED_CONNECT_FAILED


def _host_key(tmp: Path) -> str:
    path = tmp / "host_ed25519"
    if not path.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return str(path)


@pytest.fixture
def closing(request: pytest.FixtureRequest, tmp_home: Path) -> Iterator[ClosingBastion]:
    server = ClosingBastion(request.param, tmp_home)
    try:
        key = tmp_home / "id_user"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        write_profile(
            Path(os.environ["TUNNELMAN_CONFIG"]),
            "x",
            bastion=f"u@127.0.0.1:{server.port}",
            identity_file=key,
            known_hosts=tmp_home / "known_hosts",
            endpoint="127.0.0.1:5432",
            password="none",
            connect_timeout=10,
        )
        yield server
    finally:
        server.close()


WHERE = {
    "accept": "closed the connection during the SSH handshake",
    "banner": "closed the connection during the SSH handshake",
    "auth": "closed the connection during login as u",
    "forward": "closed the connection when asked to forward to 127.0.0.1:5432",
}
# The exit code of each stage's failure (`check` keeps 1 for any failed step).
EXIT = {"accept": 3, "banner": 3, "auth": 4, "forward": 6}


@pytest.mark.parametrize("closing", list(WHERE), indirect=True)
@pytest.mark.parametrize("command", ["up", "psql", "check"])
def test_a_bastion_hanging_up_is_one_clear_line(
    run_cli: RunCli, closing: ClosingBastion, command: str
) -> None:
    args = {
        "up": ["up", "x", "--accept-new-host-key"],
        "psql": ["psql", "--accept-new-host-key", "x", "-c", "select 1"],
        "check": ["check", "x", "--accept-new-host-key"],
    }[command]
    result = run_cli(*args, timeout=60)
    no_traceback(result.stdout, result.stderr)
    assert result.returncode == (1 if command == "check" else EXIT[closing.stage]), result
    assert "aborted" not in result.stderr.lower()
    expected = WHERE[closing.stage]
    if command == "check":
        assert expected in result.stdout + result.stderr, result
    else:
        assert expected in errline(result.stderr)
