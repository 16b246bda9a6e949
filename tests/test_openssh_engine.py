"""engine = "openssh" (tunnelman/core/openssh_engine.py) against the real lab sshd + PostGIS.

The system ssh forwards and psql works through it, `open_tunnel(profile)` hands such a profile to the
engine, host keys follow tunnelman's policy (changed → HostKeyChanged with both fingerprints,
unknown → asked / refused / accepted and recorded before ssh runs), ssh's failures become
tunnelman's errors, a missing ssh binary is a clear error, the agent-style supervision restarts
ssh after the bastion drops it, and ssh never outlives a SIGKILLed tunnelman.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.cli import RunCli
from tests.conftest import LabProfile
from tests.lab.keys import make_key
from tests.lab.ports import free_port, port_open, wait_port_closed
from tests.lab.postgres import Postgres
from tests.lab.profiles import PTS, query
from tests.lab.profiles import make_profile as shared_profile
from tests.lab.sshd import Sshd
from tunnelman.core.errors import (
    AuthenticationFailed,
    BastionUnreachable,
    ForwardingFailed,
    PortBusyError,
)
from tunnelman.core.profiles import Bastion, Profile, with_overrides
from tunnelman.core.ssh.known_hosts import (
    HostKeyChanged,
    HostKeyInfo,
    HostKeyPolicy,
    HostKeyUnknown,
)
from tunnelman.core.tunnel import TunnelState, TunnelStatus, open_tunnel
from tunnelman.core.tunnel import openssh as openssh_engine
from tunnelman.core.tunnel.openssh import OpenSSHMissing, OpenSSHTunnel
from tunnelman.core.tunnel.paramiko_engine import ParamikoTunnel

pytestmark = pytest.mark.skipif(shutil.which("ssh") is None, reason="no ssh client")


def make_profile(server: Sshd, pg: Postgres, tmp_path: Path, **changes: Any) -> Profile:
    """The shared lab profile (tests/lab/profiles.py) with engine = "openssh", keepalive 2 s."""
    return shared_profile(server, pg, tmp_path, **{"engine": "openssh", "keepalive": 2, **changes})


def ssh_children() -> list[int]:
    """Our ssh processes (children of the watchdog shells we started)."""
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if cmd and cmd[0] == b"sh" and b"tunnelman-ssh" in cmd and int(stat[1]) == me:
            found.append(int(entry))
    return found


def test_tunnel_hands_openssh_profiles_to_the_engine(
    sshd: Sshd, postgres: Postgres, tmp_path: Path
) -> None:
    profile = make_profile(sshd, postgres, tmp_path)
    assert type(open_tunnel(profile)) is OpenSSHTunnel
    assert type(open_tunnel(with_overrides(profile, engine="sshtunnel"))) is ParamikoTunnel


def test_forwards_on_loopback_and_psql_works(
    sshd: Sshd, postgres: Postgres, tmp_path: Path
) -> None:
    profile = make_profile(sshd, postgres, tmp_path)
    states: list[TunnelState] = []

    def on_status(status: TunnelStatus) -> None:
        states.append(status.state)

    tunnel = open_tunnel(profile, local_port=0, on_status=on_status)
    port = tunnel.start()
    try:
        assert tunnel.status.state == TunnelState.UP
        assert query(port, postgres, PTS) == 4
        psql = shutil.which("psql")
        if psql:
            env = dict(os.environ, PGPASSWORD=postgres.password)
            out = subprocess.run(
                [psql, "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", "geo", "-Atc",
                 "select postgis_lib_version() is not null"],
                env=env, capture_output=True, text=True, timeout=30, check=True,
            )  # fmt: skip
            assert out.stdout.strip() == "t"
        listening = Path("/proc/net/tcp").read_text()
        assert f"0100007F:{port:04X}" in listening
        assert f"00000000:{port:04X}" not in listening
        assert len(ssh_children()) == 1
    finally:
        tunnel.stop()
    assert states[:2] == [TunnelState.STARTING, TunnelState.UP]
    final: TunnelStatus = tunnel.status
    assert final.state == TunnelState.STOPPED
    wait_port_closed("127.0.0.1", port, timeout=5)
    assert ssh_children() == []


def test_fixed_port_and_port_busy(sshd: Sshd, postgres: Postgres, tmp_path: Path) -> None:
    port = free_port()
    profile = make_profile(sshd, postgres, tmp_path, local_port=port)
    with open_tunnel(profile) as tunnel:
        assert tunnel.local_port == port
        assert query(port, postgres, PTS) == 4
        with pytest.raises(PortBusyError, match=f"local port {port} is already in use"):
            open_tunnel(profile).start()


def test_changed_host_key_is_refused_with_both_fingerprints(
    sshd: Sshd, postgres: Postgres, tmp_path: Path
) -> None:
    _key, other = make_key(tmp_path / "k", "ed25519", name="other")
    alg, b64 = other.split()[:2]
    known = tmp_path / "known_hosts"
    known.write_text(f"{sshd.known_hosts_name()} {alg} {b64}\n")
    profile = make_profile(sshd, postgres, tmp_path)
    with pytest.raises(HostKeyChanged) as info:
        open_tunnel(profile, host_keys=HostKeyPolicy(accept_new=True)).start()
    assert sshd.host_key_fingerprint() in str(info.value)
    assert info.value.line == 1
    assert known.read_text().count("\n") == 1  # nothing recorded
    assert ssh_children() == []


def test_unknown_host_key_refused_asked_or_accepted(
    sshd: Sshd, postgres: Postgres, tmp_path: Path
) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("")
    profile = make_profile(sshd, postgres, tmp_path)
    with pytest.raises(HostKeyUnknown, match="there is no terminal to ask"):
        open_tunnel(profile).start()
    assert ssh_children() == []
    asked: list[HostKeyInfo] = []

    def no(info: HostKeyInfo) -> bool:
        asked.append(info)
        return False

    with pytest.raises(HostKeyUnknown, match="not accepted"):
        open_tunnel(profile, host_keys=HostKeyPolicy(ask=no)).start()
    assert asked[0].fingerprint == sshd.host_key_fingerprint()
    assert known.read_text() == ""
    with open_tunnel(profile, host_keys=HostKeyPolicy(accept_new=True)) as tunnel:
        assert tunnel.local_port is not None
        assert query(tunnel.local_port, postgres, PTS) == 4
    assert sshd.known_hosts_name() in known.read_text()


def test_refused_key_is_authentication_failed(
    sshd: Sshd, postgres: Postgres, tmp_path: Path
) -> None:
    stranger, _pub = make_key(tmp_path / "k", "ed25519", name="stranger")
    profile = make_profile(sshd, postgres, tmp_path, identity_file=stranger)
    start = time.monotonic()
    with pytest.raises(AuthenticationFailed, match=r"refused key .*stranger"):
        open_tunnel(profile).start()
    assert time.monotonic() - start < 15


def test_key_readable_by_others_refused_before_ssh(
    sshd: Sshd, postgres: Postgres, tmp_path: Path
) -> None:
    assert sshd.key_path is not None
    loose = tmp_path / "loose"
    shutil.copyfile(sshd.key_path, loose)
    loose.chmod(0o644)
    profile = make_profile(sshd, postgres, tmp_path, identity_file=loose)
    with pytest.raises(Exception, match="chmod 600"):
        open_tunnel(profile).start()


def test_bastion_refusing_connections(postgres: Postgres, sshd: Sshd, tmp_path: Path) -> None:
    profile = make_profile(sshd, postgres, tmp_path)
    closed = free_port()
    assert profile.bastion is not None
    profile = with_overrides(profile, bastion=Bastion("127.0.0.1", profile.bastion.user, closed))
    (tmp_path / "known_hosts").write_text(f"[127.0.0.1]:{closed} {sshd.host_public_key()}\n")
    with pytest.raises(BastionUnreachable, match="refused the connection"):
        open_tunnel(profile).start()


def test_unresolvable_bastion(postgres: Postgres, sshd: Sshd, tmp_path: Path) -> None:
    profile = make_profile(sshd, postgres, tmp_path)
    profile = with_overrides(profile, bastion=Bastion("no-such-host.invalid", "root", 22))
    (tmp_path / "known_hosts").write_text(f"no-such-host.invalid {sshd.host_public_key()}\n")
    with pytest.raises(BastionUnreachable, match="does not resolve"):
        open_tunnel(profile).start()


def test_missing_ssh_binary_is_a_clear_error(
    sshd: Sshd, postgres: Postgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    profile = make_profile(sshd, postgres, tmp_path)
    with pytest.raises(OpenSSHMissing, match="needs the OpenSSH client") as info:
        open_tunnel(profile).start()
    assert "apt install openssh-client" in str(info.value)


def test_forwarding_refused_is_reported_before_up(
    make_sshd: Any, postgres: Postgres, tmp_path: Path
) -> None:
    # Was (before the test forward): up, then the error showed on the first client. Now ssh's
    # "open failed" line on the test connection is start()'s error, as in the default engine.
    server = make_sshd(allow_tcp_forwarding=False)
    port = free_port()
    profile = make_profile(server, postgres, tmp_path, local_port=port)
    states: list[TunnelState] = []
    tunnel = open_tunnel(profile, on_status=lambda s: states.append(s.state))
    with pytest.raises(ForwardingFailed, match="administratively prohibited"):
        tunnel.start()
    assert TunnelState.UP not in states
    assert tunnel.status.state == TunnelState.FAILED
    assert not port_open("127.0.0.1", port)
    assert ssh_children() == []


def test_supervised_tunnel_restarts_ssh_after_the_bastion_drops_it(
    make_sshd: Any, postgres: Postgres, tmp_path: Path
) -> None:
    server = make_sshd()
    profile = make_profile(server, postgres, tmp_path)
    seen: list[TunnelStatus] = []
    with open_tunnel(profile, supervise=True, on_status=seen.append) as tunnel:
        port = tunnel.local_port
        assert port is not None
        assert server.kill_sessions() >= 1
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (
            tunnel.status.reconnects >= 1 and tunnel.status.state == TunnelState.UP
        ):
            time.sleep(0.05)
        assert tunnel.status.state == TunnelState.UP
        assert tunnel.status.reconnects == 1
        assert tunnel.local_port == port
        assert query(port, postgres, PTS) == 4
    assert TunnelState.RECONNECTING in [s.state for s in seen]


def test_unsupervised_tunnel_fails_when_ssh_dies(
    make_sshd: Any, postgres: Postgres, tmp_path: Path
) -> None:
    server = make_sshd()
    profile = make_profile(server, postgres, tmp_path)
    tunnel = open_tunnel(profile)
    port = tunnel.start()
    try:
        server.kill_sessions()
        deadline = time.monotonic() + 15
        while tunnel.status.state != TunnelState.FAILED and time.monotonic() < deadline:
            time.sleep(0.05)
        assert tunnel.status.state == TunnelState.FAILED
        assert tunnel.status.error
        assert not port_open("127.0.0.1", port)
    finally:
        tunnel.stop()


def test_ssh_dies_with_a_killed_tunnelman(sshd: Sshd, postgres: Postgres, tmp_path: Path) -> None:
    profile = make_profile(sshd, postgres, tmp_path)
    assert profile.bastion is not None
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from tunnelman.core.profiles import Bastion, Endpoint, Profile
        from tunnelman.core.tunnel import open_tunnel
        p = Profile(name="lab", bastion=Bastion({profile.bastion.host!r}, {profile.bastion.user!r},
                    {profile.bastion.port}), identity_file=Path({str(profile.identity_file)!r}),
                    known_hosts=Path({str(profile.known_hosts)!r}),
                    endpoint=Endpoint("127.0.0.1", {postgres.port}), engine="openssh")
        t = open_tunnel(p, local_port=0)
        print(t.start(), flush=True)
        time.sleep(60)
    """)
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
    )
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        assert query(port, postgres, PTS) == 4
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        wait_port_closed("127.0.0.1", port, timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_one_shot_psql_through_the_cli(
    run_cli: RunCli, lab_profile: LabProfile, tmp_path: Path
) -> None:
    """`tunnelman psql` with engine = "openssh": the password only in a temporary PGPASSFILE."""
    if shutil.which("psql") is None:
        pytest.skip("psql not installed")
    lab_profile.write(engine="openssh", password="none")
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:*:*:postgres:{lab_profile.password}\n")
    passfile.chmod(0o600)
    env = dict(os.environ, PGPASSFILE=str(passfile))
    out = run_cli("psql", "lab", "-Atc", "select count(*) from pts", env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "4"
    assert ssh_children() == []


def test_argv_holds_no_secret_and_the_policy_options(
    sshd: Sshd, postgres: Postgres, tmp_path: Path
) -> None:
    profile = make_profile(sshd, postgres, tmp_path)
    argv = openssh_engine.ssh_argv("ssh", profile, 5555)
    joined = " ".join(argv)
    for option in (
        "ExitOnForwardFailure=yes",
        "BatchMode=yes",
        "StrictHostKeyChecking=yes",
        f"UserKnownHostsFile={profile.known_hosts}",
        "IdentitiesOnly=yes",
        # keepalive 2 s: a probe every keepalive/3 (at least 1 s), three may go unanswered, as the
        # default engine's probes (issue 12: a dead link noticed as fast in both engines).
        "ServerAliveInterval=1",
        "ServerAliveCountMax=3",
    ):
        assert option in joined
    assert f"127.0.0.1:5555:127.0.0.1:{postgres.port}" in argv
    assert postgres.password not in joined
    agent_only = openssh_engine.ssh_argv("ssh", with_overrides(profile, identity_file=None), 1)
    assert "IdentityFile=none" in agent_only
    assert "-i" not in agent_only


def test_ssh_itself_serves_the_port_once_up_and_counts_connections(
    sshd: Sshd, postgres: Postgres, tmp_path: Path
) -> None:
    """Direct mode (POSIX): the port is ssh's own -L listener, added through its ControlMaster
    socket, so the bytes take exactly `ssh -L`'s path; tunnelman listens only while ssh
    reconnects (tests/test_engines.py). Connections are counted from the kernel's table."""
    from tunnelman.core.tunnel import ports

    profile = make_profile(sshd, postgres, tmp_path)
    with open_tunnel(profile, local_port=0) as tunnel:
        port = tunnel.local_port
        assert port is not None
        holder = ports.port_holder_pid(port)
        assert holder is not None
        assert holder != os.getpid()
        assert Path(f"/proc/{holder}/comm").read_text().strip() == "ssh"
        with psycopg.connect(
            host="127.0.0.1", port=port, dbname=postgres.database, user=postgres.user,
            password=postgres.password, connect_timeout=10,
        ) as conn:  # fmt: skip
            conn.execute("select 1")
            assert tunnel.status.connections == 1
        deadline = time.monotonic() + 5
        while tunnel.status.connections and time.monotonic() < deadline:
            time.sleep(0.05)
        assert tunnel.status.connections == 0


def test_relay_mode_where_ssh_cannot_multiplex(
    make_sshd: Any, postgres: Postgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Windows' ssh.exe has no ControlMaster: there tunnelman's listener stays in front and relays
    each client to ssh's inner port. The same code path, exercised here with the real ssh by
    saying this system cannot multiplex (the only thing changed)."""
    from tunnelman.core.platform import process
    from tunnelman.core.tunnel import ports

    monkeypatch.setattr(process, "ssh_multiplexing", lambda platform="win32": False)
    server = make_sshd()
    profile = make_profile(server, postgres, tmp_path)
    seen: list[TunnelStatus] = []
    with open_tunnel(profile, supervise=True, on_status=seen.append) as tunnel:
        port = tunnel.local_port
        assert port is not None
        assert ports.port_holder_pid(port) == os.getpid()  # our listener, not ssh's
        assert query(port, postgres, PTS) == 4
        assert server.kill_sessions() >= 1
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (
            tunnel.status.reconnects >= 1 and tunnel.status.state == TunnelState.UP
        ):
            assert port_open("127.0.0.1", port)  # held throughout
            time.sleep(0.05)
        assert tunnel.status.reconnects == 1
        assert query(port, postgres, PTS) == 4
    assert TunnelState.RECONNECTING in [s.state for s in seen]
    wait_port_closed("127.0.0.1", port, timeout=5)
    assert ssh_children() == []
