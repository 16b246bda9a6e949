"""The test lab itself works: real sshd, forwarding to PostGIS, bastion faults, TLS, keyring,
moto, network namespaces, the private HOME and the skip/fail rule."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from tests.conftest import LabProfile
from tests.lab import need
from tests.lab.keys import make_key
from tests.lab.moto_server import MotoServer
from tests.lab.netns import NetnsPair, tcp_probe
from tests.lab.ports import free_port, port_open, wait_port
from tests.lab.postgres import PTS_ROWS, Postgres
from tests.lab.sshd import Sshd

LISTENER = (
    "import socket,sys\n"
    "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('0.0.0.0', int(sys.argv[1]))); s.listen(16)\n"
    "while True: s.accept()[0].close()\n"
)


def known_hosts_for(server: Sshd, tmp_path: Path) -> Path:
    path = tmp_path / f"known_hosts_{server.port}"
    path.write_text(server.host_key_line() + "\n")
    return path


def ssh(server: Sshd, known_hosts: Path, *command: str) -> subprocess.CompletedProcess[str]:
    assert server.key_path is not None
    return subprocess.run(
        server.ssh_argv(server.key_path, known_hosts, *command),
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        check=False,
    )


@contextmanager
def forward(server: Sshd, known_hosts: Path, target: str) -> Iterator[int]:
    """``ssh -N -L 127.0.0.1:<free>:<target>`` through ``server``; yields the local port."""
    assert server.key_path is not None
    local = free_port()
    proc = subprocess.Popen(
        server.ssh_argv(
            server.key_path, known_hosts, options=["-N", "-L", f"127.0.0.1:{local}:{target}"]
        ),
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 15
        while not port_open("127.0.0.1", local):
            if proc.poll() is not None:
                pytest.fail(
                    f"ssh -L exited {proc.returncode}: {proc.stderr and proc.stderr.read()}"
                )
            assert time.monotonic() < deadline, "ssh -L did not open its port"
            time.sleep(0.05)
        yield local
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# -- sshd --------------------------------------------------------------------------------------


def test_ssh_with_strict_host_key_checking_runs_true(sshd: Sshd, tmp_path: Path) -> None:
    res = ssh(sshd, known_hosts_for(sshd, tmp_path), "true")
    assert res.returncode == 0, res.stderr
    assert sshd.destination == f"{sshd.user}@127.0.0.1:{sshd.port}"


def test_hashed_known_hosts_line_is_accepted(sshd: Sshd, tmp_path: Path) -> None:
    kh = tmp_path / "kh_hashed"
    kh.write_text(sshd.host_key_line(hashed=True) + "\n")
    assert kh.read_text().startswith("|1|")
    assert ssh(sshd, kh, "true").returncode == 0


def test_unknown_host_key_is_refused(sshd: Sshd, tmp_path: Path) -> None:
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    res = ssh(sshd, empty, "true")
    assert res.returncode == 255
    assert "Host key verification failed" in res.stderr


def test_fingerprint_matches_ssh_keygen(sshd: Sshd) -> None:
    pub = sshd.host_key_paths["ed25519"].with_name("ssh_host_ed25519_key.pub")
    out = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(pub)],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout
    fp = sshd.host_key_fingerprint()
    assert fp.startswith("SHA256:")
    assert not fp.endswith("=")
    assert out.split()[1] == fp


def test_forward_reaches_postgis(sshd: Sshd, postgres: Postgres, tmp_path: Path) -> None:
    with (
        forward(sshd, known_hosts_for(sshd, tmp_path), f"127.0.0.1:{postgres.port}") as port,
        psycopg.connect(postgres.dsn(port=port)) as conn,
    ):
        row = conn.execute("select postgis_full_version()").fetchone()
        assert row is not None
        assert row[0].startswith("POSTGIS=")
        names = [r[0] for r in conn.execute("select name from public.pts order by id")]
        assert names == [r[0] for r in PTS_ROWS]


def test_kill_sessions_drops_connections_but_keeps_listener(
    make_sshd: Callable[..., Sshd], tmp_path: Path
) -> None:
    server = make_sshd()
    kh = known_hosts_for(server, tmp_path)
    assert server.key_path is not None
    proc = subprocess.Popen(
        server.ssh_argv(server.key_path, kh, "sleep 60"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: bool(server.sessions()), 15, "an ssh session")
        time.sleep(0.3)  # let the session reach its command
        listener = server.pid
        assert server.kill_sessions() >= 1
        assert proc.wait(timeout=15) == 255
        assert server.pid == listener
        assert server.sessions() == []
        assert ssh(server, kh, "true").returncode == 0
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_stop_start_keeps_port_and_host_key(make_sshd: Callable[..., Sshd], tmp_path: Path) -> None:
    server = make_sshd()
    kh = known_hosts_for(server, tmp_path)
    port, fingerprint = server.port, server.host_key_fingerprint()
    server.stop()
    assert not server.running
    assert not port_open("127.0.0.1", port)
    server.start()
    assert (server.port, server.host_key_fingerprint()) == (port, fingerprint)
    assert ssh(server, kh, "true").returncode == 0


def test_rotate_host_key_is_a_changed_key(make_sshd: Callable[..., Sshd], tmp_path: Path) -> None:
    server = make_sshd()
    kh = known_hosts_for(server, tmp_path)
    old = server.host_key_fingerprint()
    new = server.rotate_host_key()
    assert new != old
    assert new == server.host_key_fingerprint()
    res = ssh(server, kh, "true")
    assert res.returncode == 255
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in res.stderr


def test_extra_host_key_types(make_sshd: Callable[..., Sshd], tmp_path: Path) -> None:
    server = make_sshd(host_key_types=("rsa", "ecdsa", "ed25519"))
    kh = server.write_known_hosts(tmp_path / "kh_all")
    assert len(kh.read_text().splitlines()) == 3
    assert server.host_key_line(kind="rsa").split()[1] == "ssh-rsa"
    assert server.host_key_line(kind="ecdsa").split()[1] == "ecdsa-sha2-nistp256"
    assert ssh(server, kh, "true").returncode == 0


@pytest.mark.parametrize(
    "options", [{"allow_tcp_forwarding": False}, {"permit_open": ["127.0.0.1:1"]}]
)
def test_forwarding_can_be_refused(
    make_sshd: Callable[..., Sshd], postgres: Postgres, tmp_path: Path, options: dict[str, object]
) -> None:
    server = make_sshd(**options)
    kh = known_hosts_for(server, tmp_path)
    with (
        forward(server, kh, f"127.0.0.1:{postgres.port}") as port,
        pytest.raises(psycopg.OperationalError),
    ):
        psycopg.connect(postgres.dsn(port=port, connect_timeout=5)).close()
    log = server.log_text()
    assert "refused local port forward" in log or "the request was denied" in log, log


def test_make_key_formats(tmp_path: Path) -> None:
    import paramiko

    path, pub = make_key(tmp_path, "rsa", "pem", passphrase="secret-pp")
    assert path.read_text().startswith("-----BEGIN RSA PRIVATE KEY-----")
    assert path.stat().st_mode & 0o777 == 0o600
    assert pub.startswith("ssh-rsa ")
    assert isinstance(paramiko.RSAKey.from_private_key_file(str(path), "secret-pp"), paramiko.PKey)
    path, pub = make_key(tmp_path, "ecdsa", "pem")
    assert path.read_text().startswith("-----BEGIN EC PRIVATE KEY-----")
    path, pub = make_key(tmp_path, "ed25519")
    assert path.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    with pytest.raises(ValueError, match="PEM"):
        make_key(tmp_path, "ed25519", "pem")


# -- PostgreSQL --------------------------------------------------------------------------------


def test_postgres_requires_the_password(postgres: Postgres) -> None:
    with psycopg.connect(postgres.dsn()) as conn:
        assert conn.execute("select current_user").fetchone() == ("postgres",)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(postgres.dsn(password="wrong")).close()


def test_postgres_tls_verifies_the_endpoint_name(postgres_tls: Postgres) -> None:
    assert postgres_tls.ca_path is not None
    name = postgres_tls.endpoint_name
    assert name.endswith(".rds.amazonaws.com")
    dsn = postgres_tls.dsn(
        host=name,
        hostaddr="127.0.0.1",
        sslmode="verify-full",
        sslrootcert=str(postgres_tls.ca_path),
    )
    with psycopg.connect(dsn) as conn:
        row = conn.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()").fetchone()
        assert row == (True,)
    # Through a tunnel a client talks to 127.0.0.1: the certificate does not name it.
    with pytest.raises(psycopg.OperationalError, match="does not match host name"):
        psycopg.connect(
            postgres_tls.dsn(sslmode="verify-full", sslrootcert=str(postgres_tls.ca_path))
        ).close()


# -- keyring, moto -----------------------------------------------------------------------------


def test_keyring_round_trip(keyring_backend: object, tmp_home: Path) -> None:
    import keyring

    assert type(keyring_backend).__module__ == "keyring.backends.SecretService"
    keyring.set_password("tunnelman-lab-test", "lab", "s3cr3t")
    try:
        assert keyring.get_password("tunnelman-lab-test", "lab") == "s3cr3t"
    finally:
        keyring.delete_password("tunnelman-lab-test", "lab")
    assert keyring.get_password("tunnelman-lab-test", "lab") is None


def test_with_keyring_keeps_ssh_auth_sock() -> None:
    if os.environ.get("TUNNELMAN_LAB_KEYRING") != "1":
        pytest.skip("only meaningful under scripts/with-keyring")
    assert "keyring" not in os.environ.get("SSH_AUTH_SOCK", "")


def test_moto_answers_rds(aws_env: MotoServer) -> None:
    import boto3

    assert os.environ["AWS_ENDPOINT_URL"] == aws_env.url
    rds = boto3.client("rds")
    rds.create_db_cluster(
        DBClusterIdentifier="database-1",
        Engine="aurora-postgresql",
        MasterUsername="postgres",
        MasterUserPassword="not-a-secret-123",
    )
    ids = [c["DBClusterIdentifier"] for c in rds.describe_db_clusters()["DBClusters"]]
    assert ids == ["database-1"]
    aws_env.reset()
    assert rds.describe_db_clusters()["DBClusters"] == []


# -- network namespaces ------------------------------------------------------------------------


def test_netns_pair_connects_and_link_down_cuts(netns_pair: NetnsPair) -> None:
    net = netns_pair
    port = 7777
    listeners = [
        net.db.popen([sys.executable, "-c", LISTENER, str(port)]),
        net.bastion.popen([sys.executable, "-c", LISTENER, str(port)]),
    ]
    try:
        wait_for(lambda: tcp_probe(net.bastion, net.db_addr, port), 10, "db listener")
        wait_for(lambda: tcp_probe(None, net.bastion_addr, port), 10, "bastion listener")
        assert not tcp_probe(None, net.db_addr, port), "db must not be reachable directly"
        net.link_down("private")
        assert not tcp_probe(net.bastion, net.db_addr, port)
        net.link_up("private")
        wait_for(lambda: tcp_probe(net.bastion, net.db_addr, port), 10, "private link back")
        net.link_down()
        assert not tcp_probe(None, net.bastion_addr, port)
        net.link_up()
        wait_for(lambda: tcp_probe(None, net.bastion_addr, port), 10, "uplink back")
    finally:
        for p in listeners:
            p.kill()
            p.wait(timeout=10)


def test_vpc_bastion_and_database_in_namespaces(
    netns_pair: NetnsPair,
    make_sshd: Callable[..., Sshd],
    make_postgres: Callable[..., Postgres],
    tmp_path: Path,
) -> None:
    net = netns_pair
    pg = make_postgres(host=net.db_addr, port=5432, netns=net.db.name)
    bastion = make_sshd(host=net.bastion_addr, port=22, netns=net.bastion.name)
    assert bastion.known_hosts_name() == net.bastion_addr
    wait_port(net.bastion_addr, 22, timeout=10)
    assert not tcp_probe(None, net.db_addr, 5432)
    with (
        forward(bastion, known_hosts_for(bastion, tmp_path), f"{net.db_addr}:5432") as port,
        psycopg.connect(pg.dsn(host="127.0.0.1", port=port)) as conn,
    ):
        row = conn.execute("select inet_server_addr()::text").fetchone()
        assert row == (f"{net.db_addr}/32",)


# -- HOME, profiles, skip/fail -----------------------------------------------------------------


def test_tmp_home_isolates(tmp_home: Path) -> None:
    for key in ("XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME"):
        assert Path(os.environ[key]).is_relative_to(tmp_home)
    assert os.environ["HOME"] == str(tmp_home)
    assert Path(os.environ["TUNNELMAN_CONFIG"]).is_relative_to(tmp_home)
    assert Path(os.environ["XDG_RUNTIME_DIR"]).stat().st_mode & 0o777 == 0o700
    assert "SSH_AUTH_SOCK" not in os.environ
    assert Path("~").expanduser() == tmp_home


def test_lab_profile_loads_with_the_real_loader(lab_profile: LabProfile) -> None:
    from tunnelman.core import profiles

    p = profiles.load().get("lab")
    assert p.bastion is not None
    assert p.endpoint is not None
    assert (p.bastion.user, p.bastion.host, p.bastion.port) == (
        lab_profile.sshd.user,
        "127.0.0.1",
        lab_profile.sshd.port,
    )
    assert (p.endpoint.host, p.endpoint.port) == ("127.0.0.1", lab_profile.postgres.port)
    assert (p.database, p.user) == ("geo", "postgres")
    assert p.identity_file == lab_profile.identity_file
    assert p.known_hosts == lab_profile.known_hosts
    lab_profile.write(local_port=5433, password="none")
    p = profiles.load().get("lab")
    assert (p.local_port, p.password) == (5433, "none")


@pytest.mark.parametrize(
    ("ci", "outcome"),
    [
        (None, "skip"),
        ("", "skip"),
        ("0", "skip"),
        ("false", "skip"),
        ("true", "fail"),
        ("1", "fail"),
    ],
)
def test_need_skips_locally_and_fails_in_ci(
    monkeypatch: pytest.MonkeyPatch, ci: str | None, outcome: str
) -> None:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    expected = pytest.skip.Exception if outcome == "skip" else pytest.fail.Exception
    with pytest.raises(expected, match="no such service"):
        need("no such service")
