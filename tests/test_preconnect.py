"""The cold one-shot's early TCP connection (`tunnelman.core.ssh.preconnect`).

A cold `tunnelman psql NAME` starts the bastion's TCP connection before click and paramiko load,
and the SSH handshake later runs over that socket. Pinned here: it is started only where the
normal path would make exactly that connection, it is the socket the handshake uses, it begins
before the heavy imports, and a failure (refused, a name that does not resolve) reads exactly
as the full CLI's own path prints it (compared with a TUNNELMAN_NO_LEAN=1 run, which never
pre-connects): same message, hint and exit code.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli import RunCli
from tests.lab.ports import free_port
from tunnelman.cli import lean
from tunnelman.core.errors import BastionUnreachable
from tunnelman.core.profiles import Bastion, Profile
from tunnelman.core.ssh import preconnect


@pytest.fixture(autouse=True)
def _nothing_left() -> Iterator[None]:
    yield
    preconnect.discard()


def _profile(port: int, **changes: Any) -> Profile:
    keys: dict[str, Any] = {
        "name": "p",
        "bastion": Bastion("127.0.0.1", "ec2-user", port),
        "ssh_config": False,
        "connect_timeout": 5,
        **changes,
    }
    return Profile(**keys)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server


def test_take_hands_over_the_connected_socket_once(listener: socket.socket) -> None:
    profile = _profile(listener.getsockname()[1])
    assert preconnect.start(profile)
    sock = preconnect.take(profile)
    assert sock is not None
    peer, _ = listener.accept()
    with sock, peer:
        assert sock.getpeername() == listener.getsockname()
        sock.sendall(b"SSH-2.0-x\r\n")
        assert peer.recv(64) == b"SSH-2.0-x\r\n"
    assert preconnect.take(profile) is None, "once: a reconnect connects as usual"


def test_another_destination_is_not_handed_over(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    assert preconnect.start(_profile(port))
    assert preconnect.take(_profile(port, keepalive=7)) is None
    assert preconnect.take(_profile(port)) is None, "the mismatch discarded it"


def test_a_stale_connection_is_closed_not_used(
    listener: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(preconnect, "MAX_AGE", 0.0)
    profile = _profile(listener.getsockname()[1])
    assert preconnect.start(profile)
    assert preconnect.take(profile) is None
    peer, _ = listener.accept()
    with peer:
        peer.settimeout(5)
        assert peer.recv(1) == b"", "closed unused"


@pytest.mark.parametrize(
    "changes",
    [
        {"jump": (Bastion("127.0.0.1", None, 1),)},
        {"transport": "ssm", "bastion_instance_id": "i-0123456789abcdef0"},
        {"engine": "openssh"},
        {"linger": 600},
        {"instance_connect": True},
        {"bastion": None},
    ],
    ids=["jump", "ssm", "openssh", "linger", "instance-connect", "no-bastion"],
)
def test_only_plain_tcp_to_the_bastion(listener: socket.socket, changes: dict[str, Any]) -> None:
    profile = _profile(listener.getsockname()[1])
    fields = {f.name for f in dataclasses.fields(Profile)}
    assert not preconnect.start(
        dataclasses.replace(profile, **{k: v for k, v in changes.items() if k in fields})
    )


def test_an_ssh_config_proxyjump_means_no_early_connection(
    tmp_path: Path, listener: socket.socket
) -> None:
    config = tmp_path / "ssh_config"
    config.write_text("Host 127.0.0.1\n  ProxyJump jump.example.com\n")
    profile = _profile(listener.getsockname()[1], ssh_config=config)
    assert not preconnect.start(profile)


def test_a_prompt_or_a_missing_program_means_no_early_connection(
    listener: socket.socket,
) -> None:
    profile = _profile(listener.getsockname()[1])
    assert not preconnect.for_oneshot(dataclasses.replace(profile, password="prompt"), ["psql"])
    assert not preconnect.for_oneshot(profile, ["no-such-program-tunnelman-test"])


def test_a_failure_is_raised_at_take_as_open_socket_raises_it() -> None:
    port = free_port()  # nothing listens
    profile = _profile(port)
    assert preconnect.start(profile)
    with pytest.raises(BastionUnreachable) as early:
        preconnect.take(profile)
    from tunnelman.core.ssh.tcp import open_socket

    with pytest.raises(BastionUnreachable) as today:
        open_socket(Bastion("127.0.0.1", None, port), 5.0, 15)
    assert (early.value.message, early.value.hint, early.value.exit_code) == (
        today.value.message,
        today.value.hint,
        today.value.exit_code,
    )


# ---------------------------------------------------------------------------- the command


def _cold(argv: list[str], capfd: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        lean.main(argv)
    out, err = capfd.readouterr()
    code = done.value.code
    return (code if isinstance(code, int) else 1), out, err


@pytest.mark.parametrize(
    "bastion",
    [lambda: f"ec2-user@127.0.0.1:{free_port()}", lambda: "ec2-user@no-such-bastion.invalid"],
    ids=["refused", "unknown-host"],
)
def test_cold_psql_errors_read_as_today(
    lab_profile: Any,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    run_cli: RunCli,
    bastion: Any,
) -> None:
    lab_profile.write(bastion=bastion(), password="none", connect_timeout=5)
    started: list[bool] = []
    real = preconnect.start

    def recording(profile: Profile) -> bool:
        started.append(real(profile))
        return started[-1]

    monkeypatch.setattr(preconnect, "start", recording)
    argv = ["psql", "lab", "-X", "-c", "select 1"]

    code, out, err = _cold(argv, capfd)

    assert started == [True], "the cold one-shot connected early"
    today = run_cli(*argv, env={**os.environ, "TUNNELMAN_NO_LEAN": "1"})
    assert (code, out, err) == (today.returncode, today.stdout, today.stderr)
    assert code == 3, err
    assert err.startswith("tunnelman: error: bastion ")
    assert err.count("\n") == 1


def test_cold_psql_runs_over_the_early_connection(
    lab_profile: Any, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """The handshake uses the socket begun before the imports, and psql gets its answer."""
    lab_profile.write(password="none")
    monkeypatch.setattr(lean, "_EXEC", False)
    taken: list[socket.socket | None] = []
    real = preconnect.take

    def recording(profile: Profile, cancel: Any = None) -> socket.socket | None:
        taken.append(real(profile, cancel))
        return taken[-1]

    monkeypatch.setattr(preconnect, "take", recording)
    pg = lab_profile.postgres
    monkeypatch.setenv("PGPASSFILE", str(_pgpass(lab_profile.config.parent, pg)))

    code, out, err = _cold(["psql", "lab", "-X", "-A", "-t", "-c", "select 41 + 1"], capfd)

    assert (code, out.strip()) == (0, "42"), err
    assert len(taken) == 1
    assert taken[0] is not None, "the first hop was the early socket"


def _pgpass(directory: Path, pg: Any) -> Path:
    path = directory / "pgpass"
    path.write_text(f"127.0.0.1:*:*:{pg.user}:{pg.password}\n")
    path.chmod(0o600)
    return path


def test_the_connection_begins_before_click_and_paramiko_load(tmp_home: Path) -> None:
    """What a cold one-shot has imported when its TCP connection starts: no click, no paramiko,
    no SSH code beyond the TCP step; and the prompts module alone loads no SSH module."""
    port = free_port()
    config = Path(os.environ["TUNNELMAN_CONFIG"])
    from tests.lab.toml_profile import write_profile

    write_profile(
        config, "p", bastion=f"u@127.0.0.1:{port}", endpoint="db.example.com", password="none"
    )
    code = (
        "import sys\n"
        "from tunnelman.core.ssh import preconnect\n"
        "seen = []\n"
        "preconnect.start = lambda profile: seen.append(sorted(sys.modules)) or False\n"
        "from tunnelman.cli import lean\n"
        "try:\n"
        "    lean.main(['psql', 'p', '-c', 'select 1'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(' '.join(seen[0]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    loaded = set(done.stdout.split())
    assert "tunnelman.core.profiles" in loaded, done.stderr
    for heavy in ("click", "paramiko", "cryptography", "sshtunnel", "tunnelman.cli.main"):
        assert heavy not in loaded, heavy
    for module in ("connection", "keys", "known_hosts"):
        assert f"tunnelman.core.ssh.{module}" not in loaded, module

    prompts = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, tunnelman.cli.prompts; "
            "print(' '.join(m for m in sys.modules if m.startswith('tunnelman.core.ssh')))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert prompts.returncode == 0, prompts.stderr
    assert prompts.stdout.split() == [], "cli.prompts imports the SSH modules for types only"
