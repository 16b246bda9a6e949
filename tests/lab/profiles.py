"""In-memory tunnelman ``Profile``s pointing at the lab, and the query that proves a port
forwards to the lab database.

For tests that drive core by hand (``open_tunnel(profile)``, ``ssh.connect``) rather than
through a profile file: ``bastion_profile`` is the bastion half (its host key written to
``<dir>/known_hosts`` once, the lab user key), ``make_profile`` adds the lab database behind
it.  ``query`` logs into a lab ``Postgres`` through ``127.0.0.1:PORT``.  Profiles in
``$TUNNELMAN_CONFIG`` (the CLI's view) come from ``tests/lab/toml_profile.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg

from tests.lab.postgres import Postgres
from tests.lab.sshd import Sshd
from tunnelman.core.profiles import Bastion, Endpoint, Profile, with_overrides

__all__ = ["PTS", "bastion_profile", "make_profile", "query"]

# The lab database's sample table holds 4 points.
PTS = "select count(*) from public.pts"


def bastion_profile(server: Sshd, directory: Path, **changes: Any) -> Profile:
    """Profile ``lab`` through ``server``: its user key, ``<directory>/known_hosts`` holding its
    host key (written once), endpoint 127.0.0.1:5432, a 5 s connect timeout; ``changes``
    override any ``Profile`` field (``name=``, ``identity_file=None`` for ssh-agent, …)."""
    known_hosts = directory / "known_hosts"
    if not known_hosts.exists():
        server.write_known_hosts(known_hosts)
    profile = Profile(
        name="lab",
        bastion=Bastion(server.host, server.user, server.port),
        identity_file=server.key_path,
        known_hosts=known_hosts,
        endpoint=Endpoint("127.0.0.1", 5432),
        connect_timeout=5,
    )
    return with_overrides(profile, **changes) if changes else profile


def make_profile(server: Sshd, pg: Postgres, directory: Path, **changes: Any) -> Profile:
    """``bastion_profile`` to the database ``pg`` (password ``none``: the test brings its own),
    a 5 s keepalive; ``changes`` override any field (``engine="openssh"``, ``endpoint=None``…)."""
    assert server.key_path is not None
    keys: dict[str, Any] = {
        "endpoint": Endpoint("127.0.0.1", pg.port),
        "database": pg.database,
        "user": pg.user,
        "password": "none",
        "keepalive": 5,
        **changes,
    }
    return bastion_profile(server, directory, **keys)


def query(port: int, pg: Postgres, sql: str = "select 1", *, timeout: int = 10) -> Any:
    """One fresh connection to ``pg`` through 127.0.0.1:PORT; the first column of the first row."""
    with psycopg.connect(
        pg.dsn(host="127.0.0.1", port=port, connect_timeout=timeout), autocommit=True
    ) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return row[0]
