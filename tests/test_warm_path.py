"""The warm path (`tunnelman.cli.lean`): `psql|exec|env|conn NAME` through a tunnel the agent
holds, without click, paramiko, boto3 or Textual; and the full CLI for everything else, with
its own output and exit codes.

The child is a stand-in (`showenv`, a script on PATH) that writes its argv, its environment and
what its PGPASSFILE holds to a file, so both paths can be compared exactly. The tunnel is a real
one (the lab sshd → PostgreSQL) held by a real agent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.cli import TUNNELMAN, RunCli
from tests.conftest import LabProfile
from tests.test_agent_support import (
    agent_home,  # noqa: F401 - fixture
    ok,
    up_detached,
)
from tunnelman.core import credentials

pytestmark = pytest.mark.usefixtures("agent_home")

HEAVY = ("click", "paramiko", "boto3", "botocore", "textual", "sshtunnel")

STAND_IN = """#!{python}
import json, os, sys
passfile = os.environ.get("PGPASSFILE")
held = None
if passfile:
    with open(passfile) as fh:
        held = fh.read()
    mode = oct(os.stat(passfile).st_mode & 0o777)
else:
    mode = None
with open(os.environ["SHOWENV_OUT"], "w") as fh:
    json.dump({{"argv": sys.argv[1:], "env": dict(os.environ), "passfile": held, "mode": mode}}, fh)
sys.exit(int(os.environ.get("SHOWENV_EXIT", "0")))
"""


@pytest.fixture
def stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`showenv` on PATH; returns the file it writes."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "showenv"
    script.write_text(STAND_IN.format(python=sys.executable))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "showenv.json"
    monkeypatch.setenv("SHOWENV_OUT", str(out))
    return out


def importtime(
    *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """`python -X importtime -m tunnelman ARGS`: the result and the top-level packages imported."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "tunnelman", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        # os.environ, not the C environ: something in the test process puts COLUMNS/LINES there.
        env=dict(os.environ) if env is None else env,
        check=False,
    )
    imported = {
        line.split("|")[-1].strip().split(".")[0]
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    return done, imported


def child_record(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    path.unlink()
    return data


def strip_importtime(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith("import time:"))


def test_warm_exec_imports_nothing_heavy_and_gives_the_same_child(
    lab_profile: LabProfile, stand_in: Path
) -> None:
    lab_profile.write(password="none")
    port = up_detached("lab")

    done, imported = importtime("exec", "lab", "--", "showenv", "-c", "select 1", "--help")
    assert done.returncode == 0, done.stderr[-2000:]
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))
    assert "tunnelman" in imported
    lean = child_record(stand_in)

    full_env = {**os.environ, "TUNNELMAN_NO_LEAN": "1"}
    done, imported = importtime(
        "exec", "lab", "--", "showenv", "-c", "select 1", "--help", env=full_env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "click" in imported, "the full CLI ran this time"
    full = child_record(stand_in)

    assert lean["argv"] == full["argv"] == ["-c", "select 1", "--help"]
    full["env"].pop("TUNNELMAN_NO_LEAN")
    assert lean["env"] == full["env"]
    assert lean["env"]["PGPORT"] == str(port)
    assert lean["env"]["PGHOST"] == "127.0.0.1"
    assert "PGPASSWORD" not in lean["env"]
    assert lean["passfile"] is None  # password = "none": libpq's own .pgpass


def test_warm_psql_with_a_keyring_password_hands_it_over_in_a_passfile(
    lab_profile: LabProfile, stand_in: Path, keyring_backend: Any, tmp_path: Path
) -> None:
    lab_profile.write(password="keyring")
    credentials.keyring_set("lab", "s3cret-lean")
    try:
        port = up_detached("lab")
        # A `psql` stand-in: the lean path runs "psql" found on PATH, as the full path does.
        (stand_in.parent / "bin" / "psql").symlink_to(stand_in.parent / "bin" / "showenv")
        done, imported = importtime("psql", "lab", "-Atc", "select 1")
        assert done.returncode == 0, done.stderr[-2000:]
        assert not imported & set(HEAVY), sorted(imported & set(HEAVY))
        lean = child_record(stand_in)
        full_run = subprocess.run(
            [*TUNNELMAN, "psql", "lab", "-Atc", "select 1"],
            env={**os.environ, "TUNNELMAN_NO_LEAN": "1"},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert full_run.returncode == 0, full_run.stderr
        full = child_record(stand_in)
    finally:
        credentials.keyring_delete("lab")
    assert lean["argv"] == full["argv"] == ["-Atc", "select 1"]
    assert lean["passfile"] == full["passfile"]
    assert lean["passfile"] is not None
    assert "s3cret-lean" in lean["passfile"]
    assert f":{port}:" in lean["passfile"]
    assert lean["mode"] == full["mode"] == "0o600"
    # The file itself is gone once the child ended, on both paths.
    for record in (lean, full):
        assert not Path(record["env"]["PGPASSFILE"]).exists()
    full["env"].pop("TUNNELMAN_NO_LEAN")
    assert lean["env"].pop("PGPASSFILE") != full["env"].pop("PGPASSFILE")  # a fresh one each time
    assert lean["env"] == full["env"]


def test_the_real_psql_on_the_warm_path(lab_profile: LabProfile, run_cli: RunCli) -> None:
    lab_profile.write(password="none")
    pgpass = Path(os.environ["HOME"]) / ".pgpass"
    pgpass.write_text(f"*:*:*:{lab_profile.postgres.user}:{lab_profile.password}\n")
    pgpass.chmod(0o600)
    up_detached("lab")
    done = ok(run_cli("psql", "lab", "-Atc", "select 40 + 2"))
    assert done.stdout.strip() == "42"
    failed = run_cli("psql", "lab", "-v", "ON_ERROR_STOP=1", "-Atc", "select nonsense")
    assert failed.returncode == 1  # psql's own exit status comes back
    assert "nonsense" in failed.stderr


def test_exit_status_of_the_child_comes_back(lab_profile: LabProfile, stand_in: Path) -> None:
    lab_profile.write(password="none")
    up_detached("lab")
    done = subprocess.run(
        [*TUNNELMAN, "exec", "lab", "showenv"],
        env={**os.environ, "SHOWENV_EXIT": "7"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 7, done.stderr


def test_env_and_conn_print_what_the_full_cli_prints(lab_profile: LabProfile) -> None:
    lab_profile.write(password="none")
    up_detached("lab")
    full_env = {**os.environ, "TUNNELMAN_NO_LEAN": "1"}
    for args in (
        ["env", "lab"],
        ["conn", "lab"],
        ["conn", "lab", "--format", "uri"],
        ["conn", "lab", "-f", "pgpass"],
        ["conn", "lab", "--format=dsn"],
        ["conn", "lab", "--format", "jdbc"],
    ):
        lean, imported = importtime(*args)
        assert not imported & set(HEAVY), (args, sorted(imported & set(HEAVY)))
        full, imported = importtime(*args, env=full_env)
        assert "click" in imported
        assert (lean.returncode, lean.stdout, strip_importtime(lean.stderr)) == (
            full.returncode,
            full.stdout,
            strip_importtime(full.stderr),
        ), args
        assert lean.returncode == 0
        assert lean.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["psql", "--help"],
        ["psql", "lab", "--start-cluster", "-c", "select 1"],
        ["psql", "--start-cluster", "lab"],
        ["exec", "lab"],
        ["exec", "lab", "--"],
        ["exec", "lab", "--", "no-such-program-xyz"],
        ["env", "lab", "--port", "0"],
        ["env", "lab", "--shell", "fish"],
        ["conn", "lab", "--format", "nope"],
        ["conn", "lab", "--write"],
        ["conn", "-h"],
        ["psql", "nosuchprofile", "-c", "select 1"],
        ["--config", "/nonexistent/profiles.toml", "psql", "lab"],
        ["--bogus", "psql", "lab"],
        ["psql"],
    ],
)
def test_everything_else_is_the_full_cli_with_its_output(
    lab_profile: LabProfile, args: list[str]
) -> None:
    lab_profile.write(password="none")
    up_detached("lab")
    runs = []
    for extra in ({}, {"TUNNELMAN_NO_LEAN": "1"}):
        done, imported = importtime(*args, env={**os.environ, **extra})
        assert "click" in imported, f"{args}: the full CLI answered"
        stderr = [line for line in done.stderr.splitlines() if not line.startswith("import time:")]
        runs.append((done.returncode, done.stdout, stderr))
    assert runs[0] == runs[1]
    assert "Traceback" not in "\n".join(runs[0][2])


def test_a_password_that_needs_a_prompt_takes_the_full_cli(
    lab_profile: LabProfile, stand_in: Path
) -> None:
    lab_profile.write(password="prompt")
    up_detached("lab")
    done, imported = importtime("exec", "lab", "showenv")
    assert "click" in imported
    assert done.returncode != 0
    assert "asks for its password, but there is no terminal" in done.stderr


def test_no_agent_tunnel_takes_the_full_cli(lab_profile: LabProfile, stand_in: Path) -> None:
    lab_profile.write(password="none")
    done, imported = importtime("exec", "lab", "showenv")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "click" in imported
    assert "paramiko" in imported
    assert child_record(stand_in)["env"]["PGHOST"] == "127.0.0.1"


def test_config_option_is_understood(lab_profile: LabProfile, stand_in: Path) -> None:
    lab_profile.write(password="none")
    up_detached("lab")
    env = dict(os.environ)
    config = env.pop("TUNNELMAN_CONFIG")
    done, imported = importtime("--config", config, "exec", "lab", "showenv", env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "click" not in imported
    done, imported = importtime(f"--config={config}", "env", "lab", env=env)
    assert done.returncode == 0
    assert "export PGPORT=" in done.stdout.replace("$env:", "export ")
    assert "click" not in imported


# ----------------------------------------------------------------------------- one round trip
# On Linux the agent reads the profile and answers with the child's settings (`agent.warm`):
# the client imports only what a Python start, one socket request and an exec need.

QUICK_ONLY = ("tunnelman", "tunnelman.cli", "tunnelman.cli.lean")
# What the path of before imported and the quick path must not: the profile loader and what it
# pulls in, the agent's client, the keyring.
NOT_ON_THE_QUICK_PATH = ("dataclasses", "tomllib", "typing", "platformdirs", "keyring", "shutil")

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="the one-round-trip path: Linux")


def modules_of(done: subprocess.CompletedProcess[str]) -> set[str]:
    """Every module (full dotted name) a `-X importtime` run imported."""
    return {
        line.split("|")[-1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }


def assert_quick(done: subprocess.CompletedProcess[str]) -> None:
    modules = modules_of(done)
    ours = sorted(m for m in modules if m.split(".")[0] == "tunnelman")
    assert ours == sorted(QUICK_ONLY), ours
    assert not modules & set(NOT_ON_THE_QUICK_PATH), sorted(modules & set(NOT_ON_THE_QUICK_PATH))


def assert_before(done: subprocess.CompletedProcess[str]) -> None:
    """The path of before: the profile read by the client, no click."""
    modules = modules_of(done)
    assert "tunnelman.core.profiles" in modules
    assert "click" not in modules


@linux_only
def test_the_quick_path_imports_only_the_floor_and_gives_the_full_clis_child(
    lab_profile: LabProfile, stand_in: Path
) -> None:
    lab_profile.write(password="none")
    port = up_detached("lab")
    args = ("exec", "lab", "--", "showenv", "-c", "select 1")
    done, _ = importtime(*args, env={**os.environ, "PGSERVICE": "other", "PGOPTIONS": "-c x=1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert_quick(done)
    lean = child_record(stand_in)
    full_env = {**os.environ, "PGSERVICE": "other", "PGOPTIONS": "-c x=1", "TUNNELMAN_NO_LEAN": "1"}
    done, _ = importtime(*args, env=full_env)
    assert done.returncode == 0, done.stderr[-2000:]
    full = child_record(stand_in)
    full["env"].pop("TUNNELMAN_NO_LEAN")
    assert lean["argv"] == full["argv"] == ["-c", "select 1"]
    assert lean["env"] == full["env"]
    assert lean["env"]["PGPORT"] == str(port)
    assert lean["env"]["PGOPTIONS"] == "-c x=1", "the caller's own PG* settings are kept"
    assert "PGSERVICE" not in lean["env"], "and the ones child_env clears are cleared"


@linux_only
def test_the_quick_path_prints_env_and_conn_as_the_full_cli(lab_profile: LabProfile) -> None:
    lab_profile.write(password="none")
    up_detached("lab")
    for args in (["env", "lab"], ["conn", "lab", "-f", "uri"], ["conn", "lab", "--format=qgis"]):
        lean, _ = importtime(*args)
        assert_quick(lean)
        full, _ = importtime(*args, env={**os.environ, "TUNNELMAN_NO_LEAN": "1"})
        assert (lean.returncode, lean.stdout, strip_importtime(lean.stderr)) == (
            full.returncode,
            full.stdout,
            strip_importtime(full.stderr),
        ), args
        assert lean.returncode == 0
        assert lean.stdout


@linux_only
def test_the_agent_reads_the_keyring_and_the_client_imports_none(
    lab_profile: LabProfile, stand_in: Path, keyring_backend: Any
) -> None:
    lab_profile.write(password="keyring")
    credentials.keyring_set("lab", "s3cret-quick")
    try:
        port = up_detached("lab")
        (stand_in.parent / "bin" / "psql").symlink_to(stand_in.parent / "bin" / "showenv")
        done, _ = importtime("psql", "lab", "-Atc", "select 1")
        assert done.returncode == 0, done.stderr[-2000:]
        assert_quick(done)
        lean = child_record(stand_in)
    finally:
        credentials.keyring_delete("lab")
    assert lean["passfile"] == f"127.0.0.1:{port}:*:{lab_profile.keys['user']}:s3cret-quick\n"
    assert lean["mode"] == "0o600"
    assert lean["env"]["PGPASSFILE"].startswith("/proc/")
    assert "s3cret-quick" not in json.dumps(lean["env"]) + json.dumps(lean["argv"])
    log = (Path(os.environ["XDG_STATE_HOME"]) / "tunnelman").rglob("*.log")
    for path in log:
        assert "s3cret-quick" not in path.read_text(errors="replace"), path


@linux_only
def test_a_profile_edited_after_up_takes_the_path_of_before(
    lab_profile: LabProfile, stand_in: Path
) -> None:
    lab_profile.write(password="none")
    up_detached("lab")
    lab_profile.write(endpoint="db.elsewhere.example:6543", sslmode="verify-full")
    for args in (["env", "lab"], ["exec", "lab", "showenv"]):
        lean, _ = importtime(*args)
        assert_before(lean)
        lean_child = child_record(stand_in) if args[0] == "exec" else None
        full, _ = importtime(*args, env={**os.environ, "TUNNELMAN_NO_LEAN": "1"})
        assert (lean.returncode, lean.stdout, strip_importtime(lean.stderr)) == (
            full.returncode,
            full.stdout,
            strip_importtime(full.stderr),
        ), args
        if lean_child is not None:
            full_child = child_record(stand_in)
            full_child["env"].pop("TUNNELMAN_NO_LEAN")
            assert lean_child["env"] == full_child["env"]
            assert lean_child["env"]["PGHOST"] == "db.elsewhere.example"


OLD_AGENT = """
import sys
if any(a.startswith("tunnelman.agent") for a in sys.orig_argv):
    from tunnelman.agent import protocol, server

    protocol.FEATURES = ("linger", "history")
    handle = server.Agent._handle

    def _handle(self, message, lines):
        if message.get("op") == "oneshot":  # as an agent from before the request answers it
            message = {**message, "op": "oneshot?"}
        return handle(self, message, lines)

    server.Agent._handle = _handle
"""


@linux_only
def test_an_agent_without_the_request_still_serves_the_warm_path(
    lab_profile: LabProfile, stand_in: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "old-agent"
    site.mkdir()
    (site / "sitecustomize.py").write_text(OLD_AGENT)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    lab_profile.write(password="none")
    port = up_detached("lab")
    done, _ = importtime("exec", "lab", "showenv")
    assert done.returncode == 0, done.stderr[-2000:]
    assert_before(done)
    assert child_record(stand_in)["env"]["PGPORT"] == str(port)
    lean, _ = importtime("env", "lab")
    assert_before(lean)
    assert f"PGPORT={port}" in lean.stdout or f"PGPORT='{port}'" in lean.stdout


@linux_only
def test_another_home_takes_the_path_of_before(lab_profile: LabProfile, stand_in: Path) -> None:
    """`~` would mean another directory than the agent's: it does not read the profile for us."""
    lab_profile.write(password="none")
    up_detached("lab")
    other = Path(os.environ["HOME"]).parent / "other-home"
    other.mkdir()
    done, _ = importtime("exec", "lab", "showenv", env={**os.environ, "HOME": str(other)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert_before(done)
    assert child_record(stand_in)["env"]["PGHOST"] == "127.0.0.1"


def test_no_password_leaves_an_agent_over_tcp(
    lab_profile: LabProfile, keyring_backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over TCP (Windows; here forced) the agent answers `oneshot` without a password: "not
    held", and the client reads the keyring itself as before."""
    from tunnelman.agent.client import AgentClient
    from tunnelman.agent.warm import CONTEXT

    monkeypatch.setenv("TUNNELMAN_AGENT_TRANSPORT", "tcp")
    lab_profile.write(password="keyring")
    credentials.keyring_set("lab", "s3cret-tcp")
    try:
        port = up_detached("lab")
        request: dict[str, Any] = {
            "name": "lab",
            "config": os.environ["TUNNELMAN_CONFIG"],
            "cwd": os.getcwd(),
            "environ": {k: os.environ[k] for k in CONTEXT if k in os.environ},
            "command": "psql",
            "secrets": True,
        }
        client = AgentClient()
        refused = client._request("oneshot", **request)
        assert refused == {
            "v": 1,
            "ok": True,
            "held": False,
            "reason": "no password over this connection",
        }
        answered = client._request("oneshot", **{**request, "command": "env"})
        lab_profile.write(password="none")
        changed = client._request("oneshot", **request)
    finally:
        credentials.keyring_delete("lab")
    assert "s3cret-tcp" not in json.dumps(refused)
    assert answered["held"] is True
    assert answered["port"] == port
    assert f"PGPORT={port}" in answered["text"] or f"PGPORT='{port}'" in answered["text"]
    assert "s3cret-tcp" not in answered["text"]
    # Edited after `up`: the agent does not answer for the file as it is now.
    assert changed["held"] is False
    assert "changed" in changed["reason"]
