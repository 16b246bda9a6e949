"""Private keys and the agent: formats, passphrases, OpenSSH's permission rule, one key only.

Keys come from the real ssh-keygen; logins go to the lab's real sshd; the agent is a real
ssh-agent started for the test.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import paramiko
import pytest

from tests.lab.keys import KeyFormat, KeyKind, make_key
from tests.lab.profiles import bastion_profile
from tests.lab.sshd import Sshd
from tunnelman.core import ssh
from tunnelman.core.errors import AuthenticationFailed, SSHKeyError
from tunnelman.core.profiles import Profile
from tunnelman.core.ssh.known_hosts import HostKeyPolicy

pytestmark = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs ssh-keygen")


def profile_for(server: Sshd, key: Path | None, tmp_path: Path) -> Profile:
    """The lab bastion profile (tests/lab/profiles.py) named ``keys``, offering ``key``."""
    return bastion_profile(server, tmp_path, name="keys", identity_file=key)


def login(profile: Profile, identity: ssh.Identity) -> None:
    transport, _info = ssh.connect(profile, identity, HostKeyPolicy())
    try:
        assert transport.is_authenticated()
    finally:
        transport.close()


# ----------------------------------------------------------------------------- formats


@pytest.mark.parametrize(
    ("kind", "fmt", "name"),
    [
        ("rsa", "pem", "ssh-rsa"),
        ("ecdsa", "pem", "ecdsa-sha2-nistp256"),
        ("ed25519", "openssh", "ssh-ed25519"),
        ("ecdsa", "openssh", "ecdsa-sha2-nistp256"),
        ("rsa", "openssh", "ssh-rsa"),
    ],
)
def test_loads_each_key_format(kind: KeyKind, fmt: KeyFormat, name: str, tmp_path: Path) -> None:
    path, public = make_key(tmp_path, kind, fmt)
    if fmt == "pem":
        assert "PRIVATE KEY-----" in path.read_text().splitlines()[0]
        assert "OPENSSH" not in path.read_text()
    key = ssh.load_private_key(path)
    assert key.get_name() == name
    assert key.get_base64() == public.split()[1]


def test_loads_pkcs8_pem(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl")
    path = tmp_path / "p8.pem"
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "RSA", "-out", str(path)],
        check=True,
        capture_output=True,
    )
    path.chmod(0o600)
    assert ssh.load_private_key(path).get_name() == "ssh-rsa"


def test_a_public_key_or_junk_is_named_as_such(tmp_path: Path) -> None:
    path, _ = make_key(tmp_path, "ed25519")
    pub = path.with_name(path.name + ".pub")
    pub.chmod(0o600)
    with pytest.raises(SSHKeyError, match="a public key, not a private key"):
        ssh.load_private_key(pub)
    junk = tmp_path / "junk"
    junk.write_text("hello\n")
    junk.chmod(0o600)
    with pytest.raises(SSHKeyError, match="not a private key file"):
        ssh.load_private_key(junk)


def test_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(SSHKeyError, match=r"identity file .*nope does not exist"):
        ssh.load_private_key(tmp_path / "nope")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_key_readable_by_others_is_refused_with_the_chmod_fix(mode: int, tmp_path: Path) -> None:
    path, _ = make_key(tmp_path, "ed25519")
    path.chmod(mode)
    with pytest.raises(SSHKeyError) as caught:
        ssh.load_private_key(path)
    assert f"chmod 600 {path}" in str(caught.value)
    assert f"{mode:04o}" in str(caught.value)


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_private_modes_are_fine(mode: int, tmp_path: Path) -> None:
    path, _ = make_key(tmp_path, "ed25519")
    path.chmod(mode)
    assert ssh.load_private_key(path).get_name() == "ssh-ed25519"


# ----------------------------------------------------------------------------- passphrases


@pytest.mark.parametrize(("kind", "fmt"), [("ed25519", "openssh"), ("rsa", "pem")])
def test_passphrase_prompt_is_asked_and_works(
    kind: KeyKind, fmt: KeyFormat, tmp_path: Path
) -> None:
    path, public = make_key(tmp_path, kind, fmt, passphrase="correct horse")
    asked: list[Path] = []

    def prompt(p: Path) -> str:
        asked.append(p)
        return "correct horse"

    key = ssh.load_private_key(path, prompt)
    assert asked == [path]
    assert key.get_base64() == public.split()[1]


def test_passphrase_without_a_prompt_names_ssh_add(tmp_path: Path) -> None:
    path, _ = make_key(tmp_path, "ed25519", passphrase="correct horse")
    with pytest.raises(SSHKeyError) as caught:
        ssh.load_private_key(path, None)
    assert str(caught.value).startswith(
        f"key {path} is passphrase-protected and there is no terminal to ask: "
        f"add it to ssh-agent (ssh-add {path})"
    )


def test_wrong_passphrase_is_asked_three_times_then_clear_error(tmp_path: Path) -> None:
    path, _ = make_key(tmp_path, "rsa", "pem", passphrase="correct horse")
    calls: list[Path] = []

    def wrong(p: Path) -> str:
        calls.append(p)
        return "wrong horse"

    with pytest.raises(SSHKeyError, match="wrong passphrase for key"):
        ssh.load_private_key(path, wrong)
    assert len(calls) == 3


def test_second_try_passphrase_succeeds(tmp_path: Path) -> None:
    path, _ = make_key(tmp_path, "ed25519", passphrase="correct horse")
    answers = iter(["typo", "correct horse"])
    assert ssh.load_private_key(path, lambda _p: next(answers)).get_name() == "ssh-ed25519"


def test_prompt_returning_none_means_nobody_answered(tmp_path: Path) -> None:
    path, _ = make_key(tmp_path, "ed25519", passphrase="correct horse")
    with pytest.raises(SSHKeyError, match="no passphrase was given"):
        ssh.load_private_key(path, lambda _p: None)


# ----------------------------------------------------------------------------- real logins


@pytest.mark.parametrize(
    ("kind", "fmt", "passphrase"),
    [
        ("rsa", "pem", None),  # what AWS hands out for EC2 key pairs
        ("ed25519", "openssh", None),
        ("ecdsa", "openssh", None),
        ("ed25519", "openssh", "correct horse"),
    ],
)
def test_login_with_each_key_kind(
    make_sshd: Callable[..., Sshd],
    kind: KeyKind,
    fmt: KeyFormat,
    passphrase: str | None,
    tmp_path: Path,
) -> None:
    server = make_sshd()
    path, public = make_key(tmp_path, kind, fmt, passphrase=passphrase, name="client")
    server.authorize(public)
    profile = profile_for(server, path, tmp_path)
    identity = ssh.load_identity(profile, (lambda _p: passphrase) if passphrase else None)
    login(profile, identity)


def test_unauthorised_key_is_authentication_failed(
    make_sshd: Callable[..., Sshd], tmp_path: Path
) -> None:
    server = make_sshd()
    path, _public = make_key(tmp_path, "ed25519", name="stranger")
    profile = profile_for(server, path, tmp_path)
    with pytest.raises(AuthenticationFailed) as caught:
        login(profile, ssh.load_identity(profile))
    assert f"refused key {path} for user {server.user}" in str(caught.value)


def test_only_the_profile_key_is_offered_never_home_ssh(
    make_sshd: Callable[..., Sshd], tmp_home: Path, tmp_path: Path
) -> None:
    """A key in ~/.ssh that the bastion would accept is NOT tried behind the profile's back."""
    server = make_sshd()
    assert server.key_path is not None
    shutil.copy(server.key_path, tmp_home / ".ssh" / "id_ed25519")
    (tmp_home / ".ssh" / "id_ed25519").chmod(0o600)
    stranger, _ = make_key(tmp_path, "ed25519", name="stranger")
    profile = profile_for(server, stranger, tmp_path)
    with pytest.raises(AuthenticationFailed):
        login(profile, ssh.load_identity(profile))
    assert server.log_text().count("Accepted publickey") == 0


# ----------------------------------------------------------------------------- agent


@pytest.fixture
def agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A real ssh-agent on a private socket, SSH_AUTH_SOCK pointing at it."""
    if shutil.which("ssh-agent") is None or shutil.which("ssh-add") is None:
        pytest.skip("needs ssh-agent")
    sock = tmp_path / "agent.sock"
    proc = subprocess.Popen(
        ["ssh-agent", "-D", "-a", str(sock)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            if sock.exists():
                break
            proc.poll()
            import time

            time.sleep(0.01)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        yield sock
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=5)


def test_no_identity_file_and_no_agent_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, make_sshd: Callable[..., Sshd], tmp_path: Path
) -> None:
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    profile = profile_for(make_sshd(), None, tmp_path)
    with pytest.raises(SSHKeyError, match="no identity_file and no ssh-agent is running"):
        ssh.load_identity(profile)


def test_empty_agent_is_a_clear_error(
    agent: Path, make_sshd: Callable[..., Sshd], tmp_path: Path
) -> None:
    profile = profile_for(make_sshd(), None, tmp_path)
    with pytest.raises(SSHKeyError, match="ssh-agent holds no keys"):
        ssh.load_identity(profile)


def test_agent_keys_log_in_when_there_is_no_identity_file(
    agent: Path, make_sshd: Callable[..., Sshd], tmp_path: Path
) -> None:
    server = make_sshd()
    assert server.key_path is not None
    subprocess.run(
        ["ssh-add", str(server.key_path)], check=True, capture_output=True, env=os.environ
    )
    profile = profile_for(server, None, tmp_path)
    identity = ssh.load_identity(profile)
    assert identity.source == "agent"
    login(profile, identity)


def test_agent_is_not_used_when_the_profile_names_a_key(
    agent: Path, make_sshd: Callable[..., Sshd], tmp_path: Path
) -> None:
    server = make_sshd()
    assert server.key_path is not None
    subprocess.run(
        ["ssh-add", str(server.key_path)], check=True, capture_output=True, env=os.environ
    )
    stranger, _ = make_key(tmp_path, "ed25519", name="stranger")
    profile = profile_for(server, stranger, tmp_path)
    with pytest.raises(AuthenticationFailed):
        login(profile, ssh.load_identity(profile))


def test_paramiko_agent_key_type() -> None:
    """Guard: paramiko's AgentKey is a PKey, so agent keys go through the same auth path."""
    assert issubclass(paramiko.AgentKey, paramiko.PKey)
