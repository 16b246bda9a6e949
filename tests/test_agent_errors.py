"""Errors keep their class across the agent: the registry, the wire format, and one family each
(config, host key, port busy, OpenSSH missing, key passphrase) through the real agent and CLI.

Every `TunnelmanError` subclass registers itself by name (`core.errors`); the agent sends the
class name, its registered ancestors, message, hint, exit code and the class's own fields, and the
client rebuilds the same class (`agent.protocol.error_from_wire`). The lab tests compare the
detached `up` (the agent's error, rebuilt by the client, printed by the CLI) with the foreground
`up` (the same error met in the CLI's own process): same lines, same exit status.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli import RunCli, run_cli
from tests.conftest import LabProfile
from tests.lab.keys import fingerprint, make_key
from tests.test_agent_support import (
    agent_home,  # noqa: F401 - fixture
    agent_log_tail,
    status_json,
)
from tunnelman.agent import protocol
from tunnelman.agent.client import AgentClient
from tunnelman.core import errors
from tunnelman.core.errors import (
    Cancelled,
    ConfigError,
    ForwardingFailed,
    HostKeyError,
    OpenSSHMissing,
    PassphraseRequired,
    PortBusyError,
    ProfileNotFound,
    TunnelmanError,
)
from tunnelman.core.profiles import MAX_PROBLEMS_SHOWN, ConfigProblems
from tunnelman.core.ssh.known_hosts import (
    HostKeyChanged,
    HostKeyInfo,
    HostKeyTypeMismatch,
    HostKeyUnknown,
    KnownKey,
)

# Registered, but raised where no agent reply carries them: the agent's own start (`agent run`),
# a client-side "no answer", and the one-shot commands, `tunnelman db`, `tunnelman query` (the Data
# API, no tunnel) and the TUI's clipboard, which run in the CLI's or the TUI's process.
NEVER_SENT = {
    "AlreadyRunning",
    "AgentGone",
    "ProgramNotFound",
    "Terminated",
    "ClipboardError",
    "DbOpsError",
    "QueryError",
}


def _all_classes() -> dict[str, type[TunnelmanError]]:
    """Every public TunnelmanError subclass of tunnelman.core and tunnelman.agent, by name."""
    for package in ("tunnelman.core", "tunnelman.agent"):
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(root.__path__, package + "."):
            if info.name != "tunnelman.agent.__main__":
                importlib.import_module(info.name)
    found: dict[str, type[TunnelmanError]] = {}
    todo: list[type[TunnelmanError]] = [TunnelmanError]
    while todo:
        cls = todo.pop()
        found[cls.__name__] = cls
        todo.extend(cls.__subclasses__())
    return {
        name: cls
        for name, cls in found.items()
        if not name.startswith("_")
        and cls.__module__.startswith(("tunnelman.core", "tunnelman.agent"))
    }


def round_trip(exc: TunnelmanError) -> TunnelmanError:
    """`exc` as the agent sends it and the client reads it, through JSON text."""
    return protocol.error_from_wire(protocol.decode(protocol.encode(protocol.error_to_wire(exc))))


def same(a: TunnelmanError, b: TunnelmanError) -> None:
    assert type(b) is type(a), (type(a), type(b))
    assert (b.message, b.hint, b.exit_code, str(b)) == (a.message, a.hint, a.exit_code, str(a))


# ----------------------------------------------------------------------------- the registry


def test_every_error_class_is_registered_and_a_fresh_client_knows_those_the_agent_sends() -> None:
    classes = _all_classes()
    assert {"OpenSSHMissing", "HostKeyChanged", "ConfigProblems", "ProtocolError"} <= set(classes)
    for name, cls in classes.items():
        assert errors.registered(name) is cls, name
        chain = errors.lineage(cls)
        assert (chain[0], chain[-1]) == (cls, TunnelmanError), name
    sent = sorted(set(classes) - NEVER_SENT)
    # A client (the CLI, the TUI) that has imported only the agent client, as `up --detach` has.
    script = (
        "import json, sys\n"
        "from tunnelman.agent import client, protocol\n"
        f"names = {sent!r}\n"
        "found = {n: getattr(protocol.error_class(n), '__module__', None) for n in names}\n"
        "heavy = [m for m in ('paramiko', 'sshtunnel', 'boto3', 'textual', 'click', 'rich')"
        " if m in sys.modules]\n"
        "print(json.dumps({'found': found, 'heavy': heavy}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    result = json.loads(done.stdout)
    assert result["found"] == {name: classes[name].__module__ for name in sent}
    assert result["heavy"] == []


def test_two_classes_of_one_name_are_refused() -> None:
    with pytest.raises(TypeError, match="two TunnelmanError classes named PortBusyError"):
        type("PortBusyError", (errors.TunnelError,), {})


# ----------------------------------------------------------------------------- the wire format


def _info() -> HostKeyInfo:
    return HostKeyInfo("127.0.0.1", 2222, "ssh-ed25519", "SHA256:new")


@pytest.mark.parametrize(
    "exc",
    [
        ConfigError("bad value", hint="fix it"),
        ProfileNotFound("no profile named 'x'", hint="profiles: a, b"),
        OpenSSHMissing("no ssh", hint="install it"),
        PassphraseRequired("key k is passphrase-protected", hint="ssh-add k"),
        Cancelled(),
        ForwardingFailed("refused"),
        protocol.ProtocolError("not a JSON line"),
        PortBusyError("port 5433 busy", hint="choose another", port=5433, pid=812),
        PortBusyError("port busy"),
        HostKeyUnknown("unknown", info=_info(), known_hosts=Path("/k/known_hosts"), hint="yes?"),
        HostKeyChanged(
            "CHANGED\nline two",
            info=_info(),
            expected="SHA256:old",
            known_hosts=Path("/k/known_hosts"),
            line=3,
            hint="ssh-keygen -R",
        ),
        HostKeyTypeMismatch(
            "type mismatch",
            info=_info(),
            known=(KnownKey("ssh-rsa", "SHA256:rsa", 2), KnownKey("ecdsa", "SHA256:ec", 5)),
            known_hosts=Path("/k/known_hosts"),
        ),
        ConfigProblems(
            [
                ConfigError("f: profiles.a.x: unknown key", hint="did you mean y"),
                ProfileNotFound("f: no profile"),
            ]
        ),
        ConfigProblems([ConfigError(f"f: profiles.p{i}: bad", hint="h") for i in range(5000)]),
    ],
    ids=lambda exc: type(exc).__name__,
)
def test_an_error_crosses_the_wire_as_itself(exc: TunnelmanError) -> None:
    back = round_trip(exc)
    same(exc, back)
    for key in ("port", "pid", "info", "expected", "line", "known_hosts", "known"):
        assert getattr(back, key, None) == getattr(exc, key, None), key
    if isinstance(exc, ConfigProblems):
        assert isinstance(back, ConfigProblems)
        assert (back.lines, back.total) == (exc.lines, exc.total)
        # The first ones cross (as many as are shown), never thousands.
        assert [(type(p), str(p)) for p in back.problems] == [
            (type(p), str(p)) for p in exc.problems[:MAX_PROBLEMS_SHOWN]
        ]


def test_the_reply_keeps_the_fields_older_clients_read() -> None:
    reply = protocol.error_to_wire(
        HostKeyChanged(
            "m", info=_info(), expected="SHA256:old", known_hosts=Path("/k"), line=3, hint="h"
        )
    )
    assert reply == {
        "ok": False,
        "error": "m (h)",
        "kind": "HostKeyChanged",
        "ancestry": ["HostKeyError", "TunnelmanError"],
        "message": "m",
        "hint": "h",
        "exit_code": 4,
        "host_key": {
            "host": "127.0.0.1",
            "port": 2222,
            "key_type": "ssh-ed25519",
            "fingerprint": "SHA256:new",
        },
        "known_hosts": "/k",
        "expected": "SHA256:old",
        "line": 3,
    }
    busy = protocol.error_to_wire(PortBusyError("busy", port=5433))
    assert (busy["port"], "pid" in busy, busy["exit_code"]) == (5433, False, 5)


def test_a_class_the_client_does_not_know_becomes_its_nearest_known_ancestor() -> None:
    newer = {
        "ok": False,
        "kind": "JumpHostRefused",  # from a newer agent
        "ancestry": ["SomethingNewer", "ForwardingFailed", "TunnelError", "TunnelmanError"],
        "message": "the jump host refused",
        "hint": "ask its admin",
        "exit_code": 9,
    }
    exc = protocol.error_from_wire(newer)
    assert type(exc) is ForwardingFailed
    assert (exc.message, exc.hint, exc.exit_code) == ("the jump host refused", "ask its admin", 9)
    # An older agent sends no ancestry: an AgentError keeping the exit code, as before.
    older = {key: value for key, value in newer.items() if key != "ancestry"}
    exc = protocol.error_from_wire(older)
    assert (type(exc), exc.exit_code) == (errors.AgentError, 9)
    # ...but the classes it does name are rebuilt, OpenSSHMissing included (it used to be an
    # AgentError here).
    exc = protocol.error_from_wire(
        {"ok": False, "kind": "OpenSSHMissing", "message": "no ssh", "hint": "h", "exit_code": 2}
    )
    assert (type(exc), exc.exit_code, str(exc)) == (OpenSSHMissing, 2, "no ssh (h)")
    # A host-key reply without its key is still a host-key error (exit 4).
    exc = protocol.error_from_wire({"ok": False, "kind": "HostKeyChanged", "message": "m"})
    assert (type(exc), exc.exit_code) == (HostKeyError, 4)


# ----------------------------------------------------------------------------- through the agent


def error_text(result: subprocess.CompletedProcess[str]) -> str:
    """The error the CLI printed: stderr from its `tunnelman: error:` on (a message may span
    lines), after checking there is no traceback."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    start = result.stderr.find("tunnelman: error: ")
    assert start >= 0, result.stderr + agent_log_tail()
    return result.stderr[start:]


def detached_and_foreground(
    name: str, *extra: str, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], str]:
    """`up NAME --detach` (the agent meets the error) and `up NAME` (the CLI meets it): the same
    exit status and the same error lines. The detached run; its error text."""
    detached = run_cli("up", name, "--detach", *extra, env=env)
    foreground = run_cli("up", name, *extra, env=env, timeout=60)
    text = error_text(detached)
    assert (detached.returncode, text) == (foreground.returncode, error_text(foreground))
    assert status_json() == []
    return detached, text


def client_error(name: str, config: str | os.PathLike[str] | None = None) -> TunnelmanError:
    """The error `AgentClient.up` raises in this process."""
    with pytest.raises(TunnelmanError) as caught:
        AgentClient().up(name, config or os.environ["TUNNELMAN_CONFIG"])
    return caught.value


@pytest.mark.usefixtures("agent_home")
def test_config_errors_through_the_agent(lab_profile: LabProfile, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-ssh-config"
    lab_profile.write(ssh_config=missing)
    result, text = detached_and_foreground("lab")
    assert result.returncode == 2
    assert text == (
        f"tunnelman: error: ssh_config file {missing} does not exist or is not a file "
        "(fix ssh_config in the profile (true for ~/.ssh/config, false for none))\n"
    )
    exc = client_error("lab")
    assert type(exc) is ConfigError
    assert exc.hint == "fix ssh_config in the profile (true for ~/.ssh/config, false for none)"
    # A file with several problems: the agent reads it, the client gets each problem.
    broken = tmp_path / "broken.toml"
    broken.write_text('[profiles.a]\nbastoin = "x"\nlocal_port = "five"\n')
    exc = client_error("a", broken)
    assert type(exc) is ConfigProblems
    assert exc.exit_code == 2
    from tunnelman.core import profiles

    with pytest.raises(ConfigProblems) as local:
        profiles.load(broken, missing_ok=False)
    assert exc.lines == local.value.lines
    assert len(exc.problems) == len(local.value.problems) >= 2
    assert str(exc) == str(local.value)


@pytest.mark.usefixtures("agent_home")
def test_a_changed_host_key_through_the_agent(lab_profile: LabProfile, tmp_path: Path) -> None:
    sshd = lab_profile.sshd
    _key, other = make_key(tmp_path / "k", "ed25519", name="other")
    alg, b64 = other.split()[:2]
    lab_profile.known_hosts.write_text(f"{sshd.known_hosts_name()} {alg} {b64}\n")
    result, text = detached_and_foreground("lab")
    assert result.returncode == 4
    assert fingerprint(other) in text
    assert sshd.host_key_fingerprint() in text
    exc = client_error("lab")
    assert type(exc) is HostKeyChanged
    assert exc.info.fingerprint == sshd.host_key_fingerprint()
    assert (exc.expected, exc.line, exc.known_hosts) == (
        fingerprint(other),
        1,
        lab_profile.known_hosts,
    )
    assert exc.hint
    assert exc.hint in text


@pytest.mark.usefixtures("agent_home")
def test_a_busy_port_through_the_agent(lab_profile: LabProfile) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    busy = holder.getsockname()[1]
    try:
        result, text = detached_and_foreground("lab", "--port", str(busy))
        exc = client_error_port("lab", busy)
    finally:
        holder.close()
    assert result.returncode == 5
    assert f"local port {busy}" in text
    assert f"pid {os.getpid()}" in text
    assert type(exc) is PortBusyError
    assert (exc.port, exc.pid, exc.exit_code) == (busy, os.getpid(), 5)
    assert exc.hint
    assert str(exc) in text


def client_error_port(name: str, port: int) -> TunnelmanError:
    with pytest.raises(TunnelmanError) as caught:
        AgentClient().up(name, os.environ["TUNNELMAN_CONFIG"], port)
    return caught.value


@pytest.mark.usefixtures("agent_home")
def test_openssh_missing_through_the_agent(lab_profile: LabProfile, tmp_path: Path) -> None:
    lab_profile.write(engine="openssh", ssh_config=False)
    empty = tmp_path / "bin-without-ssh"
    empty.mkdir()
    # The agent inherits the environment of the CLI that starts it: this one has no ssh on PATH.
    env = {**os.environ, "PATH": str(empty)}
    result, text = detached_and_foreground("lab", env=env)
    assert result.returncode == 2
    assert text.startswith(
        'tunnelman: error: engine = "openssh" needs the OpenSSH client (ssh), and it is not on '
        "PATH (install it (Debian/Ubuntu `sudo apt install openssh-client`"
    )
    assert text.count("\n") == 1
    exc = client_error("lab")
    assert (type(exc), exc.exit_code) == (OpenSSHMissing, 2)
    assert exc.hint
    assert exc.hint in text
    # A fresh client process rebuilds it without importing the engine or paramiko.
    script = (
        "import os, sys\n"
        "from tunnelman.agent.client import AgentClient\n"
        "try:\n"
        "    AgentClient().up('lab', os.environ['TUNNELMAN_CONFIG'])\n"
        "except Exception as exc:\n"
        "    print(type(exc).__module__, type(exc).__name__, exc.exit_code)\n"
        "print(sorted(m for m in ('paramiko', 'tunnelman.core.tunnel.openssh') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.splitlines() == ["tunnelman.core.errors OpenSSHMissing 2", "[]"]


@pytest.mark.usefixtures("agent_home")
def test_a_key_that_needs_a_passphrase_through_the_agent(
    run_cli: RunCli, lab_profile: LabProfile, tmp_path: Path
) -> None:
    key, _pub = make_key(tmp_path, "ed25519", passphrase="correct horse")
    lab_profile.write(identity_file=key)
    result = run_cli("up", "lab", "--detach")
    assert result.returncode == 4
    assert f"ssh-add {key}" in error_text(result)
    exc = client_error("lab")
    assert (type(exc), exc.exit_code) == (PassphraseRequired, 4)
