"""core.oneshot: the child's environment, the temporary PGPASSFILE, signals, and a real tunnel."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import LabProfile
from tunnelman.core import oneshot
from tunnelman.core import profiles as prof
from tunnelman.core.credentials import Login
from tunnelman.core.profiles import Endpoint, Profile

PROD = Profile(
    name="prod",
    endpoint=Endpoint("database-1.cluster-abc.us-east-2.rds.amazonaws.com"),
    database="geo",
    user="postgres",
    sslmode="require",
)


def test_child_env_sets_pg_vars_and_drops_stale_ones() -> None:
    base = {
        "PATH": "/usr/bin",
        "PGPASSWORD": "leak",
        "PGSERVICE": "other",
        "PGHOSTADDR": "10.0.0.1",
        "PGSSLROOTCERT": "/x.pem",
        "PGOPTIONS": "-c search_path=gis",
    }
    env = oneshot.child_env(PROD, 5433, passfile=Path("/run/x/pgpass"), base=base)
    assert env["PATH"] == "/usr/bin"
    assert env["PGOPTIONS"] == "-c search_path=gis"  # the user's own settings survive
    for gone in ("PGPASSWORD", "PGSERVICE", "PGHOSTADDR", "PGSSLROOTCERT"):
        assert gone not in env
    assert env["PGHOST"] == "127.0.0.1"
    assert env["PGPORT"] == "5433"
    assert env["PGDATABASE"] == "geo"
    assert env["PGUSER"] == "postgres"
    assert env["PGSSLMODE"] == "require"
    assert env["PGAPPNAME"] == "tunnelman"
    assert env["PGCONNECT_TIMEOUT"] == "15"
    assert env["PGPASSFILE"] == "/run/x/pgpass"


def test_child_env_verify_and_iam_and_cluster() -> None:
    verify = prof.with_overrides(PROD, sslmode="verify-full", sslrootcert=Path("/ca.pem"))
    env = oneshot.child_env(verify, 5433, base={})
    assert env["PGHOST"] == "database-1.cluster-abc.us-east-2.rds.amazonaws.com"
    assert env["PGHOSTADDR"] == "127.0.0.1"
    assert env["PGSSLROOTCERT"] == "/ca.pem"
    assert "PGPASSFILE" not in env  # no password: the user's own .pgpass applies
    iam = prof.with_overrides(PROD, password="iam", sslmode="prefer")
    assert oneshot.child_env(iam, 5433, base={})["PGSSLMODE"] == "require"
    cluster = prof.with_overrides(PROD, cluster="database-1")
    assert int(oneshot.child_env(cluster, 5433, base={})["PGCONNECT_TIMEOUT"]) >= 60
    other_user = oneshot.child_env(PROD, 5433, user="from_secret", base={})
    assert other_user["PGUSER"] == "from_secret"


def test_temp_passfile_is_private_and_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    login = Login("postgres", "pa:ss\\word", "keyring")
    with oneshot.temp_passfile(PROD, 5433, login) as path:
        assert path is not None
        assert path.parent.parent == runtime  # on the per-user tmpfs when there is one
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert path.read_text() == "127.0.0.1:5433:*:postgres:pa\\:ss\\\\word\n"
    assert not path.exists()
    assert not path.parent.exists()
    with pytest.raises(RuntimeError), oneshot.temp_passfile(PROD, 5433, login) as path2:
        raise RuntimeError("child crashed")
    assert path2 is not None
    assert not path2.parent.exists()
    with oneshot.temp_passfile(PROD, 5433, Login("postgres", None)) as none:
        assert none is None


def test_temp_passfile_skips_a_shared_runtime_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(shared))
    with oneshot.temp_passfile(PROD, 5433, Login("postgres", "pw")) as path:
        assert path is not None
        assert shared not in path.parents


def test_find_program_says_how_to_install() -> None:
    with pytest.raises(oneshot.ProgramNotFound) as info:
        oneshot.find_program("psql", path="/nonexistent")
    assert info.value.exit_code == 127
    assert "apt install postgresql-client" in str(info.value)
    assert "brew install libpq" in str(info.value)
    with pytest.raises(oneshot.ProgramNotFound, match="check your PATH"):
        oneshot.find_program("no-such-tool-xyz")


def test_run_child_exit_codes() -> None:
    assert oneshot.run_child(["sh", "-c", "exit 3"], os.environ) == 3
    assert oneshot.run_child(["sh", "-c", "kill -KILL $$"], os.environ) == 128 + 9


# A driver in a child Python, so signals hit a process that is not pytest itself.
_DRIVER = textwrap.dedent(
    """
    import os, sys
    from tunnelman.core import oneshot
    code = oneshot.run_child(["sh", "-c", sys.argv[1]], os.environ)
    print("status", code, flush=True)
    """
)


def _driver(script: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _DRIVER, script],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # no terminal: SIGINT is forwarded, as from `kill -INT`
    )


def _wait_for_child(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if Path(f"/proc/{pid}/task/{pid}/children").read_text().strip():
            return
        time.sleep(0.05)
    raise AssertionError("the child never started")


def test_sigint_is_left_to_the_child() -> None:
    """The parent survives SIGINT; the child (which traps it, as psql does) decides."""
    proc = _driver(
        "trap 'echo child-got-int; kill $! 2>/dev/null; exit 7' INT; sleep 20 >/dev/null & wait"
    )
    _wait_for_child(proc.pid)
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=10)
    assert "child-got-int" in out
    assert "status 7" in out


def test_sigterm_is_forwarded() -> None:
    proc = _driver(
        "trap 'echo child-got-term; kill $! 2>/dev/null; exit 9' TERM; sleep 20 >/dev/null & wait"
    )
    _wait_for_child(proc.pid)
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGTERM)  # only the parent: it must pass it on
    out, _ = proc.communicate(timeout=10)
    assert "child-got-term" in out
    assert "status 9" in out


def test_child_starts_with_default_signal_dispositions() -> None:
    """Python handlers (not SIG_IGN) while waiting: a child without its own handler still dies
    on SIGINT, as `pg_dump` should when you press Ctrl-C."""
    proc = _driver("sleep 20")
    _wait_for_child(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=10)
    assert f"status {128 + signal.SIGINT}" in out


# ----------------------------------------------------------------------------- through the lab


def _lab(lab_profile: LabProfile) -> Profile:
    return prof.load(lab_profile.config).get(lab_profile.name)


def test_run_psql_through_a_real_tunnel(lab_profile: LabProfile, tmp_path: Path) -> None:
    profile = _lab(lab_profile)
    login = Login(profile.user, lab_profile.password, "keyring")
    seen: dict[str, str] = {}
    script = tmp_path / "probe.sh"
    script.write_text(
        'echo "PGPASSFILE=$PGPASSFILE PGPASSWORD=${PGPASSWORD-unset}" > "$1"\n'
        'stat -c %a "$PGPASSFILE" >> "$1"\n'
        'exec psql -XAt -v ON_ERROR_STOP=1 -c "select count(*) from public.pts"\n'
    )
    report = tmp_path / "report"
    code = oneshot.run(
        profile,
        ["sh", str(script), str(report)],
        login,
        on_ready=lambda port: seen.update(port=str(port)),
        base_env={**os.environ, "PGPASSWORD": "must-not-reach-the-child"},
    )
    assert code == 0
    first, mode = report.read_text().splitlines()
    passfile = Path(first.split()[0].split("=", 1)[1])
    assert "PGPASSWORD=unset" in first
    assert mode == "600"
    assert not passfile.exists()
    assert not passfile.parent.exists()
    assert seen["port"]


def test_run_returns_the_childs_failure(lab_profile: LabProfile) -> None:
    profile = _lab(lab_profile)
    login = Login(profile.user, lab_profile.password, "keyring")
    code = oneshot.run(profile, ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-c", "select nope"], login)
    assert code == 1
    wrong = Login(profile.user, "wrong-password", "keyring")
    assert oneshot.run(profile, ["psql", "-X", "-c", "select 1"], wrong) == 2
