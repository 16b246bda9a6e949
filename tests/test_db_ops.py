"""`tunnelman db …` against an RDS-like master through the lab bastion (issue 14's acceptance).

The server is tests/lab/rds_like.py: a lab PostgreSQL with pgextwlist (postgis whitelisted) and a
master role with LOGIN CREATEDB CREATEROLE, no superuser. Every command is the real CLI in a
subprocess, through the lab sshd, with the master's password in the real keyring. What the
commands did is checked from the lab's side (the bootstrap superuser over the socket) and as
the new roles themselves.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import psycopg
import pytest
from psycopg import sql

from tests.conftest import LabProfile
from tests.lab import need
from tests.lab.postgres import postgres_missing
from tests.lab.rds_like import RdsLike, pgextwlist_missing
from tests.lab.sshd import Sshd
from tunnelman.core import credentials, dbops

TM = [sys.executable, "-m", "tunnelman"]
HOSTILE = 'x"; drop table t; --'


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def tm(*args: str, input: str | None = None) -> Result:
    """The CLI in this process (`tunnelman.cli.main.main`, as the console script runs it): the
    same code path as a subprocess minus Python's start-up, which would take most of the time."""
    from tunnelman.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    code: Any = 0
    with (
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
        mock.patch.object(sys, "stdin", io.StringIO(input or "")),
    ):
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code
    return Result(code if isinstance(code, int) else 1, out.getvalue(), err.getvalue())


def tm_proc(*args: str, input: str | None = None) -> Result:
    """The CLI as a user runs it: a subprocess."""
    res = subprocess.run(
        [*TM, *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=90,
        stdin=None if input is not None else subprocess.DEVNULL,
        check=False,
    )
    return Result(res.returncode, res.stdout, res.stderr)


def ok(res: Result) -> str:
    assert res.returncode == 0, f"exit {res.returncode}\nstdout: {res.stdout}\nstderr: {res.stderr}"
    assert "Traceback" not in res.stderr
    return res.stdout


def refused(res: Result, *words: str) -> str:
    """A non-zero exit with one `tunnelman: error:` line naming `words`."""
    assert res.returncode != 0, res.stdout
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("tunnelman: error:")]
    assert len(lines) == 1, res.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def rds() -> Iterator[RdsLike]:
    reason = postgres_missing() or pgextwlist_missing()
    if reason:
        need(reason)
    server = RdsLike()
    try:
        server.start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        server.close()
        need(f"cannot start the RDS-like PostgreSQL: {exc}")
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def master(tmp_home: Path, sshd: Sshd, rds: RdsLike, keyring_backend: Any) -> Iterator[LabProfile]:
    """Profile `lab`: the lab bastion to the RDS-like server, as its master, on `postgres`."""
    assert sshd.key_path is not None
    key = tmp_home / ".ssh" / "id_lab"
    shutil.copyfile(sshd.key_path, key)
    key.chmod(0o600)
    known_hosts = tmp_home / ".ssh" / "known_hosts"
    known_hosts.write_text(sshd.host_key_line() + "\n")
    profile = LabProfile(
        name="lab",
        config=Path(os.environ["TUNNELMAN_CONFIG"]),
        identity_file=key,
        known_hosts=known_hosts,
        sshd=sshd,
        postgres=rds,
        keys={
            "bastion": sshd.destination,
            "identity_file": key,
            "known_hosts": known_hosts,
            "endpoint": f"127.0.0.1:{rds.port}",
            "database": "postgres",
            "user": rds.master,
        },
    )
    profile.write()
    credentials.keyring_set("lab", rds.master_password)
    yield profile
    for name in ("lab", "app1"):
        credentials.keyring_delete(name)


def one(rds: RdsLike, query: str, *params: Any, db: str = "postgres") -> Any:
    with rds.superuser(db) as conn:
        row = conn.execute(query, params).fetchone()
    return row[0] if row else None


def roles(rds: RdsLike) -> set[str]:
    with rds.superuser() as conn:
        return {r[0] for r in conn.execute("SELECT rolname FROM pg_roles").fetchall()}


def databases(rds: RdsLike) -> set[str]:
    with rds.superuser() as conn:
        return {r[0] for r in conn.execute("SELECT datname FROM pg_database").fetchall()}


def as_role(rds: RdsLike, user: str, password: str, db: str) -> psycopg.Connection[Any]:
    return psycopg.connect(rds.dsn(user=user, password=password, dbname=db), autocommit=True)


def counts(rds: RdsLike, db: str, tables: list[str]) -> dict[str, int]:
    with rds.superuser(db) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}


# ----------------------------------------------------------------------------- the acceptance


def test_the_rds_routine_end_to_end(master: LabProfile, rds: RdsLike, tmp_path: Path) -> None:
    # The lab itself: the master is what RDS gives, and only whitelisted extensions pass.
    assert one(rds, "SELECT rolsuper FROM pg_roles WHERE rolname = %s", rds.master) is False
    before_roles, before_dbs = roles(rds), databases(rds)

    # create-user: dry run first (changes nothing), then for real, saving a profile for app1.
    out = ok(tm("db", "create-user", "lab", "app1", "--dry-run"))
    assert 'CREATE ROLE "app1" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE' in out
    assert "app1" not in roles(rds)
    pw1 = "app1-Secret-pw-4711"
    out = ok(tm_proc("db", "create-user", "lab", "app1", "--password-stdin", "--save-profile", "app1",
                input=pw1 + "\n"))  # fmt: skip
    assert "Created role app1" in out
    assert "Saved profile 'app1'" in out
    with rds.superuser() as conn:
        row = conn.execute(
            "SELECT rolcanlogin, rolsuper, rolcreatedb, rolcreaterole FROM pg_roles"
            " WHERE rolname = 'app1'"
        ).fetchone()
    assert row == (True, False, False, False)
    assert pw1 not in rds.log_text()  # the server saw only the SCRAM verifier
    assert credentials.keyring_get("app1") == pw1
    # A profile whose user lacks CREATEROLE: one line naming the privilege.
    refused(tm("db", "create-user", "app1", "nope", "--password-stdin", input="pw\n"), "CREATEROLE")

    # create-database: dry run, then the routine; a non-whitelisted extension is refused cleanly.
    out = ok(tm("db", "create-database", "lab", "appdb", "--owner", "app1", "--extension",
                "postgis", "--dry-run"))  # fmt: skip
    assert 'CREATE DATABASE "appdb" TEMPLATE template0;' in out
    assert 'ALTER TABLE "public"."spatial_ref_sys" OWNER TO "app1";' in out
    assert "appdb" not in databases(rds)
    refused(
        tm("db", "create-database", "lab", "extdb", "--owner", "app1", "--extension", "adminpack"),
        "whitelisted",
        "dropped again",
    )
    assert "extdb" not in databases(rds)
    ok(tm("db", "create-database", "lab", "appdb", "--owner", "app1", "--extension", "postgis"))
    assert (
        one(rds, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'appdb'")
        == "app1"
    )
    assert one(rds, "SELECT has_database_privilege('public', 'appdb', 'CONNECT')") is False
    assert (
        one(rds, "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'spatial_ref_sys'::regclass",
            db="appdb") == "app1"
    )  # fmt: skip
    # As app1, through the saved profile and the bastion: PostGIS works in appdb.
    out = ok(tm_proc("psql", "app1", "-X", "-At", "-d", "appdb", "-c", "select postgis_version()"))
    assert "USE_GEOS=1" in out
    with as_role(rds, "app1", pw1, "appdb") as conn:
        conn.execute(
            "CREATE TABLE pts (id serial PRIMARY KEY, name text, geom geometry(Point, 4326))"
        )
        conn.execute("INSERT INTO pts (name, geom) SELECT 'p' || i, ST_MakePoint(i, i)"
                     " FROM generate_series(1, 25) i")  # fmt: skip
        conn.execute("CREATE TABLE t (x int)")
        conn.execute("INSERT INTO t VALUES (1), (2)")

    # grant-read: dry run, then for real with its self-test; afterwards a new table is readable.
    pwr = "reader-pw-0815"
    ok(tm("db", "create-user", "lab", "reader1", "--password-stdin", input=pwr + "\n"))
    out = ok(tm("db", "grant-read", "lab", "appdb", "reader1", "--dry-run"))
    assert (
        'ALTER DEFAULT PRIVILEGES FOR ROLE "app1" IN SCHEMA "public" GRANT SELECT ON TABLES TO "reader1";'
        in out
    )
    assert one(rds, "SELECT has_table_privilege('reader1', 'pts', 'SELECT')", db="appdb") is False
    out = ok(tm("db", "grant-read", "lab", "appdb", "reader1"))
    assert "✓ reader1 reads public.pts" in out, out
    assert "✓ reader1 cannot write" in out
    assert "✗" not in out
    with as_role(rds, "app1", pw1, "appdb") as conn:
        conn.execute("CREATE TABLE later (id int)")
        conn.execute("INSERT INTO later VALUES (7)")
    with as_role(rds, "reader1", pwr, "appdb") as conn:
        assert conn.execute("SELECT count(*) FROM pts").fetchone() == (25,)
        assert conn.execute("SELECT id FROM later").fetchone() == (7,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO pts (name) VALUES ('no')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO later VALUES (8)")
    assert one(rds, "SELECT count(*) FROM t", db="appdb") == 2

    # dump → restore into appdb2 → the same rows, owned by app1.
    archive = tmp_path / "appdb.dump"
    ok(tm("db", "dump", "lab", "appdb", "-o", str(archive), "--dry-run"))
    assert not archive.exists()
    res = tm_proc("db", "dump", "lab", "appdb", "-o", str(archive))
    ok(res)
    assert archive.read_bytes()[:5] == b"PGDMP"
    assert "dumping public.pts" in res.stderr
    ok(tm("db", "create-database", "lab", "appdb2", "--owner", "app1", "--extension", "postgis"))
    out = ok(tm("db", "restore", "lab", "appdb2", str(archive), "--dry-run"))
    assert "--no-owner --no-acl --verbose --role=app1" in out
    assert one(rds, "SELECT to_regclass('public.pts') IS NULL", db="appdb2") is True
    res = tm("db", "restore", "lab", "appdb2", str(archive))
    ok(res)
    assert "restoring public.pts" in res.stderr
    tables = ["pts", "t", "later", "spatial_ref_sys"]
    assert counts(rds, "appdb2", tables) == counts(rds, "appdb", tables)
    assert one(rds, "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'pts'::regclass",
               db="appdb2") == "app1"  # fmt: skip

    # drops: refusals first, dry runs change nothing, then the real thing.
    refused(tm("db", "drop-database", "lab", "postgres", "--yes"), "profile 'lab' connects to it")
    refused(tm("db", "drop-database", "lab", "appdb"), "--yes")  # no terminal, no --yes
    refused(tm("db", "drop-user", "lab", "app1", "--yes"), "owns database")
    out = ok(tm("db", "drop-database", "lab", "appdb", "--dry-run"))
    assert 'ALTER DATABASE "appdb" OWNER TO "master";' in out
    assert 'DROP DATABASE "appdb";' in out
    out = ok(tm("db", "drop-user", "lab", "reader1", "--dry-run"))
    assert 'DROP OWNED BY "reader1";' in out
    assert {"appdb", "appdb2"} <= databases(rds)
    assert "reader1" in roles(rds)
    ok(tm("db", "drop-user", "lab", "reader1", "--yes"))  # holds grants in appdb: revoked first
    assert "reader1" not in roles(rds)
    ok(tm("db", "drop-database", "lab", "appdb", "--yes"))
    ok(tm("db", "drop-database", "lab", "appdb2", "--yes"))
    ok(tm("db", "drop-user", "lab", "app1", "--yes"))
    logs = [p for p in Path(os.environ["XDG_STATE_HOME"]).rglob("*") if p.is_file()]
    assert all(pw1 not in p.read_text(errors="replace") for p in logs)
    assert roles(rds) == before_roles
    assert databases(rds) == before_dbs


def test_a_hostile_role_name_is_quoted_never_run(master: LabProfile, rds: RdsLike) -> None:
    with rds.superuser() as conn:
        conn.execute("CREATE DATABASE hostiledb OWNER master")
    with rds.superuser("hostiledb") as conn:
        conn.execute("CREATE TABLE t (x int) ; ALTER TABLE t OWNER TO master")
        conn.execute("INSERT INTO t VALUES (1)")
    try:
        out = ok(tm("db", "create-user", "lab", HOSTILE, "--dry-run"))
        assert 'CREATE ROLE "x""; drop table t; --" WITH LOGIN' in out
        ok(tm("db", "create-user", "lab", HOSTILE, "--password-stdin", input="hostile-pw\n"))
        assert HOSTILE in roles(rds)
        out = ok(tm("db", "grant-read", "lab", "hostiledb", HOSTILE))
        assert "✗" not in out
        ok(tm("db", "drop-user", "lab", HOSTILE, "--yes"))
        assert HOSTILE not in roles(rds)
        assert one(rds, "SELECT count(*) FROM t", db="hostiledb") == 1
    finally:
        with rds.superuser() as conn:
            conn.execute("DROP DATABASE IF EXISTS hostiledb")
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(HOSTILE)))


def test_a_generated_password_is_shown_once_and_works(master: LabProfile, rds: RdsLike) -> None:
    out = ok(tm("db", "create-user", "lab", "gen1"))  # no terminal, no --password-stdin
    line = next(ln for ln in out.splitlines() if ln.startswith("Generated password for gen1"))
    password = line.rsplit(": ", 1)[1]
    assert len(password) >= 20
    try:
        with as_role(rds, "gen1", password, "postgres") as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("gen1",)
        assert password not in rds.log_text()
    finally:
        ok(tm("db", "drop-user", "lab", "gen1", "--yes"))
    assert "gen1" not in roles(rds)


def test_the_agents_tunnel_is_reused(master: LabProfile, monkeypatch: pytest.MonkeyPatch) -> None:
    """With `up --detach`, a db command needs no SSH of its own: it still works once the profile's
    key is gone (an in-process tunnel could not open)."""
    from tunnelman.agent.client import AgentClient

    monkeypatch.setenv("TUNNELMAN_AGENT_IDLE", "300")
    ok(tm_proc("up", "lab", "--detach"))
    try:
        master.write(identity_file=master.identity_file.with_name("gone"))
        out = ok(tm_proc("db", "create-user", "lab", "via_agent", "--dry-run"))
        assert 'CREATE ROLE "via_agent"' in out
    finally:
        AgentClient().shutdown(wait=30)
    refused(tm("db", "create-user", "lab", "via_agent", "--dry-run"), "gone")


def test_restore_refuses_a_file_that_is_no_archive(master: LabProfile, tmp_path: Path) -> None:
    bogus = tmp_path / "plain.sql"
    bogus.write_text("select 1;\n")
    refused(tm("db", "restore", "lab", "postgres", str(bogus)), "not a pg_dump custom-format")


# ----------------------------------------------------------------------------- parsing


RDS_RESTORE_STDERR = """\
pg_restore: connecting to database for restore
pg_restore: creating EXTENSION "postgis"
pg_restore: while PROCESSING TOC:
pg_restore: from TOC entry 2; 3079 16385 EXTENSION postgis (no owner)
pg_restore: error: could not execute query: ERROR:  extension "postgis" already exists
Command was: CREATE EXTENSION postgis WITH SCHEMA public;


pg_restore: creating COMMENT "EXTENSION postgis"
pg_restore: from TOC entry 4289; 0 0 COMMENT EXTENSION postgis
pg_restore: error: could not execute query: ERROR:  must be owner of extension postgis
Command was: COMMENT ON EXTENSION postgis IS 'PostGIS geometry and geography spatial types and functions';


pg_restore: creating TABLE "public.pts"
pg_restore: processing data for table "public.pts"
pg_restore: from TOC entry 4300; 0 16999 TABLE DATA big app1
pg_restore: error: could not execute query: ERROR:  permission denied for table big
Command was: COPY public.big (id) FROM stdin;
pg_restore: warning: errors ignored on restore: 3
"""


def test_restore_log_sorts_extension_errors_from_real_ones() -> None:
    log = dbops.parse_log(RDS_RESTORE_STDERR)
    assert log.tables == ["public.pts"]
    assert [e.extension for e in log.errors] == ["postgis", "postgis", None]
    real = log.errors[2]
    assert real.message == "permission denied for table big"
    assert real.entry.startswith("TABLE DATA big")
    assert real.command == "COPY public.big (id) FROM stdin;"
    assert log.warnings == []
    result = dbops.ProgramResult(["pg_restore"], 1, log, 0.1)
    assert len(result.tolerated) == 2
    assert result.failures == [real]


def test_names_are_checked_before_any_connection() -> None:
    with pytest.raises(dbops.DbOpsError, match="longer than 63 bytes"):
        dbops.check_name("r" * 64, "role")
    with pytest.raises(dbops.DbOpsError, match="empty role"):
        dbops.check_name("", "role")
    assert dbops.check_name(HOSTILE, "role") == HOSTILE
