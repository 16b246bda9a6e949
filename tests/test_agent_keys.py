"""Encrypted keys already in ssh-agent: used through the agent, no passphrase asked, in every entry.

The usual macOS-keychain / `ssh-add` set-up: the profile names a passphrase-protected key and the
person has loaded it into ssh-agent. Like ssh, tunnelman finds the key's public half (the clear
header of an OpenSSH-format file, else KEY.pub beside it) and, when the agent holds that key, has
the agent sign with it, offering that one key and never the agent's others. Without a match (no
agent, the agent lacks the key, an encrypted PEM file with no .pub) the behaviour is the old one:
a prompt on a terminal / in the TUI, a refusal naming `ssh-add` without one.

Everything is real: ssh-keygen's keys, a real `ssh-agent -D` per test (killed at teardown) loaded
by the real `ssh-add` (passphrase through SSH_ASKPASS), the lab sshd and PostgreSQL, the CLI in
a subprocess with no terminal, the background agent, and the TUI through Pilot.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from tests.cli import RunCli
from tests.conftest import LabProfile
from tests.lab.keys import fingerprint, make_key
from tests.lab.ports import port_open
from tests.lab.profiles import bastion_profile
from tests.lab.sshd import Sshd
from tests.test_agent_support import (
    agent_home,  # noqa: F401 - fixture
    ok,
    status_json,
    up_detached,
)
from tests.test_cli_up import errline, up
from tests.tui_support import sync, wait_for
from tunnelman.agent.client import AgentClient
from tunnelman.core import ssh
from tunnelman.core.errors import SSHKeyError
from tunnelman.core.profiles import Profile
from tunnelman.core.ssh.known_hosts import HostKeyPolicy
from tunnelman.tui.app import make_app
from tunnelman.tui.hosts import AgentHost, InProcessHost, TunnelHost
from tunnelman.tui.screens.modals import SecretScreen

pytestmark = [
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("ssh-agent", "ssh-add", "ssh-keygen")),
        reason="needs ssh-agent, ssh-add and ssh-keygen",
    ),
    pytest.mark.usefixtures("agent_home"),
]

PASSPHRASE = "correct horse"


class SshAgent:
    """A real `ssh-agent -D` on a private socket; `add` loads a key with the real ssh-add."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="tm-sa-"))  # short: socket paths max 107 bytes
        self.dir.chmod(0o700)
        self.sock = self.dir / "agent.sock"
        self.proc = subprocess.Popen(
            ["ssh-agent", "-D", "-a", str(self.sock)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not self.sock.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("ssh-agent did not start")
            time.sleep(0.01)
        self.askpass = self.dir / "askpass"
        self.askpass.write_text('#!/bin/sh\nprintf "%s\\n" "$TM_TEST_PASSPHRASE"\n')
        self.askpass.chmod(0o700)

    def add(self, key: Path, passphrase: str | None = PASSPHRASE) -> None:
        env = {
            **os.environ,
            "SSH_AUTH_SOCK": str(self.sock),
            "SSH_ASKPASS": str(self.askpass),
            "SSH_ASKPASS_REQUIRE": "force",
            "TM_TEST_PASSPHRASE": passphrase or "",
            "DISPLAY": os.environ.get("DISPLAY", ":0"),
        }
        subprocess.run(
            ["ssh-add", str(key)],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=True,
            timeout=30,
            start_new_session=True,  # no controlling terminal: ssh-add must use the askpass
        )

    def remove_all(self) -> None:
        subprocess.run(
            ["ssh-add", "-D"],
            env={**os.environ, "SSH_AUTH_SOCK": str(self.sock)},
            capture_output=True,
            check=True,
            timeout=10,
        )

    def listed(self) -> str:
        result = subprocess.run(
            ["ssh-add", "-L"],
            env={**os.environ, "SSH_AUTH_SOCK": str(self.sock)},
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        )
        return result.stdout

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def ssh_agent(tmp_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SshAgent]:
    """A real ssh-agent, SSH_AUTH_SOCK pointing at it (after tmp_home scrubbed the shell's)."""
    agent = SshAgent()
    monkeypatch.setenv("SSH_AUTH_SOCK", str(agent.sock))
    try:
        yield agent
    finally:
        agent.close()


def locked_key(
    directory: Path, fmt: str = "openssh", *, name: str = "id_locked"
) -> tuple[Path, str]:
    """A passphrase-protected key (ed25519 OpenSSH, or RSA PEM as AWS-style files are)."""
    if fmt == "pem":
        return make_key(directory, "rsa", "pem", passphrase=PASSPHRASE, name=name)
    return make_key(directory, "ed25519", passphrase=PASSPHRASE, name=name)


def profile_for(server: Sshd, key: Path, tmp_path: Path) -> Profile:
    """The lab bastion profile (tests/lab/profiles.py) named ``keys``, offering ``key``."""
    return bastion_profile(server, tmp_path, name="keys", identity_file=key)


def never_asked(path: Path) -> str | None:
    raise AssertionError(f"asked for the passphrase of {path}, which ssh-agent holds")


def login(profile: Profile, identity: ssh.Identity) -> None:
    transport, _info = ssh.connect(profile, identity, HostKeyPolicy())
    try:
        assert transport.is_authenticated()
    finally:
        transport.close()


def public_blob(line: str) -> bytes:
    import base64

    return base64.b64decode(line.split()[1])


# ----------------------------------------------------------------------------- core


@pytest.mark.parametrize(
    ("fmt", "keep_pub"),
    [("openssh", True), ("openssh", False), ("pem", True)],
    ids=["openssh+pub", "openssh-header-only", "pem+pub"],
)
def test_encrypted_key_in_the_agent_logs_in_without_a_passphrase(
    fmt: str, keep_pub: bool, ssh_agent: SshAgent, make_sshd: Callable[..., Sshd], tmp_path: Path
) -> None:
    server = make_sshd()
    key, public = locked_key(tmp_path / "k", fmt)
    server.authorize(public)
    ssh_agent.add(key)
    if not keep_pub:
        key.with_name(key.name + ".pub").unlink()
    assert ssh.public_key_blob(key) == public_blob(public)
    profile = profile_for(server, key, tmp_path)
    identity = ssh.load_identity(profile, never_asked)
    assert identity.through_agent
    assert identity.source == "agent"
    assert identity.describe() == f"key {key} (through ssh-agent)"
    with identity.keys() as keys:
        assert [k.asbytes() for k in keys] == [public_blob(public)]
    login(profile, identity)
    assert f"Accepted publickey for {server.user}" in server.log_text()


def test_only_the_profiles_key_is_offered_when_the_agent_holds_others(
    ssh_agent: SshAgent, make_sshd: Callable[..., Sshd], tmp_path: Path
) -> None:
    """Both keys would be accepted; the other one is first in the agent. It is never offered."""
    server = make_sshd()
    other, other_public = make_key(tmp_path / "o", "ed25519", name="id_other")
    key, public = locked_key(tmp_path / "k")
    server.authorize(other_public)
    server.authorize(public)
    ssh_agent.add(other, None)
    ssh_agent.add(key)
    assert len(ssh_agent.listed().splitlines()) == 2
    profile = profile_for(server, key, tmp_path)
    identity = ssh.load_identity(profile, never_asked)
    with identity.keys() as keys:
        assert [k.asbytes() for k in keys] == [public_blob(public)]
    login(profile, identity)
    log = server.log_text()
    assert f"Accepted publickey for {server.user}" in log
    assert fingerprint(public) in log
    assert fingerprint(other_public) not in log, "the agent's other key was offered"


def test_agent_without_that_key_asks_as_before(
    ssh_agent: SshAgent, make_sshd: Callable[..., Sshd], tmp_path: Path
) -> None:
    server = make_sshd()
    other, _ = make_key(tmp_path / "o", "ed25519", name="id_other")
    ssh_agent.add(other, None)
    key, public = locked_key(tmp_path / "k")
    server.authorize(public)
    profile = profile_for(server, key, tmp_path)
    asked: list[Path] = []

    def answer(path: Path) -> str:
        asked.append(path)
        return PASSPHRASE

    identity = ssh.load_identity(profile, answer)
    assert asked == [key]
    assert identity.source == "file"
    assert not identity.through_agent
    login(profile, identity)
    with pytest.raises(SSHKeyError, match=r"no terminal to ask.*ssh-add"):
        ssh.load_identity(profile)


def test_encrypted_pem_without_pub_cannot_be_matched_so_it_asks_as_before(
    ssh_agent: SshAgent, make_sshd: Callable[..., Sshd], tmp_path: Path
) -> None:
    server = make_sshd()
    key, public = locked_key(tmp_path / "k", "pem")
    server.authorize(public)
    ssh_agent.add(key)
    key.with_name(key.name + ".pub").unlink()
    assert ssh.public_key_blob(key) is None  # a PEM file has no public part
    profile = profile_for(server, key, tmp_path)
    identity = ssh.load_identity(profile, lambda _path: PASSPHRASE)
    assert identity.source == "file"
    with pytest.raises(SSHKeyError, match="no terminal to ask"):
        ssh.load_identity(profile)


def test_a_damaged_pub_file_is_no_match(tmp_path: Path) -> None:
    key, public = locked_key(tmp_path / "k", "pem")
    pub = key.with_name(key.name + ".pub")
    pub.write_text("ssh-ed25519 " + public.split()[1] + "\n")  # type disagrees with the blob
    assert ssh.public_key_blob(key) is None
    pub.write_text("ssh-rsa not-base64!\n")
    assert ssh.public_key_blob(key) is None
    pub.write_text(public + "\n")
    assert ssh.public_key_blob(key) == public_blob(public)


def test_an_unencrypted_key_is_still_read_from_its_file(
    ssh_agent: SshAgent, make_sshd: Callable[..., Sshd], tmp_path: Path
) -> None:
    server = make_sshd()
    assert server.key_path is not None
    ssh_agent.add(server.key_path, None)
    identity = ssh.load_identity(profile_for(server, server.key_path, tmp_path))
    assert identity.source == "file"
    assert identity.key is not None


def test_a_world_readable_key_is_refused_even_when_the_agent_holds_it(
    ssh_agent: SshAgent, make_sshd: Callable[..., Sshd], tmp_path: Path
) -> None:
    server = make_sshd()
    key, _public = locked_key(tmp_path / "k")
    ssh_agent.add(key)
    key.chmod(0o644)
    with pytest.raises(SSHKeyError, match="chmod 600"):
        ssh.load_identity(profile_for(server, key, tmp_path), never_asked)


def test_key_removed_from_the_agent_later_says_so(
    ssh_agent: SshAgent, make_sshd: Callable[..., Sshd], tmp_path: Path
) -> None:
    server = make_sshd()
    key, public = locked_key(tmp_path / "k")
    server.authorize(public)
    ssh_agent.add(key)
    profile = profile_for(server, key, tmp_path)
    identity = ssh.load_identity(profile, never_asked)
    ssh_agent.remove_all()
    with pytest.raises(SSHKeyError, match="no longer in ssh-agent") as caught:
        login(profile, identity)
    assert f"ssh-add {key}" in (caught.value.hint or "")


# ----------------------------------------------------------------------------- the CLI


@pytest.fixture
def locked(lab_profile: LabProfile, tmp_path: Path) -> Path:
    """The `lab` profile with a passphrase-protected key (authorized on the lab sshd)."""
    key, public = locked_key(tmp_path / "k")
    lab_profile.sshd.authorize(public)
    target = lab_profile.identity_file.with_name("id_locked")
    shutil.copy(key, target)
    shutil.copy(key.with_name(key.name + ".pub"), target.with_name("id_locked.pub"))
    target.chmod(0o600)
    lab_profile.write(identity_file=target)
    return target


def test_up_in_the_foreground_with_no_terminal(
    locked: Path, ssh_agent: SshAgent, lab_profile: LabProfile
) -> None:
    ssh_agent.add(locked)
    with up("lab", "--port", "0") as proc:
        text = proc.wait_up(30)
        port = int(text.split("127.0.0.1:", 1)[1].split()[0])
        with psycopg.connect(lab_profile.postgres.dsn(host="127.0.0.1", port=port)) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
        code, _out, err = proc.finish()
    assert code == 0, err


def test_up_detach_works_with_no_terminal(
    run_cli: RunCli, locked: Path, ssh_agent: SshAgent, lab_profile: LabProfile
) -> None:
    """The acceptance case: the background agent uses the client's ssh-agent for the key."""
    ssh_agent.add(locked)
    port = up_detached("lab")
    with psycopg.connect(lab_profile.postgres.dsn(host="127.0.0.1", port=port)) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    assert [t["state"] for t in status_json()] == ["up"]
    ok(run_cli("down", "lab"))


def test_up_detach_without_the_key_in_the_agent_is_refused_as_before(
    run_cli: RunCli, locked: Path, ssh_agent: SshAgent
) -> None:
    result = run_cli("up", "lab", "--detach")
    assert result.returncode != 0
    line = errline(result.stderr)
    assert "background agent cannot ask for passphrases" in line
    assert f"ssh-add {locked}" in line


def test_psql_and_exec_one_shot(
    run_cli: RunCli, locked: Path, ssh_agent: SshAgent, lab_profile: LabProfile
) -> None:
    lab_profile.write(password="none")
    pgpass = Path(os.environ["HOME"]) / ".pgpass"
    pgpass.write_text(f"*:*:*:{lab_profile.postgres.user}:{lab_profile.password}\n")
    pgpass.chmod(0o600)
    ssh_agent.add(locked)
    psql = ok(run_cli("psql", "lab", "-Atc", "select 40 + 2"))
    assert psql.stdout.strip() == "42"
    printed = ok(run_cli("exec", "lab", "--", "printenv", "PGPORT"))
    assert printed.stdout.strip().isdigit()


def test_check_says_the_key_is_used_through_ssh_agent(
    run_cli: RunCli, locked: Path, ssh_agent: SshAgent, lab_profile: LabProfile
) -> None:
    lab_profile.write(password="none")
    ssh_agent.add(locked)
    result = run_cli("check", "lab")
    key_line = next(line for line in result.stdout.splitlines() if str(locked) in line)
    assert "passphrase-protected): used through ssh-agent" in key_line, result.stdout
    assert "Traceback" not in result.stderr
    assert "bastion" in result.stdout


def test_openssh_engine_uses_the_key_in_the_agent(
    locked: Path, ssh_agent: SshAgent, lab_profile: LabProfile
) -> None:
    lab_profile.write(engine="openssh")
    ssh_agent.add(locked)
    locked.with_name("id_locked.pub").unlink()  # ssh reads the public half from the file itself
    with up("lab", "--port", "0") as proc:
        text = proc.wait_up(30)
        port = int(text.split("127.0.0.1:", 1)[1].split()[0])
        with psycopg.connect(lab_profile.postgres.dsn(host="127.0.0.1", port=port)) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
        code, _out, err = proc.finish()
    assert code == 0, err


def test_openssh_engine_says_the_agent_lacks_the_key(
    run_cli: RunCli, locked: Path, ssh_agent: SshAgent, lab_profile: LabProfile, tmp_path: Path
) -> None:
    lab_profile.write(engine="openssh")
    other, _ = make_key(tmp_path / "o", "ed25519", name="id_other")
    ssh_agent.add(other, None)
    result = run_cli("up", "lab")
    assert result.returncode != 0
    line = errline(result.stderr)
    assert "ssh-agent does not hold it" in line
    assert f"ssh-add {locked}" in line


def test_openssh_engine_pem_without_pub_names_the_fix(
    run_cli: RunCli, ssh_agent: SshAgent, lab_profile: LabProfile, tmp_path: Path
) -> None:
    key, public = locked_key(tmp_path / "k", "pem")
    lab_profile.sshd.authorize(public)
    ssh_agent.add(key)
    key.with_name(key.name + ".pub").unlink()
    lab_profile.write(engine="openssh", identity_file=key)
    result = run_cli("up", "lab")
    assert result.returncode != 0
    line = errline(result.stderr)
    assert "has no public key beside it" in line
    assert f"ssh-keygen -y -f {key} > {key}.pub" in line


# ----------------------------------------------------------------------------- the TUI


@pytest.fixture(params=["agent", "in-process"])
def tui_host(request: pytest.FixtureRequest, tmp_home: Path) -> Iterator[TunnelHost]:
    if request.param == "agent":
        host = AgentHost(AgentClient())
        try:
            yield host
        finally:
            host.client.shutdown()
    else:
        yield InProcessHost()


@sync
async def test_tui_opens_the_tunnel_without_a_passphrase_modal(
    locked: Path, ssh_agent: SshAgent, lab_profile: LabProfile, tui_host: TunnelHost
) -> None:
    ssh_agent.add(locked)
    app = make_app(lab_profile.config, initial_profile="lab", host=tui_host)
    seen_modal: list[bool] = []
    async with app.run_test(size=(160, 45)) as pilot:
        await pilot.press("enter")

        def up_or_modal() -> bool:
            if isinstance(app.screen, SecretScreen):
                seen_modal.append(True)
                return True
            return app.state_of("lab")[0] == "up"

        await wait_for(pilot, up_or_modal, 30, "the tunnel to be up")
        assert not seen_modal, "a passphrase modal appeared for a key ssh-agent holds"
        port = app.state_of("lab")[1]
        assert port is not None
        with psycopg.connect(lab_profile.postgres.dsn(host="127.0.0.1", port=port)) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
        if isinstance(tui_host, AgentHost):
            assert tui_host.local_names() == [], "held by the background agent, not the TUI"
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.state_of("lab")[0] == "stopped", 10, "close")
    assert not port_open("127.0.0.1", port)
