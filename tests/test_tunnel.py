"""The tunnel engine against the real lab: OpenSSH sshd as the bastion, PostgreSQL+PostGIS behind.

Covers: loopback-only listening, rows through the tunnel, each failure with its own message
within 15 s, host keys (changed / unknown / accepted), stop() hygiene, and supervision
(dropped sessions, a bastion away for 5 s, a host key changed under a running tunnel, a clock
jump).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.lab.postgres import Postgres
from tests.lab.profiles import PTS, make_profile, query
from tests.lab.sshd import Sshd
from tunnelman.core.errors import (
    AuthenticationFailed,
    BastionUnreachable,
    ForwardingFailed,
    PortBusyError,
    SSHKeyError,
    TunnelError,
)
from tunnelman.core.profiles import Bastion, Endpoint, Profile, with_overrides
from tunnelman.core.ssh.known_hosts import HostKeyChanged, HostKeyPolicy, HostKeyUnknown
from tunnelman.core.tunnel import Tunnel, TunnelState, TunnelStatus, open_tunnel

FAST = 15.0  # every failure must be reported within this many seconds


def listening_addresses(port: int) -> set[str]:
    """Local addresses in LISTEN state on `port`, read from /proc/net/tcp{,6}."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as fh:
            for line in fh.readlines()[1:]:
                fields = line.split()
                addr, _, port_hex = fields[1].rpartition(":")
                if fields[3] == "0A" and int(port_hex, 16) == port:
                    found.add(addr)
    return found


def non_loopback_address() -> str | None:
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # no packet is sent for UDP connect
        addr = s.getsockname()[0]
        if not addr.startswith("127."):
            return str(addr)
    return None


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Recorder:
    """Collects on_status snapshots; waits for a state."""

    def __init__(self) -> None:
        self.statuses: list[TunnelStatus] = []
        self._cond = threading.Condition()

    def __call__(self, status: TunnelStatus) -> None:
        with self._cond:
            self.statuses.append(status)
            self._cond.notify_all()

    @property
    def states(self) -> list[TunnelState]:
        return [s.state for s in self.statuses]

    def wait_for(self, state: TunnelState, after: int = 0, timeout: float = 20.0) -> TunnelStatus:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for s in self.statuses[after:]:
                    if s.state == state:
                        return s
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no {state} within {timeout} s: {self.states}")
                self._cond.wait(remaining)


@pytest.fixture
def bastion(make_sshd: Callable[..., Sshd]) -> Sshd:
    """A private bastion: these tests kill its sessions and stop it."""
    return make_sshd()


@pytest.fixture
def tunnels() -> Iterator[list[Tunnel]]:
    made: list[Tunnel] = []
    yield made
    for t in made:
        t.stop()


# ----------------------------------------------------------------------------- happy path


def test_rows_through_the_tunnel_on_loopback_only(
    sshd: Sshd, postgres: Postgres, tmp_path: Path
) -> None:
    recorder = Recorder()
    with open_tunnel(make_profile(sshd, postgres, tmp_path), on_status=recorder) as tunnel:
        port = tunnel.local_port
        assert port is not None
        assert listening_addresses(port) == {"0100007F"}  # 127.0.0.1 and nothing else
        other = non_loopback_address()
        if other is not None:
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((other, port), timeout=2).close()
        assert query(port, postgres, PTS) == 4
        assert query(port, postgres, "select postgis_lib_version()").startswith("3.")
        status = tunnel.status
        assert status.state == TunnelState.UP
        assert status.local_port == port
        assert status.since is not None
        assert status.to_json()["state"] == "up"
    assert recorder.states == [TunnelState.STARTING, TunnelState.UP, TunnelState.STOPPED]
    assert tunnel.status.state == TunnelState.STOPPED
    assert refused(port)


def test_fixed_port_and_connection_count(sshd: Sshd, postgres: Postgres, tmp_path: Path) -> None:
    port = closed_port()
    with open_tunnel(make_profile(sshd, postgres, tmp_path, local_port=port)) as tunnel:
        assert tunnel.local_port == port
        conns = [
            psycopg.connect(
                host="127.0.0.1",
                port=port,
                dbname="geo",
                user="postgres",
                password=postgres.password,
            )
            for _ in range(3)
        ]
        assert tunnel.status.connections == 3
        for c in conns:
            c.close()
        deadline = time.monotonic() + 5
        while tunnel.status.connections and time.monotonic() < deadline:
            time.sleep(0.05)
        assert tunnel.status.connections == 0


def test_local_port_argument_beats_the_profile(
    sshd: Sshd, postgres: Postgres, tmp_path: Path
) -> None:
    wanted = closed_port()
    profile = make_profile(sshd, postgres, tmp_path, local_port=closed_port())
    with open_tunnel(profile, local_port=wanted) as tunnel:
        assert tunnel.local_port == wanted


def test_stop_is_idempotent_fast_and_leaks_no_threads_or_fds(
    sshd: Sshd, postgres: Postgres, tmp_path: Path
) -> None:
    profile = make_profile(sshd, postgres, tmp_path)
    threads_before = threading.active_count()
    fds_before = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        tunnel = open_tunnel(profile, supervise=True)
        port = tunnel.start()
        assert query(port, postgres, PTS) == 4
        started = time.monotonic()
        tunnel.stop()
        tunnel.stop()
        assert time.monotonic() - started < 3
        assert refused(port)
    deadline = time.monotonic() + 5
    while threading.active_count() > threads_before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= threads_before, [t.name for t in threading.enumerate()]
    assert len(os.listdir("/proc/self/fd")) <= fds_before + 2


def test_start_twice_is_an_error(sshd: Sshd, postgres: Postgres, tmp_path: Path) -> None:
    with open_tunnel(make_profile(sshd, postgres, tmp_path)) as tunnel, pytest.raises(TunnelError):
        tunnel.start()


def test_sshtunnel_logs_go_to_our_logger_not_the_terminal(
    sshd: Sshd, postgres: Postgres, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with open_tunnel(make_profile(sshd, postgres, tmp_path)) as tunnel:
        assert tunnel.local_port is not None
        query(tunnel.local_port, postgres, PTS)
    captured = capfd.readouterr()
    assert captured.out == ""
    assert captured.err == ""


# ----------------------------------------------------------------------------- failures


def assert_fast_failure(
    profile: Profile, error: type[Exception], *words: str, port: int | None = None
) -> str:
    recorder = Recorder()
    tunnel = open_tunnel(profile, on_status=recorder)
    started = time.monotonic()
    with pytest.raises(error) as caught:
        tunnel.start()
    elapsed = time.monotonic() - started
    assert elapsed < FAST, f"took {elapsed:.1f} s"
    text = str(caught.value)
    for word in words:
        assert word in text, text
    assert tunnel.local_port is None
    assert tunnel.status.state == TunnelState.FAILED
    assert tunnel.status.error == text
    if port:
        assert listening_addresses(port) == set() or error is PortBusyError
    tunnel.stop()
    return text


def test_busy_port_names_the_port_and_the_process(
    sshd: Sshd, postgres: Postgres, tmp_path: Path
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        text = assert_fast_failure(
            make_profile(sshd, postgres, tmp_path, local_port=port),
            PortBusyError,
            f"local port {port} is already in use",
            f"pid {os.getpid()}",
            "--port",
        )
    assert "python" in text


def test_unknown_bastion_name(sshd: Sshd, postgres: Postgres, tmp_path: Path) -> None:
    profile = make_profile(sshd, postgres, tmp_path, bastion=Bastion("bastion.example.invalid"))
    assert_fast_failure(
        profile, BastionUnreachable, "bastion name bastion.example.invalid does not resolve"
    )


def test_refused_connection(sshd: Sshd, postgres: Postgres, tmp_path: Path) -> None:
    port = closed_port()
    profile = make_profile(sshd, postgres, tmp_path, bastion=Bastion("127.0.0.1", "x", port))
    assert_fast_failure(profile, BastionUnreachable, "refused the connection", str(port))


def test_timeout_when_nothing_speaks_ssh(sshd: Sshd, postgres: Postgres, tmp_path: Path) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # accepts TCP (backlog) but never says a word
        port = silent.getsockname()[1]
        profile = make_profile(
            sshd, postgres, tmp_path, bastion=Bastion("127.0.0.1", "x", port), connect_timeout=2
        )
        text = assert_fast_failure(profile, BastionUnreachable, "within 2 s")
    assert "timed out" in text


def test_wrong_key_is_authentication_failed(sshd: Sshd, postgres: Postgres, tmp_path: Path) -> None:
    from tests.lab.keys import make_key

    stranger, _ = make_key(tmp_path, "ed25519", name="stranger")
    profile = make_profile(sshd, postgres, tmp_path, identity_file=stranger)
    assert_fast_failure(profile, AuthenticationFailed, "refused key", str(stranger))


def test_endpoint_unreachable_from_the_bastion(
    sshd: Sshd, postgres: Postgres, tmp_path: Path
) -> None:
    endpoint = Endpoint("127.0.0.1", closed_port())
    profile = make_profile(sshd, postgres, tmp_path, endpoint=endpoint)
    assert_fast_failure(
        profile,
        ForwardingFailed,
        f"cannot reach the database endpoint {endpoint.host}:{endpoint.port}",
    )


def test_forwarding_refused_by_the_bastion(
    make_sshd: Callable[..., Sshd], postgres: Postgres, tmp_path: Path
) -> None:
    server = make_sshd(allow_tcp_forwarding=False)
    text = assert_fast_failure(
        make_profile(server, postgres, tmp_path), ForwardingFailed, "administratively prohibited"
    )
    assert "AllowTcpForwarding" in text


def test_world_readable_key_is_refused_before_connecting(
    sshd: Sshd, postgres: Postgres, tmp_path: Path
) -> None:
    assert sshd.key_path is not None
    key = tmp_path / "id_lab"
    key.write_bytes(sshd.key_path.read_bytes())
    key.chmod(0o644)
    text = assert_fast_failure(
        make_profile(sshd, postgres, tmp_path, identity_file=key), SSHKeyError, f"chmod 600 {key}"
    )
    assert "readable by others" in text


def test_missing_endpoint_is_a_config_error(sshd: Sshd, postgres: Postgres, tmp_path: Path) -> None:
    from tunnelman.core.errors import ConfigError

    profile = make_profile(sshd, postgres, tmp_path, endpoint=None)
    assert_fast_failure(profile, ConfigError, "has no endpoint")


# ----------------------------------------------------------------------------- host keys


def test_changed_host_key_refused_before_auth_and_no_port(
    make_sshd: Callable[..., Sshd], postgres: Postgres, tmp_path: Path
) -> None:
    server = make_sshd()
    old_fp = server.host_key_fingerprint()
    profile = make_profile(server, postgres, tmp_path)  # known_hosts holds the old key
    new_fp = server.rotate_host_key()
    port = closed_port()
    text = assert_fast_failure(
        with_overrides(profile, local_port=port),
        HostKeyChanged,
        "host key",
        old_fp,
        new_fp,
        f"{profile.known_hosts} line 1",
        "ssh-keygen",
        port=port,
    )
    assert "CHANGED" in text
    # the key was never offered: sshd saw no authentication attempt at all
    assert "Accepted publickey" not in server.log_text()
    assert "Failed publickey" not in server.log_text()


def test_unknown_host_key_without_a_person_is_refused(
    sshd: Sshd, postgres: Postgres, tmp_path: Path
) -> None:
    profile = make_profile(sshd, postgres, tmp_path)
    profile.known_hosts.write_text("")
    assert_fast_failure(
        profile, HostKeyUnknown, "--accept-new-host-key", sshd.host_key_fingerprint()
    )


def test_accept_new_records_the_key(sshd: Sshd, postgres: Postgres, tmp_path: Path) -> None:
    import subprocess

    profile = make_profile(sshd, postgres, tmp_path)
    profile.known_hosts.unlink()
    with open_tunnel(profile, host_keys=HostKeyPolicy(accept_new=True)) as tunnel:
        assert tunnel.local_port is not None
        assert query(tunnel.local_port, postgres, PTS) == 4
    found = subprocess.run(
        ["ssh-keygen", "-F", sshd.known_hosts_name(), "-f", str(profile.known_hosts)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert found.returncode == 0
    assert sshd.host_public_key().split()[1] in found.stdout


def test_ask_callback_sees_the_openssh_fingerprint(
    sshd: Sshd, postgres: Postgres, tmp_path: Path
) -> None:
    profile = make_profile(sshd, postgres, tmp_path)
    profile.known_hosts.unlink()
    seen = []

    def ask(info: Any) -> bool:
        seen.append(info)
        return True

    with open_tunnel(profile, host_keys=HostKeyPolicy(ask=ask)):
        pass
    assert [i.fingerprint for i in seen] == [sshd.host_key_fingerprint()]
    assert seen[0].host == "127.0.0.1"
    assert seen[0].port == sshd.port


def test_hashed_known_hosts_entry_is_recognised(
    sshd: Sshd, postgres: Postgres, tmp_path: Path
) -> None:
    profile = make_profile(sshd, postgres, tmp_path)
    sshd.write_known_hosts(profile.known_hosts, hashed=True)
    assert profile.known_hosts.read_text().startswith("|1|")
    with open_tunnel(profile) as tunnel:
        assert tunnel.status.state == TunnelState.UP


def test_known_key_type_is_preferred_in_the_handshake(
    make_sshd: Callable[..., Sshd], postgres: Postgres, tmp_path: Path
) -> None:
    """The bastion offers ed25519 and rsa; known_hosts has only rsa: that one is negotiated."""
    server = make_sshd(host_key_types=("ed25519", "rsa"))
    profile = make_profile(server, postgres, tmp_path)
    profile.known_hosts.write_text(server.host_key_line(kind="rsa") + "\n")
    with open_tunnel(profile) as tunnel:
        assert tunnel.status.state == TunnelState.UP


def test_cancel_aborts_start(sshd: Sshd, postgres: Postgres, tmp_path: Path) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        profile = make_profile(
            sshd,
            postgres,
            tmp_path,
            bastion=Bastion("127.0.0.1", "x", silent.getsockname()[1]),
            connect_timeout=30,
        )
        cancel = threading.Event()
        threading.Timer(0.5, cancel.set).start()
        started = time.monotonic()
        with pytest.raises(TunnelError, match="cancelled"):
            open_tunnel(profile, cancel=cancel).start()
        assert time.monotonic() - started < 3


# ----------------------------------------------------------------------------- supervision


def test_dropped_sessions_reconnect_on_the_same_port(
    bastion: Sshd, postgres: Postgres, tmp_path: Path, tunnels: list[Tunnel]
) -> None:
    recorder = Recorder()
    tunnel = open_tunnel(
        make_profile(bastion, postgres, tmp_path), supervise=True, on_status=recorder
    )
    tunnels.append(tunnel)
    port = tunnel.start()
    assert query(port, postgres, PTS) == 4
    mark = len(recorder.statuses)
    assert bastion.kill_sessions() >= 1
    started = time.monotonic()
    recorder.wait_for(TunnelState.RECONNECTING, after=mark, timeout=5)
    recorder.wait_for(TunnelState.UP, after=mark, timeout=5)
    assert query(port, postgres, PTS) == 4
    assert time.monotonic() - started < 5
    assert tunnel.local_port == port
    assert tunnel.status.reconnects == 1


def test_bastion_away_for_5_s_then_back(
    bastion: Sshd, postgres: Postgres, tmp_path: Path, tunnels: list[Tunnel]
) -> None:
    recorder = Recorder()
    tunnel = open_tunnel(
        make_profile(bastion, postgres, tmp_path), supervise=True, on_status=recorder
    )
    tunnels.append(tunnel)
    port = tunnel.start()
    bastion.stop()
    recorder.wait_for(TunnelState.RECONNECTING, timeout=5)
    assert listening_addresses(port) == {"0100007F"}  # the port stays bound meanwhile
    time.sleep(5)
    away = tunnel.status
    assert away.state == TunnelState.RECONNECTING
    assert away.error
    bastion.start()
    back = time.monotonic()
    assert query(port, postgres, PTS) == 4  # waits for the reconnect instead of being refused
    assert time.monotonic() - back < 5
    assert tunnel.status.state == TunnelState.UP


def test_host_key_changed_on_reconnect_fails_and_closes_the_port(
    bastion: Sshd, postgres: Postgres, tmp_path: Path, tunnels: list[Tunnel]
) -> None:
    recorder = Recorder()
    tunnel = open_tunnel(
        make_profile(bastion, postgres, tmp_path), supervise=True, on_status=recorder
    )
    tunnels.append(tunnel)
    port = tunnel.start()
    bastion.rotate_host_key()
    bastion.kill_sessions()
    failed = recorder.wait_for(TunnelState.FAILED, timeout=15)
    assert failed.error is not None
    assert "host key" in failed.error
    assert bastion.host_key_fingerprint() in failed.error
    assert refused(port)
    time.sleep(1.5)  # and it does not keep trying
    assert recorder.states.count(TunnelState.FAILED) == 1
    assert tunnel.status.state == TunnelState.FAILED


def test_unsupervised_tunnel_fails_when_the_bastion_drops(
    bastion: Sshd, postgres: Postgres, tmp_path: Path, tunnels: list[Tunnel]
) -> None:
    recorder = Recorder()
    tunnel = open_tunnel(make_profile(bastion, postgres, tmp_path), on_status=recorder)
    tunnels.append(tunnel)
    port = tunnel.start()
    bastion.kill_sessions()
    failed = recorder.wait_for(TunnelState.FAILED, timeout=5)
    assert failed.error == "the connection to the bastion was lost"
    assert refused(port)


def test_clock_jump_reconnects_at_once(
    bastion: Sshd, postgres: Postgres, tmp_path: Path, tunnels: list[Tunnel]
) -> None:
    """A suspend/resume is simulated through the tunnel's wall clock (the system clock is shared)."""
    tunnel = open_tunnel(make_profile(bastion, postgres, tmp_path), supervise=True)
    tunnels.append(tunnel)
    port = tunnel.start()
    tunnel._wall = lambda: time.time() + 3600
    deadline = time.monotonic() + 5
    while tunnel.status.reconnects == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tunnel.status.reconnects == 1
    assert tunnel.status.state == TunnelState.UP
    assert query(port, postgres, PTS) == 4


def test_stop_during_reconnect_is_fast(
    bastion: Sshd, postgres: Postgres, tmp_path: Path, tunnels: list[Tunnel]
) -> None:
    recorder = Recorder()
    tunnel = open_tunnel(
        make_profile(bastion, postgres, tmp_path), supervise=True, on_status=recorder
    )
    port = tunnel.start()
    bastion.stop()
    recorder.wait_for(TunnelState.RECONNECTING, timeout=5)
    started = time.monotonic()
    tunnel.stop()
    assert time.monotonic() - started < 3
    assert tunnel.status.state == TunnelState.STOPPED
    assert refused(port)


def test_key_refused_on_reconnect_fails_for_good(
    bastion: Sshd, postgres: Postgres, tmp_path: Path, tunnels: list[Tunnel]
) -> None:
    recorder = Recorder()
    tunnel = open_tunnel(
        make_profile(bastion, postgres, tmp_path), supervise=True, on_status=recorder
    )
    tunnels.append(tunnel)
    port = tunnel.start()
    bastion.clear_authorized()
    bastion.kill_sessions()
    failed = recorder.wait_for(TunnelState.FAILED, timeout=15)
    assert failed.error is not None
    assert "authentication failed" in failed.error
    assert refused(port)
    assert tunnel.status.reconnects == 0
