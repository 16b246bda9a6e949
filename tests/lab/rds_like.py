"""A lab PostgreSQL that behaves like RDS for its master user (see docs of `tunnelman db`).

``RdsLike()`` is a ``Postgres`` (tests/lab/postgres.py) with Debian's ``postgresql-15-pgextwlist``
preloaded (``session_preload_libraries``) and ``extwlist.extensions`` listing what RDS would let
the master create; plus the master role as on RDS: ``LOGIN CREATEDB CREATEROLE NOSUPERUSER
NOREPLICATION NOBYPASSRLS``, member of a NOLOGIN ``rds_superuser`` (granted ``pg_monitor`` and
``pg_signal_backend``). Its password is ``rds.master_password``; TCP logins are SCRAM.

pgextwlist runs a whitelisted extension's script as the bootstrap superuser, so PostGIS's tables
and views would belong to ``postgres``, while on RDS the master owns them. A custom
``postgis/after-create.sql`` hook hands them to ``session_user`` (only while the bootstrap
superuser still owns them). Every statement is logged (``log_statement = all``) so a test can
check that no password reaches the server's log.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from tests.lab.postgres import Postgres, find_bindir

__all__ = ["EXTWLIST", "RdsLike", "pgextwlist_missing"]

EXTWLIST = "postgis,hstore,pg_trgm"

_POSTGIS_AFTER_CREATE = """\
-- tests/lab/rds_like.py: as on RDS, the master (session_user) owns PostGIS's tables and views.
DO $$
DECLARE r record;
BEGIN
  FOR r IN
    SELECT c.oid::regclass AS rel, c.relkind
      FROM pg_depend d
      JOIN pg_extension e ON e.oid = d.refobjid AND d.refclassid = 'pg_extension'::regclass
      JOIN pg_class c ON c.oid = d.objid AND d.classid = 'pg_class'::regclass
     WHERE e.extname = 'postgis' AND d.deptype = 'e' AND c.relkind IN ('r', 'v')
       AND c.relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)
  LOOP
    EXECUTE format('ALTER %s %s OWNER TO %I',
                   CASE r.relkind WHEN 'v' THEN 'VIEW' ELSE 'TABLE' END, r.rel, session_user);
  END LOOP;
END $$;
"""


def pgextwlist_missing() -> str | None:
    """Why pgextwlist cannot be loaded here, or None."""
    bindir = find_bindir()
    if bindir is None:
        return "PostgreSQL server not installed (apt-get install postgresql)"
    version = bindir.parent.name
    if not (bindir.parent / "lib" / "pgextwlist.so").exists():
        return f"pgextwlist not installed (apt-get install postgresql-{version}-pgextwlist)"
    return None


class RdsLike(Postgres):
    """A ``Postgres`` whose ``master`` role is an RDS master user (see the module docstring)."""

    def __init__(self, master: str = "master", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.master = master
        self.master_password = f"rds-{secrets.token_hex(8)}"
        hooks = self.dir / "extwlist"
        (hooks / "postgis").mkdir(parents=True)
        (hooks / "postgis" / "after-create.sql").write_text(_POSTGIS_AFTER_CREATE)
        self.settings.update(
            {
                "session_preload_libraries": "pgextwlist",
                "extwlist.extensions": EXTWLIST,
                "extwlist.custom_path": str(hooks),
                "log_statement": "all",
            }
        )

    def start(self, timeout: float = 30.0) -> None:
        first = not self._initialized
        super().start(timeout)
        if first:
            self._add_master()

    def _add_master(self) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.socket_dsn(dbname="postgres"), autocommit=True) as conn:
            conn.execute("CREATE ROLE rds_superuser NOLOGIN")
            conn.execute("GRANT pg_monitor, pg_signal_backend TO rds_superuser")
            conn.execute(
                sql.SQL(
                    "CREATE ROLE {} LOGIN CREATEDB CREATEROLE NOSUPERUSER NOREPLICATION"
                    " NOBYPASSRLS IN ROLE rds_superuser PASSWORD {}"
                ).format(sql.Identifier(self.master), sql.Literal(self.master_password))
            )

    def superuser(self, dbname: str = "postgres") -> Any:
        """A psycopg connection as the bootstrap superuser over the socket (the lab's own view)."""
        import psycopg

        return psycopg.connect(self.socket_dsn(dbname=dbname), autocommit=True)

    @property
    def hooks_dir(self) -> Path:
        return self.dir / "extwlist"
