"""`tunnelman check` against the real lab: every step shown, the PostGIS version, and the first
failure with its fix (later steps skipped). The database password comes from a prompt on a real
pseudo-terminal, or from the real Secret Service keyring when the lab has one."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli import TUNNELMAN
from tests.conftest import LabProfile
from tests.lab.keys import make_key
from tests.test_cli_up import Pty, run

STEP_NAMES = (
    "config",
    "key",
    "reach bastion",
    "host key",
    "log in to bastion",
    "open forward",
    "log in to database",
    "server version",
    "PostGIS",
)


def marks(output: str) -> dict[str, str]:
    """step name -> its mark (✓, ✗ or -)."""
    found: dict[str, str] = {}
    for raw in output.splitlines():
        line = raw.strip()
        for name in STEP_NAMES:
            if re.match(rf"^[✓✗-] {re.escape(name)}\s", line):
                found[name] = line[0]
    return found


@pytest.fixture
def pty_run() -> Iterator[Any]:
    """`tunnelman ARGS` on a real pseudo-terminal (see tests/test_cli_up.py)."""
    made: list[Pty] = []

    def start(*args: str) -> Pty:
        term = Pty([*TUNNELMAN, *args])
        made.append(term)
        return term

    yield start
    for term in made:
        term.close()


def test_check_shows_every_step_and_the_postgis_version(
    lab_profile: LabProfile, pty_run: Any
) -> None:
    lab_profile.write(password="prompt")
    term = pty_run("check", "lab")
    term.expect(r"Password for postgres@geo")
    term.send(lab_profile.password + "\r")
    assert term.wait(timeout=30) == 0, term.output
    out = term.output
    assert marks(out) == dict.fromkeys(STEP_NAMES, "✓"), out
    assert re.search(r"✓ PostGIS\s+PostGIS 3\.\d+", out), out
    assert 'POSTGIS="3.' in out
    assert re.search(r"✓ server version\s+PostgreSQL 1\d", out)
    assert f"matches {lab_profile.known_hosts}" in out
    assert "All checks passed." in out
    assert lab_profile.password not in out


def test_check_with_the_keyring(lab_profile: LabProfile, keyring_backend: Any) -> None:
    from tunnelman.core import credentials

    credentials.keyring_set("lab", lab_profile.password)
    try:
        result, _ = run("check", "lab")
    finally:
        credentials.keyring_delete("lab")
    assert result.returncode == 0, result.stdout + result.stderr
    assert marks(result.stdout) == dict.fromkeys(STEP_NAMES, "✓")
    assert "password: keyring" in result.stdout


def test_wrong_database_password_stops_at_login(lab_profile: LabProfile, pty_run: Any) -> None:
    lab_profile.write(password="prompt")
    term = pty_run("check", "lab")
    term.expect(r"Password for postgres@geo")
    term.send("not-the-password\r")
    assert term.wait(timeout=30) == 1
    got = marks(term.output)
    assert got["open forward"] == "✓"
    assert got["log in to database"] == "✗"
    assert got["server version"] == got["PostGIS"] == "-"
    assert "password authentication failed" in term.output
    assert "tunnelman password set lab" in term.output


def test_no_password_and_no_terminal_is_a_clear_failure(lab_profile: LabProfile) -> None:
    lab_profile.write(password="prompt")
    result, _ = run("check", "lab")
    assert result.returncode == 1
    assert marks(result.stdout)["log in to database"] == "✗"
    assert "there is no terminal" in result.stdout


def test_postgis_not_installed_is_a_note_not_a_failure(
    lab_profile: LabProfile, make_postgres: Any, pty_run: Any
) -> None:
    plain = make_postgres(postgis=False)
    lab_profile.write(endpoint=f"127.0.0.1:{plain.port}", password="prompt")
    term = pty_run("check", "lab")
    term.expect(r"Password for")
    term.send(plain.password + "\r")
    assert term.wait(timeout=30) == 0, term.output
    assert marks(term.output)["PostGIS"] == "✓"
    assert "not installed in geo" in term.output
    assert "CREATE EXTENSION postgis" in term.output


def test_world_readable_key_fails_at_key_with_the_fix(lab_profile: LabProfile) -> None:
    lab_profile.identity_file.chmod(0o640)
    result, _ = run("check", "lab")
    assert result.returncode == 1
    got = marks(result.stdout)
    assert got["config"] == "✓"
    assert got["key"] == "✗"
    assert all(got[name] == "-" for name in STEP_NAMES[2:])
    assert f"fix: run `chmod 600 {lab_profile.identity_file}`" in result.stdout


def test_wrong_key_fails_at_bastion_login(lab_profile: LabProfile, tmp_path: Path) -> None:
    stranger, _ = make_key(tmp_path, "ed25519", name="stranger")
    lab_profile.write(identity_file=stranger)
    result, _ = run("check", "lab")
    assert result.returncode == 1
    got = marks(result.stdout)
    assert got["host key"] == "✓"
    assert got["log in to bastion"] == "✗"
    assert "authorized_keys" in result.stdout


def test_unknown_host_key_then_accept_new(lab_profile: LabProfile) -> None:
    lab_profile.known_hosts.write_text("")
    lab_profile.write(password="none")
    result, _ = run("check", "lab")
    assert result.returncode == 1
    assert marks(result.stdout)["host key"] == "✗"
    assert "--accept-new-host-key" in result.stdout
    result, _ = run("check", "lab", "--accept-new-host-key")
    got = marks(result.stdout)
    assert got["host key"] == "✓"
    assert f"recorded in {lab_profile.known_hosts}" in result.stdout
    assert got["open forward"] == "✓"
    # password = "none" against a SCRAM server: the login step says what to do
    assert got["log in to database"] == "✗"
    assert 'set password = "keyring"' in result.stdout


def test_changed_host_key_fails_at_host_key(lab_profile: LabProfile, tmp_path: Path) -> None:
    _key, pub = make_key(tmp_path, "ed25519", name="old")
    lab_profile.known_hosts.write_text(
        f"{lab_profile.sshd.known_hosts_name()} {' '.join(pub.split()[:2])}\n"
    )
    result, _ = run("check", "lab")
    assert result.returncode == 1
    assert marks(result.stdout)["host key"] == "✗"
    assert "CHANGED" in result.stdout
    assert lab_profile.sshd.host_key_fingerprint() in result.stdout


def test_endpoint_unreachable_fails_at_open_forward(lab_profile: LabProfile) -> None:
    from tests.test_tunnel import closed_port

    lab_profile.write(endpoint=f"127.0.0.1:{closed_port()}")
    result, _ = run("check", "lab")
    assert result.returncode == 1
    got = marks(result.stdout)
    assert got["log in to bastion"] == "✓"
    assert got["open forward"] == "✗"
    assert "security group" in result.stdout


def test_unreachable_bastion_fails_at_reach(lab_profile: LabProfile) -> None:
    lab_profile.write(bastion="ec2-user@bastion.tunnelman-test.invalid")
    result, _ = run("check", "lab")
    assert result.returncode == 1
    assert marks(result.stdout)["reach bastion"] == "✗"
    assert "does not resolve" in result.stdout


def test_missing_profile_fails_at_config(lab_profile: LabProfile) -> None:
    result, _ = run("check", "nope")
    assert result.returncode == 1
    assert marks(result.stdout) == {"config": "✗", **dict.fromkeys(STEP_NAMES[1:], "-")}


def test_no_identity_file_and_no_agent(lab_profile: LabProfile) -> None:
    lab_profile.write(identity_file=None)
    result, _ = run("check", "lab")
    assert result.returncode == 1
    assert marks(result.stdout)["key"] == "✗"
    assert "ssh-agent" in result.stdout


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs ssh-keygen")
@pytest.mark.usefixtures("run_cli")  # through `run`: a cli test
def test_help() -> None:
    result, _ = run("check", "--help")
    assert result.returncode == 0
    assert "--accept-new-host-key" in result.stdout
