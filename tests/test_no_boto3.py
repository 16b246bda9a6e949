"""boto3 (≈0.6 s to import) stays out of everything that does not need AWS: `ls`, `up`, `psql` on a
profile without AWS settings, every `--help`, and the core modules the one-shot path imports.

Each check runs in a fresh interpreter and reads `sys.modules` (or `-X importtime`) there, so an
import anywhere on the path, even a deferred one, is caught.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import paramiko
import pytest

REPO = Path(__file__).resolve().parents[1]
AWS_MODULES = ("boto3", "botocore", "s3transfer")
_MARK = "@@loaded-aws-modules@@"

_RUN_CLI = f"""
import json, sys
from tunnelman.cli.main import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
finally:
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in {AWS_MODULES!r})
    print({_MARK!r} + json.dumps(loaded), file=sys.stderr)
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    return env


def _loaded_by(code: str, *args: str, timeout: float = 60) -> tuple[list[str], str]:
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(REPO),
        check=False,
    )
    for line in proc.stderr.splitlines():
        if line.startswith(_MARK):
            return json.loads(line[len(_MARK) :]), proc.stderr
    raise AssertionError(f"no module report; stderr:\n{proc.stderr}")


def _cli_loads(*args: str) -> list[str]:
    return _loaded_by(_RUN_CLI, *args)[0]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def profiles(tmp_home: Path) -> Path:
    """A profile without AWS settings (`plain`) next to one with a cluster (`geo`)."""
    key = tmp_home / ".ssh" / "id_test"
    paramiko.RSAKey.generate(2048).write_private_key_file(str(key))
    key.chmod(0o600)
    (tmp_home / ".ssh" / "known_hosts").write_text("")
    config = Path(os.environ["TUNNELMAN_CONFIG"])
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(
        f"""\
[profiles.plain]
bastion = "tester@127.0.0.1:{_closed_port()}"
identity_file = "{key}"
endpoint = "db.internal.example:5432"
password = "none"
connect_timeout = 2

[profiles.geo]
bastion = "ec2-user@bastion.example.com"
endpoint = "geo.cluster-abc.us-east-2.rds.amazonaws.com"
cluster = "geo-prod"
region = "us-east-2"
password = "iam"
"""
    )
    return config


def test_ls_never_imports_boto3(profiles: Path) -> None:
    assert _cli_loads("ls") == []
    assert _cli_loads("ls", "--json") == []


def test_ls_importtime_has_no_boto3(profiles: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "tunnelman", "ls"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(REPO),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()]
    assert imported, "no -X importtime output"
    assert not [m for m in imported if m.split(".")[0] in AWS_MODULES]


@pytest.mark.parametrize(
    "command",
    ["up", "psql", "exec", "env", "conn", "discover", "cluster", "profile", "check", "query"],
)
def test_help_never_imports_boto3(command: str, tmp_home: Path) -> None:
    loaded, stderr = _loaded_by(_RUN_CLI, command, "--help")
    if "no command" in stderr:
        pytest.skip(f"`tunnelman {command}` is not built yet")
    assert loaded == []


@pytest.mark.parametrize("command", ["up", "psql"])
def test_up_and_psql_on_a_plain_profile_never_import_boto3(command: str, profiles: Path) -> None:
    # The bastion port is closed: the command goes through loading the profile, the key, the
    # host-key policy and the tunnel engine, then fails to connect. No AWS on that path.
    args = ["psql", "plain", "-c", "select 1"] if command == "psql" else ["up", "plain"]
    loaded, stderr = _loaded_by(_RUN_CLI, *args, timeout=90)
    if f"no command '{command}'" in stderr:
        pytest.skip(f"`tunnelman {command}` is not built yet")
    assert "tunnelman: error:" in stderr
    assert loaded == []


@pytest.mark.parametrize(
    "module",
    [
        "tunnelman.cli.main",
        "tunnelman.cli.cmd_tunnel",
        "tunnelman.cli.cmd_clients",
        "tunnelman.cli.cmd_aws",
        "tunnelman.cli.cmd_profiles",
        "tunnelman.core.tunnel",
        "tunnelman.core.clients",
        "tunnelman.core.oneshot",
        "tunnelman.core.ssh",
        "tunnelman.core.credentials",
        "tunnelman.core.aws",
    ],
)
def test_modules_import_without_boto3(module: str) -> None:
    code = f"""
import importlib, importlib.util, sys
if importlib.util.find_spec({module!r}) is None:
    print("@@missing", file=sys.stderr)
else:
    importlib.import_module({module!r})
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {AWS_MODULES!r})
import json
print({_MARK!r} + json.dumps(loaded), file=sys.stderr)
"""
    loaded, stderr = _loaded_by(code)
    if "@@missing" in stderr:
        pytest.skip(f"{module} is not built yet")
    assert loaded == []


_RESUME_CHECK = f"""
import json, sys
from tunnelman.core import aws, credentials
from tunnelman.core.profiles import load
sets = load()
plain = sets.get("plain")
assert aws.resume_hint(plain) is None
assert aws.needs_resume_timeout(plain) is False
assert aws.connect_timeout_for(plain) == plain.connect_timeout
assert credentials.resolve_password(plain) is None
before = sorted(m for m in sys.modules if m.split(".")[0] in {AWS_MODULES!r})
# the control: a profile with a cluster does ask AWS (and fails here: no credentials)
assert aws.needs_resume_timeout(sets.get("geo")) is True
after = "boto3" in sys.modules
print({_MARK!r} + json.dumps(before), file=sys.stderr)
print("@@after", after, file=sys.stderr)
"""


def test_resume_checks_are_free_without_a_cluster(profiles: Path) -> None:
    loaded, stderr = _loaded_by(_RESUME_CHECK)
    assert loaded == []
    assert "@@after True" in stderr  # the detector does see boto3 when it is imported
