"""The warm path execs the child (POSIX): no tunnelman process is left waiting for psql, and a
password reaches it in a sealed memfd (Linux), never in a file on disk, argv or PGPASSWORD.

The child is a stand-in on PATH that records its pid, its parent's pid, what its PGPASSFILE holds
and whether that file can be written; the tunnel is a real one held by a real agent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.cli import TUNNELMAN
from tests.conftest import LabProfile
from tests.test_agent_support import (
    agent_home,  # noqa: F401 - fixture
    up_detached,
)
from tunnelman.core import credentials

pytestmark = [
    pytest.mark.usefixtures("agent_home"),
    pytest.mark.skipif(sys.platform != "linux", reason="exec + memfd: the Linux warm path"),
]

RECORDER = """#!{python}
import json, os, sys
passfile = os.environ.get("PGPASSFILE")
record = {{"pid": os.getpid(), "argv": sys.argv, "env": dict(os.environ), "passfile": passfile}}
if passfile:
    with open(passfile) as fh:
        record["held"] = fh.read()
    record["mode"] = oct(os.stat(passfile).st_mode & 0o777)
    try:
        with open(passfile, "a") as fh:
            fh.write("more")
        record["writable"] = True
    except OSError:
        record["writable"] = False
with open(os.environ["RECORD_OUT"], "w") as fh:
    json.dump(record, fh)
"""


@pytest.fixture
def recorder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`psql` on PATH is the recorder; returns the file it writes."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "psql"
    script.write_text(RECORDER.format(python=sys.executable))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "record.json"
    monkeypatch.setenv("RECORD_OUT", str(out))
    return out


def run_psql(*args: str) -> tuple[int, dict[str, Any]]:
    """`tunnelman psql lab ARGS` started with Popen: its pid and what the child recorded."""
    proc = subprocess.Popen(
        [*TUNNELMAN, "psql", "lab", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, (out, err)
    record: dict[str, Any] = json.loads(Path(os.environ["RECORD_OUT"]).read_text())
    return proc.pid, record


def test_the_child_replaces_tunnelman(lab_profile: LabProfile, recorder: Path) -> None:
    lab_profile.write(password="none")
    up_detached("lab")
    pid, record = run_psql("-Atc", "select 1")
    assert record["pid"] == pid, "psql runs in tunnelman's own process: nothing waits for it"
    assert record["argv"][1:] == ["-Atc", "select 1"]
    assert "PGPASSWORD" not in record["env"]


def test_a_keyring_password_is_in_a_sealed_memfd(
    lab_profile: LabProfile, recorder: Path, keyring_backend: Any
) -> None:
    lab_profile.write(password="keyring")
    credentials.keyring_set("lab", "s3cret-memfd")
    try:
        port = up_detached("lab")
        pid, record = run_psql("-Atc", "select 1")
    finally:
        credentials.keyring_delete("lab")
    assert record["pid"] == pid
    passfile = record["passfile"]
    assert passfile.startswith(f"/proc/{pid}/fd/"), passfile
    assert "s3cret-memfd" in record["held"]
    assert f":{port}:" in record["held"]
    assert record["mode"] == "0o600"
    assert record["writable"] is False, "sealed: the child cannot change it"
    assert not Path(passfile).exists(), "gone with the process"
    assert "s3cret-memfd" not in json.dumps(record["env"])
    assert "s3cret-memfd" not in json.dumps(record["argv"])
