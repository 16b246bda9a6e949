"""A key of another type for a known bastion is refused everywhere, as OpenSSH refuses it.

The attack: known_hosts pins the bastion's ED25519 key; a man in the middle cannot present it, so
it offers an RSA key instead. Treating that as an "unknown host" (and with
`--accept-new-host-key`, recording it) defeats the pin. Here a real RSA-only sshd stands in for
the man in the middle, with an ED25519 key of another machine pinned for its address; every entry
point (up, up --detach through the agent, check, psql, exec, engine = "openssh", the TUI) must
refuse with the pinned fingerprint and its known_hosts line, and leave known_hosts unchanged.

Also: the handshake asks for the key types known_hosts holds first (as OpenSSH orders
HostKeyAlgorithms), so a bastion that has both keys presents the pinned one and is accepted.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli import RunCli
from tests.conftest import LabProfile
from tests.lab.keys import fingerprint, make_key
from tests.lab.sshd import Sshd
from tests.test_agent_support import agent_home  # noqa: F401 - fixture
from tests.test_cli_up import errline, no_traceback
from tests.test_tunnel import closed_port
from tests.tui_support import sync, wait_for_screen

ACCEPT = "--accept-new-host-key"


@pytest.fixture
def rsa_only(make_sshd: Any) -> Sshd:
    """A bastion that offers only an RSA host key."""
    server: Sshd = make_sshd(host_key_types=("rsa",))
    return server


@pytest.fixture
def pinned(lab_profile: LabProfile, rsa_only: Sshd, tmp_path: Path) -> Iterator[tuple[str, bytes]]:
    """The lab profile pointed at the RSA-only bastion, an ED25519 key pinned for its address.

    Yields (pinned fingerprint, known_hosts bytes before the test)."""
    _priv, pub = make_key(tmp_path, "ed25519", name="pinned_host_key")
    lab_profile.known_hosts.write_text(
        f"# the bastion's real key\n{rsa_only.known_hosts_name()} {' '.join(pub.split()[:2])}\n"
    )
    lab_profile.write(bastion=rsa_only.destination, password="none")
    before = lab_profile.known_hosts.read_bytes()
    yield fingerprint(pub), before
    assert lab_profile.known_hosts.read_bytes() == before, "known_hosts was changed"


def assert_refused(result: Any, pinned_fp: str, lab_profile: LabProfile, server: Sshd) -> None:
    assert result.returncode == 4, result  # host key refused: its own exit code
    no_traceback(result.stdout, result.stderr)
    line = errline(result.stderr)
    assert "another type is not a new host" in line
    assert f"ED25519 {pinned_fp} ({lab_profile.known_hosts} line 2)" in line
    assert server.host_key_fingerprint("rsa") in line  # what the server presented
    assert "ssh-keygen" in line
    assert " -R " in line


@pytest.mark.parametrize(
    "args",
    [
        ["up", "lab", "--port", "PORT"],
        ["up", "lab", "--port", "PORT", ACCEPT],
        ["check", "lab"],
        ["check", "lab", ACCEPT],
        ["psql", ACCEPT, "lab", "-c", "select 1"],
        ["exec", ACCEPT, "lab", "--", "true"],
    ],
    ids=["up", "up-accept-new", "check", "check-accept-new", "psql", "exec"],
)
def test_every_command_refuses_another_key_type(
    run_cli: RunCli,
    args: list[str],
    lab_profile: LabProfile,
    rsa_only: Sshd,
    pinned: tuple[str, bytes],
) -> None:
    argv = [str(closed_port()) if a == "PORT" else a for a in args]
    result = run_cli(*argv, timeout=60)
    if args[0] == "check":
        # The doctor prints its steps; the host-key step fails with the same explanation.
        assert result.returncode != 0, result
        no_traceback(result.stdout, result.stderr)
        text = result.stdout + result.stderr
        assert "another type is not a new host" in text
        assert pinned[0] in text
        return
    assert_refused(result, pinned[0], lab_profile, rsa_only)


@pytest.mark.usefixtures("agent_home")
def test_the_agent_refuses_it_too(
    run_cli: RunCli, lab_profile: LabProfile, rsa_only: Sshd, pinned: tuple[str, bytes]
) -> None:
    for extra in ([], [ACCEPT]):
        result = run_cli("up", "lab", "--detach", "--port", str(closed_port()), *extra)
        assert_refused(result, pinned[0], lab_profile, rsa_only)
    status = run_cli("status", "--json")
    assert '"up"' not in status.stdout


def test_the_openssh_engine_refuses_it_too(
    run_cli: RunCli, lab_profile: LabProfile, rsa_only: Sshd, pinned: tuple[str, bytes]
) -> None:
    lab_profile.write(engine="openssh")
    for extra in ([], [ACCEPT]):
        result = run_cli("up", "lab", "--port", str(closed_port()), *extra, timeout=60)
        assert_refused(result, pinned[0], lab_profile, rsa_only)


def test_the_known_type_is_asked_for_first(
    run_cli: RunCli, make_sshd: Any, lab_profile: LabProfile
) -> None:
    """A bastion with ED25519 and RSA keys, RSA pinned: paramiko's default would pick ED25519
    (a mismatch); asking for the pinned type first makes it present RSA, which is accepted."""
    both: Sshd = make_sshd(host_key_types=("ed25519", "rsa"))
    lab_profile.known_hosts.write_text(both.host_key_line(kind="rsa") + "\n")
    assert both.key_path is not None
    key = lab_profile.identity_file.with_name("id_both")
    shutil.copyfile(both.key_path, key)
    key.chmod(0o600)
    lab_profile.write(bastion=both.destination, identity_file=key, password="none")
    result = run_cli("exec", "lab", "--", "true", timeout=60)
    assert result.returncode == 0, result
    assert lab_profile.known_hosts.read_text().count("\n") == 1


@pytest.mark.parametrize("holder", ["agent", "in-process"])
@sync
async def test_the_tui_shows_the_refusal_with_the_pinned_key(
    holder: str, lab_profile: LabProfile, rsa_only: Sshd, pinned: tuple[str, bytes]
) -> None:
    from tunnelman.agent.client import AgentClient
    from tunnelman.tui.app import make_app
    from tunnelman.tui.hosts import AgentHost, InProcessHost, TunnelHost
    from tunnelman.tui.screens.modals import HostKeyChangedScreen

    host: TunnelHost = AgentHost(AgentClient()) if holder == "agent" else InProcessHost()
    try:
        app = make_app(lab_profile.config, initial_profile="lab", host=host)
        async with app.run_test(size=(160, 45)) as pilot:
            await pilot.press("enter")
            await wait_for_screen(
                pilot, app, HostKeyChangedScreen, "#close", 30, "the refusal modal"
            )
            screen = app.screen
            assert isinstance(screen, HostKeyChangedScreen)
            assert [k.fingerprint for k in screen.known] == [pinned[0]]
            title = str(screen.query_one(".dialog-title").render())
            body = str(screen.query_one(".dialog-body").render())
            assert "ANOTHER TYPE" in title
            assert pinned[0] in body
            assert f"{lab_profile.known_hosts}:2" in body
            assert rsa_only.host_key_fingerprint("rsa") in body
            await pilot.press("escape")
            assert app.state_of("lab")[0] == "failed"
    finally:
        if isinstance(host, AgentHost):
            host.client.shutdown()
