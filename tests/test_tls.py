"""TLS through the tunnel: sslmode=verify-full with tunnelman's settings (host=<endpoint>
hostaddr=127.0.0.1) passes against a certificate that names the fake cluster endpoint, and the
same connection with host=127.0.0.1 fails, as it would against a real RDS certificate.

The lab's `postgres_tls` listens on 127.0.0.1 with a certificate for DEFAULT_ENDPOINT signed by a
throw-away CA. The bastion cannot resolve that fake name, so the tunnel is opened with a profile
whose endpoint is 127.0.0.1:<port>, and the client settings are rendered from the same profile
with the endpoint's name set to DEFAULT_ENDPOINT (in production one endpoint serves both).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import LabProfile
from tests.lab.postgres import DEFAULT_ENDPOINT, Postgres
from tunnelman.core import client_files, clients, oneshot
from tunnelman.core import profiles as prof
from tunnelman.core.credentials import Login
from tunnelman.core.profiles import Endpoint, Profile
from tunnelman.core.tunnel import open_tunnel


@pytest.fixture
def tls_lab(
    lab_profile: LabProfile, postgres_tls: Postgres
) -> Iterator[tuple[Profile, int, Postgres]]:
    """(profile as a user would write it, tunnel port, server) for verify-full via the bastion."""
    assert postgres_tls.ca_path is not None
    lab_profile.write(endpoint=f"127.0.0.1:{postgres_tls.port}")
    tunnel_profile = prof.load(lab_profile.config).get("lab")
    user_profile = prof.with_overrides(
        tunnel_profile,
        endpoint=Endpoint(DEFAULT_ENDPOINT, postgres_tls.port),
        sslmode="verify-full",
        sslrootcert=postgres_tls.ca_path,
    )
    with open_tunnel(tunnel_profile, local_port=0) as tunnel:
        assert tunnel.local_port is not None
        yield user_profile, tunnel.local_port, postgres_tls


def _psql(
    conninfo: str, password: str, *, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    return subprocess.run(
        [
            "psql",
            "-XAtw",
            conninfo,
            "-c",
            "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
        ],
        capture_output=True,
        text=True,
        env={**base, "PGPASSWORD": password, **(env or {})},  # test-only; tunnelman never does this
        timeout=30,
        check=False,
    )


def test_verify_full_through_the_tunnel(tls_lab: tuple[Profile, int, Postgres]) -> None:
    profile, port, server = tls_lab
    dsn = clients.render("dsn", profile, port).strip()
    assert f"host={DEFAULT_ENDPOINT} hostaddr=127.0.0.1 port={port}" in dsn
    assert "sslmode=verify-full" in dsn
    assert f"sslrootcert={server.ca_path}" in dsn
    ok = _psql(dsn, server.password)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "t"
    # The URI carries hostaddr as a query parameter: same result.
    ok = _psql(clients.render("uri", profile, port).strip(), server.password)
    assert ok.returncode == 0, ok.stderr


def test_verify_full_with_host_127_fails(tls_lab: tuple[Profile, int, Postgres]) -> None:
    profile, port, server = tls_lab
    naive = (
        f"host=127.0.0.1 port={port} dbname={profile.database} user={profile.user} "
        f"sslmode=verify-full sslrootcert={server.ca_path}"
    )
    bad = _psql(naive, server.password)
    assert bad.returncode != 0
    assert "does not match host name" in bad.stderr, bad.stderr


def test_verify_full_via_service_file_and_oneshot_env(
    tls_lab: tuple[Profile, int, Postgres], tmp_path: Path
) -> None:
    """The pg_service entry and the one-shot's child environment carry the same TLS settings."""
    profile, port, server = tls_lab
    service_file = tmp_path / "pg_service.conf"
    client_files.write_service(profile, port, path=service_file)
    ok = _psql("service=lab", server.password, env={"PGSERVICEFILE": str(service_file)})
    assert ok.returncode == 0, ok.stderr
    passfile = tmp_path / "pgpass"
    client_files.write_pgpass(profile, port, server.password, path=passfile)
    env = oneshot.child_env(profile, port, passfile=passfile, base={"PATH": os.environ["PATH"]})
    res = subprocess.run(
        ["psql", "-XAtw", "-c", "select ssl from pg_stat_ssl where pid = pg_backend_pid()"],
        capture_output=True, text=True, env=env, timeout=30, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr  # the password matched via host=<endpoint> in .pgpass
    assert res.stdout.strip() == "t"


def test_oneshot_run_with_verify_full(tls_lab: tuple[Profile, int, Postgres]) -> None:
    """oneshot.run reusing the tunnel (as with the agent's): temp PGPASSFILE keyed by the
    endpoint name, PGHOSTADDR=127.0.0.1, certificate checked."""
    profile, port, server = tls_lab
    login = Login(profile.user, server.password, "keyring")
    assert oneshot.run(profile, ["psql", "-XAtw", "-c", "select 1"], login, port=port) == 0
