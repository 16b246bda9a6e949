"""tunnelman.core.platform: the per-OS decisions, checked on Linux from their pure parts.

The Windows ACL judgement runs on parsed entries, the socket-option and process plans on a
stand-in socket module or a platform name; the Linux paths run for real (files, sockets).
"""

from __future__ import annotations

import io
import os
import socket
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tunnelman.core.platform import agents, keys, net, process, terminal
from tunnelman.core.platform.keys import ADMINISTRATORS, SYSTEM, Ace, Acl

ME = "S-1-5-21-1004336348-1177238915-682003330-1001"
SOMEONE = "S-1-5-21-1004336348-1177238915-682003330-1002"
EVERYONE = "S-1-1-0"
USERS = "S-1-5-32-545"
AUTHENTICATED = "S-1-5-11"
READ = 0x120089  # FILE_GENERIC_READ
FULL = 0x1F01FF  # FILE_ALL_ACCESS

# ----------------------------------------------------------------------------- ACLs


def acl(*aces: Ace, owner: str = ME) -> Acl:
    return Acl(owner, tuple(aces))


def test_owner_only_is_private() -> None:
    assert keys.judge_acl(acl(Ace(ME, True, FULL)), ME) is None


def test_system_and_administrators_are_allowed() -> None:
    verdict = keys.judge_acl(
        acl(Ace(ME, True, READ), Ace(SYSTEM, True, FULL), Ace(ADMINISTRATORS, True, FULL)), ME
    )
    assert verdict is None


@pytest.mark.parametrize(
    ("sid", "name"),
    [(EVERYONE, "Everyone"), (USERS, "Users"), (AUTHENTICATED, "Authenticated Users")],
)
def test_groups_with_read_are_refused(sid: str, name: str) -> None:
    verdict = keys.judge_acl(acl(Ace(ME, True, FULL), Ace(sid, True, READ)), ME)
    assert verdict == f"can be read by {name}"


def test_deny_entries_are_ignored() -> None:
    assert keys.judge_acl(acl(Ace(ME, True, FULL), Ace(EVERYONE, False, FULL)), ME) is None
    # A deny entry does not excuse an allow entry for the same group.
    both = acl(Ace(ME, True, FULL), Ace(EVERYONE, False, READ), Ace(EVERYONE, True, READ))
    assert keys.judge_acl(both, ME) == "can be read by Everyone"


def test_another_users_sid_is_refused_by_name() -> None:
    entry = Ace(SOMEONE, True, READ, name="CORP\\bob")
    assert keys.judge_acl(acl(Ace(ME, True, FULL), entry), ME) == "can be read by CORP\\bob"


def test_every_offender_is_named_once() -> None:
    verdict = keys.judge_acl(
        acl(Ace(EVERYONE, True, READ), Ace(USERS, True, READ), Ace(EVERYONE, True, FULL)), ME
    )
    assert verdict == "can be read by Everyone, Users"


def test_inherit_only_and_empty_entries_grant_nothing_here() -> None:
    entries = (Ace(EVERYONE, True, READ, inherit_only=True), Ace(USERS, True, 0))
    assert keys.judge_acl(acl(Ace(ME, True, FULL), *entries), ME) is None


def test_owner_must_be_the_user_system_or_administrators() -> None:
    assert keys.judge_acl(acl(Ace(ME, True, FULL), owner=ADMINISTRATORS), ME) is None
    verdict = keys.judge_acl(Acl(SOMEONE, (Ace(ME, True, FULL),), owner_name="CORP\\bob"), ME)
    assert verdict == "is owned by CORP\\bob, not by you"


def test_the_owner_entry_is_fine_when_the_user_is_unknown() -> None:
    assert keys.judge_acl(acl(Ace(ME, True, FULL)), None) is None
    assert keys.judge_acl(acl(Ace(ME, True, FULL), Ace(EVERYONE, True, READ)), None)


def test_a_null_dacl_is_refused() -> None:
    assert keys.judge_acl(Acl(ME, None), ME) == "has no access list at all (everyone may read it)"


def test_icacls_fix_names_the_file() -> None:
    fix = keys.icacls_fix(r"C:\Users\ana\.ssh\aws.pem")
    assert (
        fix == 'run `icacls "C:\\Users\\ana\\.ssh\\aws.pem" /inheritance:r /grant:r "%USERNAME%:R"`'
    )


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX modes")
def test_posix_mode_rule_on_real_files(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_text("x")
    key.chmod(0o600)
    assert keys.key_problem(key, key.stat()) is None
    assert keys.describe_protection(key) == "mode 0600"
    key.chmod(0o644)
    problem = keys.key_problem(key, key.stat())
    assert problem is not None
    assert problem.message == (
        f"private key {key} is readable by others (mode 0644); "
        "ssh refuses such keys and so does tunnelman"
    )
    assert problem.hint == f"run `chmod 600 {key}`"
    with pytest.raises(OSError, match="Windows only"):
        keys.read_acl(str(key))


# ----------------------------------------------------------------------------- sockets

_BASE = {"SOL_SOCKET": 1, "SO_KEEPALIVE": 9, "IPPROTO_TCP": 6}


def test_keepalive_linux_names() -> None:
    linux = SimpleNamespace(
        **_BASE, TCP_KEEPIDLE=4, TCP_KEEPINTVL=5, TCP_KEEPCNT=6, TCP_USER_TIMEOUT=18
    )
    assert net.keepalive_options(linux, 15) == [(1, 9, 1), (6, 4, 15), (6, 5, 15), (6, 6, 3)]
    assert net.user_timeout_option(linux, 15) == (6, 18, 45000)


def test_keepalive_macos_uses_tcp_keepalive_for_idle() -> None:
    macos = SimpleNamespace(**_BASE, TCP_KEEPALIVE=0x10, TCP_KEEPINTVL=0x101, TCP_KEEPCNT=0x102)
    assert net.keepalive_options(macos, 30) == [
        (1, 9, 1),
        (6, 0x10, 30),
        (6, 0x101, 30),
        (6, 0x102, 3),
    ]
    assert net.user_timeout_option(macos, 30) is None


def test_keepalive_without_idle_option_only_turns_it_on() -> None:
    old = SimpleNamespace(**_BASE, TCP_KEEPINTVL=5)
    assert net.keepalive_options(old, 0) == [(1, 9, 1)]


def test_keepalive_applied_to_a_real_socket() -> None:
    with socket.socket() as sock:
        net.set_keepalive(sock, 7)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        if hasattr(socket, "TCP_KEEPIDLE"):
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 7
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3


def test_listener_options_per_platform() -> None:
    ns = SimpleNamespace(SOL_SOCKET=0xFFFF, SO_REUSEADDR=4, SO_EXCLUSIVEADDRUSE=~4)
    assert net.listener_options(ns, "win32") == [(0xFFFF, ~4, 1)]
    assert net.listener_options(ns, "linux") == [(0xFFFF, 4, 1)]
    assert net.listener_options(ns, "darwin") == [(0xFFFF, 4, 1)]


@pytest.mark.skipif(sys.platform != "linux", reason="Linux hot path")
def test_relay_keeps_msg_dontwait_on_linux() -> None:
    from tunnelman.core.tunnel import relay

    assert net.NOWAIT_FLAG == socket.MSG_DONTWAIT
    assert relay._NOWAIT == socket.MSG_DONTWAIT
    assert relay._DIRECT_POSSIBLE
    assert net.REUSE_ADDRESS


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="Unix sockets")
def test_peer_credentials_of_a_real_socketpair() -> None:
    a, b = socket.socketpair(net.unix_family())
    with a, b:
        peer = net.peer_credentials(a)
        if hasattr(socket, "SO_PEERCRED") or sys.platform == "darwin":
            assert peer is not None
            assert peer.uid == os.getuid()
            assert peer.pid == os.getpid()


# ----------------------------------------------------------------------------- signals


def test_posix_signal_plan() -> None:
    plan = terminal.signal_plan("linux")
    assert plan.stop == ("SIGTERM", "SIGHUP")
    assert plan.while_child("SIGINT", tty_delivers=True) == "ignore"
    assert plan.while_child("SIGINT", tty_delivers=False) == "send"
    assert plan.while_child("SIGTERM", tty_delivers=True) == "send"
    assert plan.while_child("SIGHUP", tty_delivers=False) == "send"
    assert terminal.stop_signals("darwin") == ("SIGINT", "SIGTERM")


def test_windows_signal_plan() -> None:
    plan = terminal.signal_plan("win32")
    assert plan.stop == ("SIGTERM", "SIGBREAK")
    # The console gave Ctrl-C / Ctrl-Break / close to the child too: only ignore them here.
    for tty in (True, False):
        assert plan.while_child("SIGINT", tty_delivers=tty) == "ignore"
        assert plan.while_child("SIGBREAK", tty_delivers=tty) == "ignore"
        assert plan.while_child("SIGTERM", tty_delivers=tty) == "terminate"
    assert terminal.stop_signals("win32") == ("SIGINT", "SIGTERM", "SIGBREAK")


def test_signals_named_skips_what_this_os_lacks() -> None:
    import signal

    assert terminal.signals_named(("SIGTERM", "SIGNOPE")) == (signal.SIGTERM,)


# ----------------------------------------------------------------------------- processes


def test_detached_kwargs_per_platform() -> None:
    assert process.detached_kwargs("linux") == {"start_new_session": True}
    flags = process.detached_kwargs("win32")["creationflags"]
    assert flags == 0x00000008 | 0x00000200 | 0x08000000


def test_ssh_child_plan_per_platform() -> None:
    posix = process.ssh_child_plan("darwin")
    assert (posix.watchdog, posix.job, posix.popen) == (True, False, {"start_new_session": True})
    win = process.ssh_child_plan("win32")
    assert (win.watchdog, win.job) == (False, True)
    assert win.popen["creationflags"] & process.CREATE_NO_WINDOW
    assert "start_new_session" not in win.popen
    assert process.JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE == 0x2000


def test_ssh_search_path_adds_windows_openssh_once() -> None:
    env = {"SystemRoot": "C:\\Windows", "PATH": "C:\\bin"}
    assert process.ssh_search_path(None, "win32", env) == "C:\\bin;C:\\Windows\\System32\\OpenSSH"
    already = "C:\\WINDOWS\\system32\\OpenSSH\\;C:\\bin"
    assert (
        process.ssh_search_path(already, "win32", env) == "C:\\WINDOWS\\system32\\OpenSSH\\;C:\\bin"
    )
    assert process.ssh_search_path("/usr/bin", "linux", env) == "/usr/bin"
    assert process.ssh_search_path(None, "linux", env) is None


def test_file_lock_primitives(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    fd1 = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fd2 = os.open(path, os.O_RDWR)
    try:
        assert process.try_lock(fd1)
        assert not process.try_lock(fd2)
        process.unlock(fd1)
        assert process.try_lock(fd2)
        process.unlock(fd2)
    finally:
        os.close(fd1)
        os.close(fd2)


# ----------------------------------------------------------------------------- agents


def test_agent_wording_per_platform() -> None:
    assert agents.missing_reason("linux") == "SSH_AUTH_SOCK unset"
    assert "Pageant" in agents.missing_reason("win32")
    assert "Windows OpenSSH agent" in agents.missing_reason("win32")
    assert agents.start_hint("linux") == "start ssh-agent and `ssh-add` your key"
    assert "Start-Service ssh-agent" in agents.start_hint("win32")


@pytest.mark.skipif(sys.platform == "win32", reason="SSH_AUTH_SOCK")
def test_find_agent_from_ssh_auth_sock(tmp_path: Path) -> None:
    sock_path = tmp_path / "agent.sock"
    with socket.socket(net.unix_family()) as listener:
        listener.bind(str(sock_path))
        assert agents.find_agent({"SSH_AUTH_SOCK": str(sock_path)}) == "ssh-agent (SSH_AUTH_SOCK)"
    assert agents.find_agent({"SSH_AUTH_SOCK": str(tmp_path / "gone")}) is None
    assert agents.find_agent({}) is None


# ----------------------------------------------------------------------------- output


def test_output_switches_a_legacy_code_page_to_utf8(monkeypatch: pytest.MonkeyPatch) -> None:
    from tunnelman.cli import output

    raw = io.BytesIO()
    legacy = io.TextIOWrapper(raw, encoding="cp1252")
    fine = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    monkeypatch.setattr(sys, "stdout", legacy)
    monkeypatch.setattr(sys, "stderr", fine)
    with pytest.raises(UnicodeEncodeError):
        legacy.write("a → b")
    output.ensure_encodable_streams()
    assert legacy.encoding == "utf-8"
    assert fine.encoding == "utf-8"
    legacy.write("a → b ✓ …\n")
    legacy.flush()
    assert raw.getvalue().endswith("a → b ✓ …\n".encode())
