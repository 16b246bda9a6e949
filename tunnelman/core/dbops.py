"""Database operations the RDS way (`tunnelman db …`): the SQL routines, the grant-read self-test,
and pg_dump / pg_restore with their `--verbose` output parsed.

On RDS and Aurora the master user is not a superuser: it has CREATEDB and CREATEROLE and may
create only whitelisted extensions. Each routine here is the order of statements that works for
such a user (PostgreSQL 15 rules included: the master must be a member of a role before handing it
a database or a table; a database is handed over before PostGIS's `spatial_ref_sys`; a database is
dropped while connected to another one).

Called by `tunnelman/cli/cmd_db.py`, which opens the tunnel (`tunnel_port`) and builds an `Ops`
on its port. Nothing here prints: in a dry run every changing statement goes to the `echo`
callback instead of the server (the look-ups that decide which statements are needed still run,
read-only), and progress goes to `on_progress`. Identifiers are always psycopg `sql.Identifier`s,
so a hostile name is quoted, never executed. A new role's password never travels: the server gets
the SCRAM verifier libpq computes here (as psql's `\\password` does). pg_dump and pg_restore get
the login's password through `oneshot.temp_passfile`, never argv or PGPASSWORD.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunnelman.core import clients
from tunnelman.core.errors import TunnelmanError
from tunnelman.core.platform import process

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql

    from tunnelman.core.credentials import Login
    from tunnelman.core.profiles import Profile
    from tunnelman.core.ssh import PassphrasePrompt
    from tunnelman.core.ssh.known_hosts import HostKeyPolicy

Echo = Callable[[str], None]

MAX_IDENTIFIER = 63  # NAMEDATALEN - 1: PostgreSQL would silently truncate a longer name
ARCHIVE_MAGIC = b"PGDMP"
SELFTEST_TABLE = "tunnelman_grant_read_check"
# The schemas a project's data lives in (public first): all but the system ones.
_USER_SCHEMAS = (
    "SELECT nspname FROM pg_namespace WHERE nspname !~ '^pg_' AND nspname <> 'information_schema'"
    " ORDER BY nspname = 'public' DESC, 1"
)
# One table of the project (not an extension's, like spatial_ref_sys) for the self-test.
_A_USER_TABLE = (
    "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE c.relkind IN ('r', 'p') AND n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'"
    " AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass"
    " AND d.objid = c.oid AND d.deptype = 'e')"
    " ORDER BY n.nspname = 'public' DESC, 1, 2 LIMIT 1"
)


class DbOpsError(TunnelmanError):
    """A database operation was refused or failed; nothing it started was left half-done."""


# ----------------------------------------------------------------------------- names, passwords


def check_name(name: str, what: str) -> str:
    """`name` as a PostgreSQL identifier, or DbOpsError (empty, NUL, longer than 63 bytes)."""
    if not name:
        raise DbOpsError(f"empty {what} name")
    if "\x00" in name:
        raise DbOpsError(f"{what} name {name!r} holds a NUL character")
    if len(name.encode("utf-8")) > MAX_IDENTIFIER:
        raise DbOpsError(
            f"{what} name {name[:20]!r}… is longer than {MAX_IDENTIFIER} bytes",
            hint="PostgreSQL would cut it short: pick a shorter name",
        )
    return name


def generate_password() -> str:
    """A new role's password: 24 URL-safe random characters (about 143 bits)."""
    return secrets.token_urlsafe(18)


# ----------------------------------------------------------------------------- errors explained

_RDS_NOTE = "RDS's master user has CREATEDB and CREATEROLE but is no superuser"


def explain(exc: Exception, user: str, statement: str = "") -> DbOpsError:
    """One actionable error for a server error: a missing privilege is named, with what RDS allows."""
    diag = getattr(exc, "diag", None)
    primary = (getattr(diag, "message_primary", None) or str(exc)).strip().splitlines()[0]
    sqlstate = getattr(exc, "sqlstate", None) or ""
    low = primary.lower()
    where = f" (while running: {statement})" if statement else ""
    if "not whitelisted" in low or "permission denied to create extension" in low:
        return DbOpsError(
            f"{primary}: {user} may create only whitelisted extensions",
            hint="on RDS the master may create those listed by `SHOW rds.extensions` "
            "(here: `SHOW extwlist.extensions`); ask for others through a parameter group",
        )
    if "permission denied to create role" in low:
        return DbOpsError(
            f"{user} lacks CREATEROLE: {primary}",
            hint=f"{_RDS_NOTE}: connect through a profile whose user is the master user",
        )
    if "permission denied to create database" in low:
        return DbOpsError(
            f"{user} lacks CREATEDB: {primary}",
            hint=f"{_RDS_NOTE}: connect through a profile whose user is the master user",
        )
    if "must be member of role" in low or "permission denied to set role" in low:
        return DbOpsError(
            f"{user} is not a member of the role: {primary}",
            hint="the master needs membership (`GRANT role TO master`; CREATEROLE allows it for "
            "roles it created): create the role with `tunnelman db create-user`",
        )
    if "must be superuser" in low or ("superuser" in low and sqlstate == "42501"):
        return DbOpsError(
            f"this needs a superuser: {primary}",
            hint=f"{_RDS_NOTE}, so RDS never allows it",
        )
    if "must be owner of" in low:
        return DbOpsError(
            f"{user} does not own it: {primary}",
            hint="only the owner or a member of the owner's role may change it",
        )
    if sqlstate == "42501":
        return DbOpsError(f"permission denied for {user}: {primary}{where}", hint=_RDS_NOTE)
    if sqlstate == "55006":
        return DbOpsError(
            primary, hint="close the other sessions (psql, QGIS, the application) and retry"
        )
    return DbOpsError(f"{primary}{where}")


def _connect_error(exc: Exception, user: str, dbname: str) -> DbOpsError:
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    reason = lines[-1] if lines else type(exc).__name__
    reason = re.sub(r"^.*?FATAL:\s+", "", reason)
    if "password authentication failed" in text:
        return DbOpsError(
            f"cannot log in to {dbname} as {user}: the password was refused",
            hint="store the right one with `tunnelman password set PROFILE`",
        )
    if "permission denied for database" in text or "not have CONNECT privilege" in text:
        return DbOpsError(
            f"{user} may not connect to {dbname}: {reason}",
            hint=f"`GRANT CONNECT ON DATABASE {dbname} TO {user}` as its owner",
        )
    return DbOpsError(f"cannot connect to {dbname} as {user}: {reason}")


# ----------------------------------------------------------------------------- the tunnel


@contextlib.contextmanager
def tunnel_port(
    profile: Profile,
    *,
    port: int | None = None,
    host_keys: HostKeyPolicy | None = None,
    passphrase: PassphrasePrompt | None = None,
) -> Iterator[int]:
    """The local port of a tunnel to `profile`'s database: `port` (the agent's) when given, else an
    in-process tunnel on a free port, closed on exit (as `oneshot.run` does)."""
    if port is not None:
        yield port
        return
    from tunnelman.core.ssh.known_hosts import HostKeyPolicy
    from tunnelman.core.tunnel import open_tunnel

    tunnel = open_tunnel(
        profile, local_port=0, host_keys=host_keys or HostKeyPolicy(), passphrase=passphrase
    )
    opened = tunnel.start()
    try:
        yield opened
    finally:
        tunnel.stop()


# ----------------------------------------------------------------------------- statements


class Ops:
    """The statements of one `tunnelman db` command, on connections through one tunnel port.

    `run` executes a changing statement (or, in a dry run, echoes it); `rows` runs a read-only
    look-up in every mode. Connections are per database, autocommit, as the login's user.
    """

    def __init__(
        self,
        profile: Profile,
        port: int,
        login: Login,
        *,
        dry_run: bool = False,
        echo: Echo | None = None,
    ) -> None:
        self.profile = profile
        self.port = port
        self.login = login
        self.dry_run = dry_run
        self.echo: Echo = echo or (lambda _text: None)
        self.home = profile.database
        self.executed: list[str] = []
        self._conns: dict[str, psycopg.Connection[Any]] = {}
        self._shown_db: str | None = None

    @property
    def user(self) -> str:
        return self.login.user

    def params(self, dbname: str) -> dict[str, Any]:
        """psycopg/libpq keywords for `dbname` through the tunnel (the password as an argument)."""
        from tunnelman.core.oneshot import connect_timeout

        s = clients.conn_settings(self.profile, self.port, user=self.login.user)
        p: dict[str, Any] = {
            "host": s.host,
            "port": s.port,
            "dbname": dbname,
            "user": s.user,
            "sslmode": s.sslmode,
            "connect_timeout": connect_timeout(self.profile),
            "application_name": "tunnelman db",
        }
        if s.hostaddr:
            p["hostaddr"] = s.hostaddr
        if s.sslrootcert:
            p["sslrootcert"] = s.sslrootcert
        if self.login.password is not None:
            p["password"] = self.login.password
        return p

    def conn(self, dbname: str | None = None) -> psycopg.Connection[Any]:
        import psycopg

        dbname = dbname or self.home
        found = self._conns.get(dbname)
        if found is not None and not found.closed:
            return found
        try:
            made = psycopg.connect(autocommit=True, **self.params(dbname))
        except psycopg.Error as exc:
            raise _connect_error(exc, self.user, dbname) from None
        self._conns[dbname] = made
        return made

    def forget(self, dbname: str) -> None:
        """Close the connection to `dbname` (before dropping it, or renaming its owner)."""
        found = self._conns.pop(dbname, None)
        if found is not None:
            with contextlib.suppress(Exception):
                found.close()

    def close(self) -> None:
        for name in list(self._conns):
            self.forget(name)

    def rows(self, query: str, params: Sequence[Any] = (), *, db: str | None = None) -> list[Any]:
        import psycopg

        try:
            return self.conn(db).execute(query, params).fetchall()
        except psycopg.Error as exc:
            raise explain(exc, self.user) from None

    def value(self, query: str, params: Sequence[Any] = (), *, db: str | None = None) -> Any:
        found = self.rows(query, params, db=db)
        return found[0][0] if found else None

    def text(self, stmt: sql.Composable) -> str:
        return stmt.as_string(self.conn())

    def run(
        self, stmt: sql.Composed | sql.SQL, *, db: str | None = None, shown: str | None = None
    ) -> None:
        """Execute `stmt` on `db` (default: the profile's database); in a dry run, echo it."""
        import psycopg

        dbname = db or self.home
        text = shown if shown is not None else self.text(stmt)
        if self.dry_run:
            if self._shown_db != dbname:
                self.echo(f"-- on database {_quote(dbname)} as {_quote(self.user)}")
                self._shown_db = dbname
            self.echo(text + ";")
            return
        try:
            self.conn(dbname).execute(stmt)
        except psycopg.Error as exc:
            raise explain(exc, self.user, text) from None
        self.executed.append(text)

    # -- look-ups --------------------------------------------------------------------------

    def role_exists(self, role: str) -> bool:
        return bool(self.rows("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]))

    def db_owner(self, db: str) -> str | None:
        """The owner of database `db`, None when there is no such database."""
        owner = self.value(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", [db]
        )
        return None if owner is None else str(owner)

    def is_member(self, role: str) -> bool:
        return bool(self.value("SELECT pg_has_role(current_user, %s, 'MEMBER')", [role]))

    def need_role(self, role: str) -> None:
        if not self.role_exists(role):
            raise DbOpsError(
                f"no role {role!r} on this server",
                hint=f"create it: tunnelman db create-user {self.profile.name} ROLE",
            )

    def need_db(self, db: str) -> str:
        owner = self.db_owner(db)
        if owner is None:
            raise DbOpsError(f"no database {db!r} on this server")
        return owner

    def join(self, role: str) -> None:
        """Make the login a member of `role` when it is not (RDS: the master may, via CREATEROLE)."""
        from psycopg import sql

        if role != self.user and not self.is_member(role):
            self.run(
                sql.SQL("GRANT {} TO {}").format(sql.Identifier(role), sql.Identifier(self.user))
            )


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# ----------------------------------------------------------------------------- create-user


def create_user(ops: Ops, role: str, password: str | None) -> None:
    """CREATE ROLE … LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE with the password's SCRAM verifier.

    `password` None only in a dry run (the verifier is shown as a placeholder).
    """
    from psycopg import sql

    check_name(role, "role")
    if ops.role_exists(role):
        raise DbOpsError(
            f"role {role!r} already exists",
            hint="pick another name, or drop it: tunnelman db drop-user PROFILE ROLE",
        )
    base = sql.SQL("CREATE ROLE {} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}")
    shown = ops.text(
        base.format(sql.Identifier(role), sql.SQL("'<SCRAM verifier of the password>'"))
    )
    if password is None:
        ops.run(sql.SQL(""), shown=shown)
        return
    # libpq's PQencryptPasswordConn, as psql's \password: the server (and its statement log)
    # sees only the verifier, in the algorithm the server's password_encryption names.
    # The algorithm is looked up here: libpq's own look-up (a blocking query) hangs on
    # psycopg's non-blocking connection.
    algorithm = str(ops.value("SHOW password_encryption") or "scram-sha-256")
    pgconn = ops.conn().pgconn
    verifier = pgconn.encrypt_password(password.encode(), role.encode(), algorithm.encode())
    verifier_text = verifier.decode()
    ops.run(base.format(sql.Identifier(role), sql.Literal(verifier_text)), shown=shown)


# ----------------------------------------------------------------------------- create-database


def create_database(ops: Ops, db: str, owner: str, extensions: Sequence[str] = ()) -> list[str]:
    """The routine: master joins OWNER, CREATE DATABASE from template0, PUBLIC revoked, grants to
    master and OWNER, extensions created as master, database then `spatial_ref_sys` handed to
    OWNER. A failure after CREATE DATABASE drops the new database again. Returns notes."""
    from psycopg import sql

    check_name(db, "database")
    check_name(owner, "role")
    for ext in extensions:
        check_name(ext, "extension")
    if ops.db_owner(db) is not None:
        raise DbOpsError(f"database {db!r} already exists", hint="pick another name")
    ops.need_role(owner)
    if extensions:
        available = {r[0] for r in ops.rows(
            "SELECT name FROM pg_available_extensions WHERE name = ANY(%s)", [list(extensions)]
        )}  # fmt: skip
        missing = [e for e in extensions if e not in available]
        if missing:
            raise DbOpsError(
                f"extension {missing[0]!r} is not installed on this server",
                hint="`SELECT name FROM pg_available_extensions` lists those that are",
            )
    Id, S = sql.Identifier, sql.SQL
    ops.join(owner)
    ops.run(S("CREATE DATABASE {} TEMPLATE template0").format(Id(db)))
    try:
        ops.run(S("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(Id(db)))
        ops.run(S("GRANT ALL ON DATABASE {} TO {}").format(Id(db), Id(ops.user)))
        if owner != ops.user:
            ops.run(S("GRANT ALL ON DATABASE {} TO {}").format(Id(db), Id(owner)))
        for ext in extensions:
            ops.run(S("CREATE EXTENSION IF NOT EXISTS {}").format(Id(ext)), db=db)
        ops.run(S("ALTER DATABASE {} OWNER TO {}").format(Id(db), Id(owner)))
        if "postgis" in extensions:
            schema = "public"
            if not ops.dry_run:
                schema = ops.value(
                    "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n"
                    " ON n.oid = e.extnamespace WHERE e.extname = 'postgis'",
                    db=db,
                )
            ops.run(
                S("ALTER TABLE {} OWNER TO {}").format(Id(schema, "spatial_ref_sys"), Id(owner)),
                db=db,
            )
    except TunnelmanError as exc:
        if ops.dry_run:
            raise
        ops.forget(db)
        try:
            ops.run(S("DROP DATABASE {}").format(Id(db)))
        except TunnelmanError:
            raise DbOpsError(
                f"{exc.message}; database {db!r} was created and is left as it is",
                hint=exc.hint,
            ) from None
        raise DbOpsError(
            f"{exc.message}; the new database {db!r} was dropped again", hint=exc.hint
        ) from None
    return []


# ----------------------------------------------------------------------------- grant-read


@dataclass(frozen=True)
class Check:
    """One line of grant-read's self-test."""

    label: str
    ok: bool
    detail: str = ""


def grant_read(ops: Ops, db: str, role: str) -> None:
    """CONNECT, USAGE on DB's schemas, SELECT on their tables and sequences, and default privileges
    so that tables DB's owner creates later are readable too."""
    from psycopg import sql

    check_name(db, "database")
    check_name(role, "role")
    owner = ops.need_db(db)
    ops.need_role(role)
    ops.join(owner)
    schemas = [r[0] for r in ops.rows(_USER_SCHEMAS, db=db)]
    Id, S = sql.Identifier, sql.SQL
    ops.run(S("GRANT CONNECT ON DATABASE {} TO {}").format(Id(db), Id(role)), db=db)
    for schema in schemas:
        s, r, o = Id(schema), Id(role), Id(owner)
        ops.run(S("GRANT USAGE ON SCHEMA {} TO {}").format(s, r), db=db)
        ops.run(S("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(s, r), db=db)
        ops.run(S("GRANT SELECT ON ALL SEQUENCES IN SCHEMA {} TO {}").format(s, r), db=db)
        for kind in ("TABLES", "SEQUENCES"):
            ops.run(
                S(
                    "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {} GRANT SELECT ON {} TO {}"
                ).format(o, s, S(kind), r),
                db=db,
            )


def _attempt(conn: psycopg.Connection[Any], role: str, query: sql.Composed) -> str | None:
    """Run `query` as `role` inside a savepoint; None when it worked, else the server's reason."""
    import psycopg
    from psycopg import sql

    try:
        with conn.transaction():
            conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
            conn.execute(query)
            conn.execute("RESET ROLE")
    except psycopg.Error as exc:
        diag = getattr(exc, "diag", None)
        return (getattr(diag, "message_primary", None) or str(exc)).strip()
    return None


def grant_read_selftest(ops: Ops, db: str, role: str) -> list[Check]:
    """Test grant-read's result as ROLE (`SET ROLE`, in one transaction that is rolled back, so it
    leaves nothing behind): CONNECT, a SELECT on an existing table, a write refused, and the same
    for a table DB's owner creates now (the default privileges)."""
    from psycopg import sql

    Id, S = sql.Identifier, sql.SQL
    owner = ops.need_db(db)
    conn = ops.conn(db)
    checks: list[Check] = []
    connect = bool(ops.value("SELECT has_database_privilege(%s, %s, 'CONNECT')", [role, db]))
    checks.append(Check(f"{role} may connect to {db}", connect))
    with conn.transaction(force_rollback=True):
        if not ops.is_member(role):
            # To SET ROLE; undone with the rest of the test.
            conn.execute(S("GRANT {} TO {}").format(Id(role), Id(ops.user)))
        existing = conn.execute(_A_USER_TABLE).fetchone()
        targets: list[tuple[str, tuple[str, str]]] = []
        if existing is not None:
            targets.append(("existing table", (existing[0], existing[1])))
        schemas = [r[0] for r in conn.execute(_USER_SCHEMAS).fetchall()]
        if schemas:
            new = (schemas[0], SELFTEST_TABLE)
            made = _attempt(conn, owner, S("CREATE TABLE {} (id int)").format(Id(*new)))
            if made is None:
                targets.append((f"table {owner} creates later", new))
            else:
                checks.append(
                    Check(f"a table {owner} creates later", False, f"cannot create one: {made}")
                )
        for label, (schema, table) in targets:
            name = Id(schema, table)
            shown = f"{schema}.{table}" if table != SELFTEST_TABLE else "a new table"
            read = _attempt(conn, role, S("SELECT * FROM {} LIMIT 1").format(name))
            checks.append(Check(f"{role} reads {shown} ({label})", read is None, read or ""))
            write = _attempt(
                conn, role, S("INSERT INTO {} SELECT * FROM {} WHERE false").format(name, name)
            )
            checks.append(
                Check(
                    f"{role} cannot write {shown}",
                    write is not None and "permission denied" in write,
                    "" if write else "the INSERT was allowed",
                )
            )
    return checks


# ----------------------------------------------------------------------------- drops


def drop_database(ops: Ops, db: str) -> None:
    """Owner back to the login, then DROP DATABASE while connected to the profile's database."""
    from psycopg import sql

    check_name(db, "database")
    if db == ops.home:
        raise DbOpsError(
            f"refusing to drop {db!r}: profile '{ops.profile.name}' connects to it",
            hint="drop it through a profile that connects to another database",
        )
    owner = ops.need_db(db)
    ops.forget(db)
    # A session that just ended (ours, a client's) may take a moment to leave the server.
    deadline = time.monotonic() + 3.0
    while True:
        others = ops.value("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", [db])
        if not others or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    if others:
        raise DbOpsError(
            f"{others} session(s) are connected to {db!r}: not dropping it",
            hint="close them (psql, QGIS, the application) and retry",
        )
    Id, S = sql.Identifier, sql.SQL
    if owner != ops.user:
        ops.join(owner)
        ops.run(S("ALTER DATABASE {} OWNER TO {}").format(Id(db), Id(ops.user)))
    try:
        ops.run(S("DROP DATABASE {}").format(Id(db)))
    except TunnelmanError:
        if owner != ops.user and not ops.dry_run:
            with contextlib.suppress(TunnelmanError):
                ops.run(S("ALTER DATABASE {} OWNER TO {}").format(Id(db), Id(owner)))
        raise


def drop_user(ops: Ops, role: str) -> None:
    """DROP OWNED BY (privileges only) in every database that holds ROLE's grants, then DROP ROLE.

    Refused while ROLE owns a database or objects: those are data, not to be dropped by a
    user-removal (drop the database first, or hand them to another role).
    """
    from psycopg import sql

    check_name(role, "role")
    if role == ops.user:
        raise DbOpsError(f"refusing to drop {role!r}: this profile logs in as it")
    if not ops.role_exists(role):
        raise DbOpsError(f"no role {role!r} on this server: nothing to drop")
    owned = [r[0] for r in ops.rows(
        "SELECT datname FROM pg_database WHERE datdba = (SELECT oid FROM pg_roles WHERE rolname = %s)"
        " ORDER BY 1", [role]
    )]  # fmt: skip
    if owned:
        raise DbOpsError(
            f"role {role!r} owns database {owned[0]!r}"
            + (f" and {len(owned) - 1} more" if len(owned) > 1 else ""),
            hint=f"drop it first: tunnelman db drop-database {ops.profile.name} {owned[0]} --yes",
        )
    deps = ops.rows(
        "SELECT coalesce(d.datname, ''), s.deptype FROM pg_shdepend s"
        " LEFT JOIN pg_database d ON d.oid = s.dbid"
        " WHERE s.refclassid = 'pg_authid'::regclass"
        " AND s.refobjid = (SELECT oid FROM pg_roles WHERE rolname = %s)",
        [role],
    )
    owns_in = sorted({d for d, kind in deps if kind == "o" and d})
    if owns_in:
        raise DbOpsError(
            f"role {role!r} owns objects in database {owns_in[0]!r}",
            hint="drop them or hand them to another role (`REASSIGN OWNED BY` as a member of both)",
        )
    grants_in = sorted({d or ops.home for d, _kind in deps})
    Id, S = sql.Identifier, sql.SQL
    if grants_in:
        ops.join(role)
    for dbname in grants_in:
        # Owns nothing here (checked above): DROP OWNED only revokes its privileges.
        ops.run(S("DROP OWNED BY {}").format(Id(role)), db=dbname)
    ops.run(S("DROP ROLE {}").format(Id(role)))


# ----------------------------------------------------------------------------- pg_dump / pg_restore


@dataclass
class ProgramLog:
    """What pg_dump / pg_restore said on stderr with --verbose, parsed."""

    tables: list[str] = field(default_factory=list)
    errors: list[RestoreError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class RestoreError:
    """One `error:` of pg_restore (or pg_dump), with the TOC entry it happened in."""

    message: str
    entry: str = ""
    command: str = ""
    detail: list[str] = field(default_factory=list)

    @property
    def extension(self) -> str | None:
        """The extension this error is about, when it is one pg_restore may meet on RDS: an
        extension (or its comment) that already exists or that only its owner may comment on."""
        m = re.match(r"(?:COMMENT )?EXTENSION (\S+)", self.entry)
        name = m.group(1) if m else None
        if name is None:
            m = re.search(r'extension "([^"]+)"', self.message)
            name = m.group(1) if m else None
        low = self.message.lower()
        if name and ("already exists" in low or "must be owner of extension" in low):
            return name
        return None

    def describe(self) -> str:
        where = f" [{self.entry}]" if self.entry else ""
        return f"{self.message}{where}"


_TABLE_DATA = re.compile(
    r'^pg_(?:dump|restore): (?:dumping contents of table|processing data for table) "(.+)"$'
)
_TOC = re.compile(r"^pg_restore: from TOC entry \d+; \d+ \d+ (.*)$")
_ERROR = re.compile(r"^pg_(?:dump|restore): error: (.*)$")
_WARNING = re.compile(r"^pg_(?:dump|restore): warning: (.*)$")


class LogParser:
    """Feed stderr lines one by one (`feed` returns a table name when its data starts)."""

    def __init__(self) -> None:
        self.log = ProgramLog()
        self._entry = ""
        self._last: RestoreError | None = None

    def feed(self, line: str) -> str | None:
        line = line.rstrip("\r\n")
        if m := _TABLE_DATA.match(line):
            self.log.tables.append(m.group(1))
            self._last = None
            return m.group(1)
        if m := _TOC.match(line):
            self._entry = m.group(1).replace("(no owner)", "").strip()
            self._last = None
        elif m := _ERROR.match(line):
            text = m.group(1)
            text = re.sub(r"^[^:]*(?:query|failed)[^:]*: ERROR:\s+", "", text)
            self._last = RestoreError(message=text, entry=self._entry)
            self.log.errors.append(self._last)
        elif m := _WARNING.match(line):
            if not m.group(1).startswith("errors ignored on restore"):
                self.log.warnings.append(m.group(1))
            self._last = None
        elif line.startswith(("pg_restore: ", "pg_dump: ")):
            self._last = None
        elif self._last is not None and line.strip():
            if line.startswith("Command was: "):
                self._last.command = line[len("Command was: ") :]
            else:
                self._last.detail.append(line.strip())
        return None


def parse_log(text: str) -> ProgramLog:
    """A whole stderr at once (tests, and the dry run's nothing)."""
    parser = LogParser()
    for line in text.splitlines():
        parser.feed(line)
    return parser.log


@dataclass(frozen=True)
class ProgramResult:
    """A finished pg_dump / pg_restore run."""

    argv: list[str]
    returncode: int
    log: ProgramLog
    seconds: float

    @property
    def tolerated(self) -> list[RestoreError]:
        return [e for e in self.log.errors if e.extension is not None]

    @property
    def failures(self) -> list[RestoreError]:
        return [e for e in self.log.errors if e.extension is None]


def _show_env(env: dict[str, str], passfile: bool) -> str:
    keys = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGSSLMODE")
    shown = [f"{k}={clients.shell_word(env[k])}" for k in keys if k in env]
    if passfile:
        shown.append("PGPASSFILE=<temporary 0600 file>")
    return " ".join(shown)


def _run_program(
    argv: list[str],
    env: dict[str, str],
    on_table: Callable[[str, int], None] | None,
) -> tuple[int, ProgramLog]:
    from tunnelman.core.oneshot import ChildRunner

    # ChildRunner's handlers turn SIGTERM/SIGHUP into an exception, so the `finally` blocks
    # (the child, the password file, the partial dump, the tunnel) run as on Ctrl-C.
    with ChildRunner():
        return _read_program(argv, env, on_table)


def _read_program(
    argv: list[str],
    env: dict[str, str],
    on_table: Callable[[str, int], None] | None,
) -> tuple[int, ProgramLog]:
    parser = LogParser()
    proc = subprocess.Popen(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            table = parser.feed(line)
            if table is not None and on_table is not None:
                on_table(table, len(parser.log.tables))
        return proc.wait(), parser.log
    finally:
        process.end_child(proc)  # Ctrl-C or an error while reading: never leave it running


def dump(
    ops: Ops,
    db: str,
    target: Path,
    *,
    on_table: Callable[[str, int], None] | None = None,
) -> ProgramResult | None:
    """`pg_dump --format=custom --verbose` of DB into a temporary file beside TARGET, renamed onto
    TARGET only when pg_dump succeeded (a failed dump leaves TARGET as it was). None in a dry run."""
    from tunnelman.core import oneshot

    check_name(db, "database")
    program = oneshot.find_program("pg_dump")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise DbOpsError(f"cannot write {target}: {parent} is not a directory")
    if target.is_dir():
        raise DbOpsError(f"cannot write {target}: it is a directory", hint="name a file: -o FILE")
    ops.need_db(db)
    env = oneshot.child_env(ops.profile, ops.port, user=ops.user)
    env["PGDATABASE"] = db
    if ops.dry_run:
        part = target.with_name(f".{target.name}.XXXX.part")
        ops.echo(f"{_show_env(env, ops.login.password is not None)} \\")
        ops.echo(f"  {program} --format=custom --verbose --file={clients.shell_word(str(part))}")
        ops.echo(f"mv {clients.shell_word(str(part))} {clients.shell_word(str(target))}")
        return None
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=parent)
    os.close(fd)
    argv = [program, "--format=custom", "--verbose", f"--file={tmp}"]
    started = time.monotonic()
    try:
        with oneshot.temp_passfile(ops.profile, ops.port, ops.login) as passfile:
            if passfile is not None:
                env["PGPASSFILE"] = str(passfile)
            code, log = _run_program(argv, env, on_table)
        if code != 0:
            first = log.errors[0].describe() if log.errors else f"exit status {code}"
            raise DbOpsError(f"pg_dump of {db!r} failed: {first}; {target} was not written")
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return ProgramResult(argv, code, log, time.monotonic() - started)


def is_archive(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(len(ARCHIVE_MAGIC)) == ARCHIVE_MAGIC
    except OSError:
        return False


def restore(
    ops: Ops,
    db: str,
    source: Path,
    *,
    on_table: Callable[[str, int], None] | None = None,
) -> ProgramResult | None:
    """`pg_restore --no-owner --no-acl --verbose --role=OWNER` of SOURCE into DB, so restored objects
    belong to DB's owner as the routine wants. Errors are collected, not fatal: the result splits
    them into `tolerated` (extensions already there) and `failures`. None in a dry run."""
    from tunnelman.core import oneshot

    check_name(db, "database")
    program = oneshot.find_program("pg_restore")
    if not source.is_file():
        raise DbOpsError(f"no file {source}")
    if not is_archive(source):
        raise DbOpsError(
            f"{source} is not a pg_dump custom-format archive",
            hint="make one with `tunnelman db dump PROFILE DB -o FILE` or `pg_dump --format=custom`",
        )
    owner = ops.need_db(db)
    env = oneshot.child_env(ops.profile, ops.port, user=ops.user)
    env["PGDATABASE"] = db
    # --dbname is a conninfo for pg_restore: only the database, the rest comes from PG* variables.
    argv = [program, "--no-owner", "--no-acl", "--verbose"]
    if owner != ops.user:
        argv.append(f"--role={owner}")
    argv += [f"--dbname=dbname={clients.dsn_quote(db)}", str(source.resolve())]
    if ops.dry_run:
        if owner != ops.user and not ops.is_member(owner):
            ops.echo(f"-- {ops.user} is not a member of {owner}: pg_restore --role will fail")
        ops.echo(f"{_show_env(env, ops.login.password is not None)} \\")
        ops.echo("  " + " ".join(clients.shell_word(a) for a in argv))
        return None
    started = time.monotonic()
    with oneshot.temp_passfile(ops.profile, ops.port, ops.login) as passfile:
        if passfile is not None:
            env["PGPASSFILE"] = str(passfile)
        code, log = _run_program(argv, env, on_table)
    return ProgramResult(argv, code, log, time.monotonic() - started)
