"""`tunnelman psql | exec | env | conn` end to end: the real CLI, the lab bastion and PostGIS,
the real keyring (run under scripts/with-keyring), and each format fed to its real client.

The acceptance of issue 3 lives here: the PostGIS version through the bastion, psql's exit
code, no password in any argv or PGPASSWORD while a one-shot runs, the temporary password file
gone afterwards (also after Ctrl-C), and pg_dump through `exec`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli import TUNNELMAN, RunCli, run_cli
from tests.conftest import LabProfile
from tests.lab import need
from tunnelman.core import clients
from tunnelman.core import profiles as prof
from tunnelman.core.tunnel import open_tunnel


@pytest.fixture
def lab(lab_profile: LabProfile, keyring_backend: Any) -> Iterator[LabProfile]:
    """The lab profile with its password stored through `tunnelman password set --stdin`."""
    res = run_cli("password", "set", lab_profile.name, "--stdin", input=lab_profile.password + "\n")
    assert res.returncode == 0, res.stderr
    yield lab_profile
    run_cli("password", "delete", lab_profile.name)


# ----------------------------------------------------------------------------- acceptance


def test_psql_prints_the_postgis_version(run_cli: RunCli, lab: LabProfile) -> None:
    res = run_cli("psql", "lab", "-c", "select postgis_full_version()")
    assert res.returncode == 0, res.stderr
    assert 'POSTGIS="3' in res.stdout


def test_psql_returns_psqls_exit_code(run_cli: RunCli, lab: LabProfile) -> None:
    res = run_cli("psql", "lab", "-X", "-v", "ON_ERROR_STOP=1", "-c", "select nope")
    assert res.returncode == 1
    assert 'column "nope" does not exist' in res.stderr
    assert "Traceback" not in res.stderr


def test_exec_pg_dump_through_the_tunnel(run_cli: RunCli, lab: LabProfile) -> None:
    res = run_cli("exec", "lab", "--", "pg_dump", "--schema-only", "-t", "public.pts")
    assert res.returncode == 0, res.stderr
    assert "CREATE TABLE public.pts" in res.stdout
    assert "geometry(Point,4326)" in res.stdout


def _proc_entries() -> Iterator[tuple[int, bytes, list[bytes]]]:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:  # gone, or a kernel thread
            continue
        yield int(entry.name), cmdline, environ


def _find_child_passfile(parent: int, timeout: float = 30) -> tuple[int, Path]:
    """The psql that `parent` started, once it runs, and the PGPASSFILE it was given."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid, cmdline, environ in _proc_entries():
            if not cmdline.startswith(b"psql") and b"/psql\0" not in cmdline:
                continue
            try:
                ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid != parent:
                continue
            for item in environ:
                if item.startswith(b"PGPASSFILE="):
                    return pid, Path(item.split(b"=", 1)[1].decode())
        time.sleep(0.05)
    raise AssertionError("psql never started under tunnelman")


def _wait_query(lab: LabProfile, text: str, timeout: float = 20) -> None:
    """Wait until the lab database runs a query containing `text` (seen from a direct login)."""
    import psycopg

    deadline = time.monotonic() + timeout
    with psycopg.connect(lab.postgres.dsn(), autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "select count(*) from pg_stat_activity where query like %s and pid <> pg_backend_pid()",
                (f"%{text}%",),
            ).fetchone()
            if row and row[0]:
                return
            time.sleep(0.1)
    raise AssertionError(f"query {text!r} never started")


def test_password_is_in_no_argv_and_no_pgpassword_while_running(lab: LabProfile) -> None:
    password = lab.password.encode()
    proc = subprocess.Popen(
        [*TUNNELMAN, "psql", "lab", "-X", "-c", "select pg_sleep(3)"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        text=True,
    )
    try:
        child, passfile = _find_child_passfile(proc.pid)
        _wait_query(lab, "pg_sleep(3)")
        argv_hits, env_hits = [], []
        for pid, cmdline, environ in _proc_entries():
            if password in cmdline:
                argv_hits.append(pid)
            for item in environ:
                if item.startswith(b"PGPASSWORD=") or password in item:
                    env_hits.append((pid, item.split(b"=", 1)[0]))
        assert argv_hits == [], "the password is in a process's argv"
        assert env_hits == [], "a PGPASSWORD (or the password) is in a process's environment"
        # The file the child reads: private, and the only place the password is.
        assert passfile.stat().st_mode & 0o777 == 0o600
        assert passfile.parent.stat().st_mode & 0o777 == 0o700
        assert password in passfile.read_bytes()
        assert child != proc.pid
    finally:
        _out, errs = proc.communicate(timeout=30)
    assert proc.returncode == 0, errs
    assert not passfile.exists()
    assert not passfile.parent.exists()


def test_ctrl_c_cancels_the_query_and_removes_the_password_file(lab: LabProfile) -> None:
    """SIGINT to tunnelman's process group (what Ctrl-C in a terminal does) while
    `psql -c 'select pg_sleep(30)'` runs: psql cancels the query, tunnelman cleans up."""
    proc = subprocess.Popen(
        [*TUNNELMAN, "psql", "lab", "-X", "-c", "select pg_sleep(30)"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        text=True,
    )
    try:
        _child, passfile = _find_child_passfile(proc.pid)
        _wait_query(lab, "pg_sleep(30)")
        started = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        _out, errs = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert time.monotonic() - started < 15
    assert "canceling statement due to user request" in errs
    assert proc.returncode == 1  # psql's own status for a failed -c command
    assert "Traceback" not in errs
    assert not passfile.exists()
    assert not passfile.parent.exists()


def test_sigterm_and_a_crashing_child_also_remove_the_file(lab: LabProfile) -> None:
    for how in ("term", "kill-child"):
        proc = subprocess.Popen(
            [*TUNNELMAN, "psql", "lab", "-X", "-c", "select pg_sleep(30)"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            child, passfile = _find_child_passfile(proc.pid)
            if how == "term":
                os.kill(proc.pid, signal.SIGTERM)  # tunnelman alone: it forwards to psql
                expected = 128 + signal.SIGTERM
            else:
                os.kill(child, signal.SIGKILL)  # psql "crashes"
                expected = 128 + signal.SIGKILL
            proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == expected, how
        assert not passfile.parent.exists(), how


def test_missing_psql_says_how_to_install(run_cli: RunCli, tmp_home: Path) -> None:
    prof.save_profile(
        prof.config_path(None), "p", {"bastion": "u@bastion.invalid", "endpoint": "db.invalid"}
    )
    env = {**os.environ, "PATH": "/nonexistent"}
    res = run_cli("psql", "p", "-c", "select 1", env=env)
    assert res.returncode == 127
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "psql not found" in lines[0]
    assert "apt install postgresql-client" in lines[0]
    res = run_cli("exec", "p", "--", "ogr2ogr", "--version", env=env)
    assert res.returncode == 127
    assert "gdal-bin" in res.stderr


def test_no_stored_password_without_a_terminal_is_one_clear_line(
    run_cli: RunCli, lab_profile: LabProfile, keyring_backend: Any
) -> None:
    run_cli("password", "delete", "lab")
    res = run_cli("psql", "lab", "-c", "select 1")
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "no password for 'lab' in the keyring" in lines[0]
    assert "tunnelman password set lab" in lines[0]


@pytest.fixture
def agent_port(lab: LabProfile, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """`tunnelman up lab --detach`: the agent (in this test's XDG_RUNTIME_DIR) holds the tunnel;
    the agent is shut down afterwards."""
    from tunnelman.agent.client import AgentClient

    monkeypatch.setenv("TUNNELMAN_AGENT_IDLE", "300")
    res = run_cli("up", "lab", "--detach")
    try:
        assert res.returncode == 0, res.stderr
        first = res.stdout.splitlines()[0]
        yield int(first.split("127.0.0.1:", 1)[1].split()[0])
    finally:
        AgentClient().shutdown(wait=30)


def test_oneshots_env_and_conn_reuse_the_agents_tunnel(run_cli: RunCli, agent_port: int) -> None:
    """With `up --detach`, psql/exec use the agent's port (an in-process tunnel would get a free
    one), and env/conn need no --port even though the profile has no local_port."""
    port = agent_port
    res = run_cli("exec", "lab", "--", "sh", "-c", 'echo "$PGPORT"; psql -XAt -c "select 6*7"')
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [str(port), "42"]
    assert f"port={port} " in run_cli("conn", "lab", "-f", "dsn").stdout
    env = run_cli("env", "lab")
    assert f"export PGPORT={port}\n" in env.stdout
    assert env.stderr == ""


# ----------------------------------------------------------------------------- conn: ports


def test_conn_port_resolution(run_cli: RunCli, tmp_home: Path) -> None:
    path = prof.config_path(None)
    prof.save_profile(path, "fixed", {"endpoint": "db.internal", "local_port": 5433})
    prof.save_profile(path, "auto", {"endpoint": "db.internal"})
    assert "port=5433" in run_cli("conn", "fixed", "-f", "dsn").stdout
    assert "port=6000" in run_cli("conn", "fixed", "-f", "dsn", "--port", "6000").stdout
    res = run_cli("conn", "auto", "-f", "dsn")
    assert res.returncode == 1
    assert "no port for 'auto'" in res.stderr
    assert "tunnelman up auto" in res.stderr
    res = run_cli("conn", "fixed", "-f", "jdbc")
    assert res.stdout.startswith("jdbc:postgresql://127.0.0.1:5433/")
    assert "tunnelman: note:" in res.stderr  # notes go to stderr, stdout stays pasteable
    res = run_cli("conn", "fixed")
    assert res.stdout.startswith('psql "host=127.0.0.1 port=5433 ')


def test_conn_help_lists_every_format(run_cli: RunCli) -> None:
    res = run_cli("conn", "--help")
    for name, text in clients.FORMATS.items():
        assert name in res.stdout
        assert text.split()[0] in res.stdout


def test_env_reminds_to_start_the_tunnel(run_cli: RunCli, tmp_home: Path) -> None:
    prof.save_profile(prof.config_path(None), "fixed", {"endpoint": "db.internal", "local_port": 1})
    res = run_cli("env", "fixed")
    assert res.returncode == 0
    assert "export PGPORT=1\n" in res.stdout
    assert "tunnelman up fixed" in res.stderr
    assert "PGPASSWORD=" not in res.stdout


# ----------------------------------------------------------------------------- conn --write: bad targets


@pytest.fixture
def writer(tmp_home: Path, keyring_backend: Any) -> Iterator[str]:
    """A minimal profile (bastion + endpoint) with a keyring password, for `conn --write`."""
    prof.save_profile(
        prof.config_path(None),
        "w",
        {"bastion": "ec2-user@bastion.example.com", "endpoint": "db.internal", "local_port": 5433},
    )
    assert run_cli("password", "set", "w", "--stdin", input="s3cret\n").returncode == 0
    yield "w"
    run_cli("password", "delete", "w")


def test_conn_write_through_a_dotfiles_symlink_says_so(
    run_cli: RunCli, writer: str, tmp_home: Path
) -> None:
    real = tmp_home / "dotfiles" / "pgpass"
    real.parent.mkdir()
    real.write_text("other:1:*:u:p\n")
    link = tmp_home / ".pgpass"
    link.symlink_to("dotfiles/pgpass")
    res = run_cli("conn", writer, "--format", "pgpass", "--write")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == (
        f"{real}: added the entry (previous version kept as {real}.bak) "
        f"(through the symlink {link}, left as it is)"
    )
    assert link.is_symlink()
    assert real.read_text() == "other:1:*:u:p\n127.0.0.1:5433:postgres:postgres:s3cret\n"
    assert real.stat().st_mode & 0o777 == 0o600
    assert "s3cret" not in res.stdout + res.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file types")
@pytest.mark.parametrize("fmt", ["pgpass", "pg-service", "pgadmin", "qgis-xml"])
def test_conn_write_refuses_bad_targets_in_one_line(
    run_cli: RunCli, writer: str, tmp_path: Path, fmt: str
) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "loop").symlink_to("loop")
    plain = tmp_path / "plain"
    plain.write_text("keep\n")
    kept = tmp_path / "kept.conf"
    mine = {
        "pgpass": "# mine\n",
        "pg-service": "# mine\n",
        "pgadmin": '{"Servers": {}}\n',
        "qgis-xml": "<qgsPgConnections/>\n",
    }[fmt]
    kept.write_text(mine)
    (tmp_path / "kept.conf.bak").mkdir()
    cases = {
        os.devnull: "is a character device, not a regular file",
        str(fifo): "is a FIFO (named pipe), not a regular file",
        str(tmp_path / "loop"): "a symlink loop",
        str(plain / "servers.json"): "a parent of it is not a directory",
        str(kept): f"{kept}: left as it was: {kept}.bak: is a directory",
    }
    for target, reason in cases.items():
        res = run_cli("conn", writer, "--format", fmt, "--write", "--file", target, timeout=20)
        assert res.returncode == 1, (target, res.stdout, res.stderr)
        assert res.stdout == ""
        assert res.stderr.startswith("tunnelman: error: "), res.stderr
        assert res.stderr.count("\n") == 1, res.stderr
        assert reason in res.stderr, res.stderr
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert plain.read_text() == "keep\n"
    assert kept.read_text() == mine
    assert not list(tmp_path.rglob("*.tmp"))


# ----------------------------------------------------------------------------- conn: real clients


@pytest.fixture
def tunnel_port(lab_profile: LabProfile) -> Iterator[int]:
    """An in-process tunnel for the lab profile, standing in for `tunnelman up`."""
    profile = prof.load(lab_profile.config).get("lab")
    with open_tunnel(profile, local_port=0) as tunnel:
        assert tunnel.local_port is not None
        yield tunnel.local_port


@pytest.fixture
def passfile(lab_profile: LabProfile, tunnel_port: int, tmp_path: Path) -> Path:
    """A 0600 PGPASSFILE from the pgpass renderer (the one place a password is rendered)."""
    profile = prof.load(lab_profile.config).get("lab")
    path = tmp_path / "pgpass"
    path.write_text(clients.render("pgpass", profile, tunnel_port, password=lab_profile.password))
    path.chmod(0o600)
    return path


def _client_env(passfile: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    return {**env, "PGPASSFILE": str(passfile), "PGCONNECT_TIMEOUT": "10", **extra}


@pytest.mark.parametrize("fmt", ["dsn", "uri"])
def test_dsn_and_uri_work_in_psql(
    run_cli: RunCli, lab_profile: LabProfile, tunnel_port: int, passfile: Path, fmt: str
) -> None:
    target = run_cli("conn", "lab", "-f", fmt, "--port", str(tunnel_port)).stdout.strip()
    res = subprocess.run(
        ["psql", "-XAt", target, "-c", "select count(*) from public.pts"],
        capture_output=True, text=True, env=_client_env(passfile), check=False, timeout=30,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert int(res.stdout) > 0


def test_psql_line_runs_in_a_shell(
    run_cli: RunCli, lab_profile: LabProfile, tunnel_port: int, passfile: Path
) -> None:
    line = run_cli("conn", "lab", "--port", str(tunnel_port)).stdout.strip()
    res = subprocess.run(
        ["sh", "-c", f"{line} -XAt -c 'select 42'"],
        capture_output=True, text=True, env=_client_env(passfile), check=False, timeout=30,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "42"


def test_service_entry_works_in_psql(
    lab_profile: LabProfile, tunnel_port: int, passfile: Path, tmp_path: Path
) -> None:
    service_file = tmp_path / "pg_service.conf"
    service_file.write_text("# someone else's\n[other]\nhost=nowhere.invalid\n")
    env = _client_env(passfile, PGSERVICEFILE=str(service_file))
    res = subprocess.run(
        [*TUNNELMAN, "conn", "lab", "-f", "pg-service", "--write", "--port", str(tunnel_port)],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "[other]\nhost=nowhere.invalid\n" in service_file.read_text()
    res = subprocess.run(
        ["psql", "-XAt", "service=lab", "-c", "select postgis_version()"],
        capture_output=True, text=True, env=env, check=False, timeout=30,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().startswith("3.")


def test_env_export_feeds_pg_dump(
    run_cli: RunCli, lab_profile: LabProfile, tunnel_port: int, passfile: Path
) -> None:
    exports = run_cli("env", "lab", "--port", str(tunnel_port)).stdout
    script = f"{exports}\nexec pg_dump --schema-only -t public.pts\n"
    res = subprocess.run(
        ["sh", "-c", script],
        capture_output=True, text=True, env=_client_env(passfile), check=False, timeout=60,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "CREATE TABLE public.pts" in res.stdout


def test_write_pgpass_from_the_keyring_then_psql_needs_no_password(
    run_cli: RunCli, lab_profile: LabProfile, keyring_backend: Any, tunnel_port: int, tmp_path: Path
) -> None:
    run_cli("password", "set", "lab", "--stdin", input=lab_profile.password + "\n")
    pgpass = tmp_path / "written.pgpass"
    env = _client_env(pgpass)
    res = subprocess.run(
        [*TUNNELMAN, "conn", "lab", "-f", "pgpass", "-w", "--port", str(tunnel_port)],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert lab_profile.password not in res.stdout + res.stderr
    assert pgpass.stat().st_mode & 0o777 == 0o600
    dsn = run_cli("conn", "lab", "-f", "dsn", "--port", str(tunnel_port)).stdout.strip()
    res = subprocess.run(
        ["psql", "-XAt", "-w", dsn, "-c", "select 1"],
        capture_output=True, text=True, env=env, check=False, timeout=30,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr


def test_sqlalchemy_url_connects(
    run_cli: RunCli, lab_profile: LabProfile, tunnel_port: int
) -> None:
    sqlalchemy = pytest.importorskip("sqlalchemy", reason="sqlalchemy is not installed here")
    url = run_cli("conn", "lab", "-f", "sqlalchemy", "--port", str(tunnel_port)).stdout.strip()
    engine = sqlalchemy.create_engine(url, connect_args={"password": lab_profile.password})
    try:
        with engine.connect() as conn:
            assert conn.execute(sqlalchemy.text("select count(*) from public.pts")).scalar()
    finally:
        engine.dispose()


# ----------------------------------------------------------------------------- pgAdmin's loader


def _pgadmin_python(cache_dir: Path) -> Path:
    """A venv with the pgadmin4 pip package, made once and kept in pytest's cache."""
    python = cache_dir / "venv" / "bin" / "python"
    marker = cache_dir / "venv" / ".pgadmin4-installed"
    if marker.exists():
        return python
    if shutil.which("python3") is None:
        need("python3 is needed to build the pgAdmin venv")
    shutil.rmtree(cache_dir / "venv", ignore_errors=True)
    made = subprocess.run(
        [sys.executable, "-m", "venv", str(cache_dir / "venv")],
        capture_output=True,
        text=True,
        check=False,
    )
    if made.returncode != 0:
        need(f"cannot create a venv for pgAdmin: {made.stderr.strip()[-300:]}")
    pip = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "pgadmin4"],
        capture_output=True, text=True, check=False, timeout=900,
    )  # fmt: skip
    if pip.returncode != 0:
        need(f"cannot install pgadmin4 from PyPI: {pip.stderr.strip()[-300:]}")
    marker.touch()
    return python


@pytest.mark.slow
@pytest.mark.long  # installs pgAdmin 4 from PyPI into a venv: about 100 s on its own
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("variant", ["tunnelman", "pgadmin-ssh"])
def test_pgadmin_load_servers_imports_the_file(
    run_cli: RunCli, pytestconfig: pytest.Config, tmp_home: Path, tmp_path: Path, variant: str
) -> None:
    """pgAdmin's own `setup.py load-servers` (pgadmin4 from PyPI, desktop mode, a private data
    dir) imports what `conn --format pgadmin --write` wrote; its sqlite then holds the server."""
    cache = getattr(pytestconfig, "cache", None)  # absent under -p no:cacheprovider
    cache_dir = cache.mkdir("pgadmin4") if cache is not None else tmp_path / "pgadmin4"
    python = _pgadmin_python(cache_dir)
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    setup_py = Path(purelib) / "pgadmin4" / "setup.py"  # pgadmin4 ships as a plain directory
    assert setup_py.exists()
    prof.save_profile(
        prof.config_path(None),
        "prod",
        {
            "bastion": "ec2-user@bastion.example.com",
            "identity_file": "~/.ssh/aws.pem",
            "endpoint": "database-1.cluster-abc.us-east-2.rds.amazonaws.com",
            "database": "geo",
            "user": "gis",
            "local_port": 5433,
            "sslmode": "verify-full",
            "sslrootcert": "~/.postgresql/rds.pem",
        },
    )
    servers = tmp_path / "servers.json"
    servers.write_text(json.dumps({"Servers": {"1": {"Name": "mine", "Group": "Servers", "Host": "h", "Port": 5432, "MaintenanceDB": "postgres", "Username": "me", "SSLMode": "prefer"}}}))  # fmt: skip
    args = ["conn", "prod", "-f", "pgadmin", "--write", "--file", str(servers)]
    res = run_cli(*args, *(["--pgadmin-ssh"] if variant == "pgadmin-ssh" else []))
    assert res.returncode == 0, res.stderr
    data_dir = tmp_path / "pgadmin-data"
    data_dir.mkdir()
    config = tmp_path / "pgadmin_config.py"
    # pgAdmin reads config_distro from CONFIG_DISTRO_FILE_PATH (pgadmin/evaluate_config.py):
    # desktop mode keeps DATA_DIR (and its sqlite) in our temp dir instead of /var/lib/pgadmin.
    config.write_text(
        f"SERVER_MODE = False\nDATA_DIR = {str(data_dir)!r}\nMASTER_PASSWORD_REQUIRED = False\n"
    )
    env = {**os.environ, "CONFIG_DISTRO_FILE_PATH": str(config), "HOME": str(tmp_home)}
    for step in (["setup-db"], ["load-servers", str(servers)]):
        run = subprocess.run(
            [str(python), str(setup_py), *step], capture_output=True, text=True, env=env, check=False, timeout=300
        )  # fmt: skip
        assert run.returncode == 0, run.stdout + run.stderr
    assert "Added 1 Server Group(s) and 2 Server(s)." in run.stdout, run.stdout
    db = sqlite3.connect(data_dir / "pgadmin4.db")
    try:
        rows = db.execute(
            "select s.name, g.name, s.host, s.port, s.maintenance_db, s.username, s.connection_params, "
            "s.use_ssh_tunnel, s.tunnel_host, s.tunnel_username, s.tunnel_identity_file "
            "from server s join servergroup g on g.id = s.servergroup_id where s.name = 'prod'"
        ).fetchall()
    finally:
        db.close()
    assert len(rows) == 1
    name, group, host, port, maintenance_db, username, params, use_ssh, t_host, t_user, t_key = (
        rows[0]
    )
    assert (name, group, maintenance_db, username) == ("prod", "tunnelman", "geo", "gis")
    params = json.loads(params)
    assert params["sslmode"] == "verify-full"
    assert host == "database-1.cluster-abc.us-east-2.rds.amazonaws.com"
    if variant == "tunnelman":
        assert port == 5433
        assert params["hostaddr"] == "127.0.0.1"
        assert not use_ssh
    else:
        assert port == 5432
        assert "hostaddr" not in params
        assert (use_ssh, t_host, t_user) == (1, "bastion.example.com", "ec2-user")
        assert t_key == str(tmp_home / ".ssh" / "aws.pem")
