"""core.credentials: the real keyring (scripts/with-keyring), prompts, a machine with no keyring,
and the AWS sources (Secrets Manager from a moto server over HTTP, IAM tokens) through a tunnel."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.cli import RunCli
from tests.conftest import LabProfile
from tests.lab.moto_server import MotoServer
from tests.lab.postgres import Postgres
from tunnelman.core import client_files, credentials, oneshot
from tunnelman.core import profiles as prof
from tunnelman.core.errors import CredentialError
from tunnelman.core.profiles import Endpoint, Profile
from tunnelman.core.tunnel import open_tunnel

FAKE_ENDPOINT = "database-1.cluster-abc.us-east-2.rds.amazonaws.com"


def _profile(**kw: Any) -> Profile:
    values: dict[str, Any] = {
        "name": f"t-{uuid.uuid4().hex[:8]}",
        "endpoint": Endpoint(FAKE_ENDPOINT),
        "database": "geo",
        "user": "postgres",
    }
    return Profile(**{**values, **kw})


# ----------------------------------------------------------------------------- keyring (real)


def test_keyring_round_trip_and_resolve_login(keyring_backend: Any) -> None:
    profile = _profile()
    assert credentials.keyring_get(profile.name) is None
    credentials.keyring_set(profile.name, "pw:1")
    try:
        assert credentials.keyring_get(profile.name) == "pw:1"
        login = credentials.resolve_login(profile)
        assert (login.user, login.password, login.source) == ("postgres", "pw:1", "keyring")
        assert "pw:1" not in repr(login)
    finally:
        assert credentials.keyring_delete(profile.name) is True
    assert credentials.keyring_delete(profile.name) is False


def test_keyring_absent_asks_and_offers_to_save(keyring_backend: Any) -> None:
    profile = _profile()
    asked: list[str] = []

    def prompt(text: str) -> str:
        asked.append(text)
        return "typed"

    try:
        login = credentials.resolve_login(profile, prompt=prompt, offer_save=lambda _pw: True)
        assert login.password == "typed"
        assert len(asked) == 1
        assert profile.name in asked[0]
        assert credentials.keyring_get(profile.name) == "typed"
    finally:
        credentials.keyring_delete(profile.name)
    login = credentials.resolve_login(
        profile, prompt=lambda _t: "once", offer_save=lambda _pw: False
    )
    assert login.password == "once"
    assert credentials.keyring_get(profile.name) is None


def test_keyring_absent_without_a_terminal(keyring_backend: Any) -> None:
    profile = _profile()
    with pytest.raises(CredentialError) as info:
        credentials.resolve_login(profile)
    assert f"tunnelman password set {profile.name}" in str(info.value)
    assert 'password = "prompt"' in str(info.value)


def test_prompt_and_none_sources() -> None:
    profile = _profile(password="prompt")
    with pytest.raises(CredentialError, match="no terminal"):
        credentials.resolve_login(profile)
    assert credentials.resolve_login(profile, prompt=lambda _t: "pw").password == "pw"
    with pytest.raises(CredentialError, match="no password given"):
        credentials.resolve_login(profile, prompt=lambda _t: None)
    none = credentials.resolve_login(_profile(password="none"))
    assert (none.user, none.password) == ("postgres", None)


# A real environment without any Secret Service: the session bus address points nowhere, so the
# SecretService backend cannot reach a daemon and keyring falls back to its "fail" backend (the
# second variant also forces that backend, as on a machine with no keyring backend installed).
NO_KEYRING_ENVS = {
    "no Secret Service on D-Bus": {"DBUS_SESSION_BUS_ADDRESS": "unix:path=/nonexistent"},
    "no backend at all": {
        "DBUS_SESSION_BUS_ADDRESS": "unix:path=/nonexistent",
        "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring",
    },
}


@pytest.mark.parametrize("variant", list(NO_KEYRING_ENVS))
def test_no_usable_keyring_names_the_way_out(run_cli: RunCli, tmp_home: Path, variant: str) -> None:
    prof.save_profile(
        prof.config_path(None), "prod", {"endpoint": FAKE_ENDPOINT, "bastion": "u@b.invalid"}
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHON_KEYRING_BACKEND"}
    env.update(NO_KEYRING_ENVS[variant])
    res = run_cli("psql", "prod", "-c", "select 1", env=env)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "no usable OS keyring" in lines[0]
    assert 'password = "prompt"' in lines[0]
    res = run_cli("password", "set", "prod", "--stdin", env=env, input="pw\n")
    assert res.returncode == 1
    assert 'password = "prompt"' in res.stderr
    assert "Traceback" not in res.stderr


def test_locked_keyring_message() -> None:
    """A locked collection: the message mapping only (locking the shared lab keyring would
    break the other tests in the session, so this one does not lock a real one)."""
    import keyring.errors

    exc = credentials._keyring_error(
        "read the password of 'prod'", keyring.errors.KeyringLocked("locked")
    )
    assert "the keyring is locked" in str(exc)
    assert 'password = "prompt"' in str(exc)


# ----------------------------------------------------------------------------- AWS sources


def test_secretsmanager_login_from_moto(aws_env: MotoServer) -> None:
    import boto3

    sm = boto3.client("secretsmanager", region_name=aws_env.region)
    arn = sm.create_secret(
        Name="geo-admin", SecretString='{"username": "gis_admin", "password": "s3:cr\\\\et"}'
    )["ARN"]
    profile = _profile(password="secretsmanager", secret=arn, region=aws_env.region)
    login = credentials.resolve_login(profile)
    assert (login.user, login.password, login.source) == (
        "gis_admin",
        "s3:cr\\et",
        "secretsmanager",
    )
    # The old API keeps working and returns just the password.
    assert credentials.resolve_password(profile) == "s3:cr\\et"


def test_iam_token_is_signed_for_the_endpoint(aws_env: MotoServer) -> None:
    profile = _profile(password="iam", user="iam_user", region=aws_env.region, sslmode="prefer")
    login = credentials.resolve_login(profile)
    assert login.user == "iam_user"
    assert login.password is not None
    url = urlsplit("https://" + login.password)
    assert (url.hostname, url.port) == (FAKE_ENDPOINT, 5432)  # the real endpoint, never 127.0.0.1
    query = parse_qs(url.query)
    assert query["Action"] == ["connect"]
    assert query["DBUser"] == ["iam_user"]
    env = oneshot.child_env(profile, 5433, user=login.user, base={})
    assert env["PGSSLMODE"] == "require"


def test_iam_refuses_a_loopback_endpoint(aws_env: MotoServer) -> None:
    profile = Profile(
        name="x", endpoint=Endpoint("127.0.0.1", 5432), password="iam", region="us-east-2"
    )
    with pytest.raises(CredentialError, match="real endpoint"):
        credentials.resolve_login(profile)


@pytest.fixture
def private_pg(make_postgres: Callable[..., Postgres]) -> Postgres:
    """A private TLS PostgreSQL (roles get created in it; the shared one stays untouched)."""
    return make_postgres(ssl=True, postgis=False)


def _create_role(pg: Postgres, user: str, password: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(pg.socket_dsn(), autocommit=True) as conn:
        conn.execute(
            sql.SQL("create role {} login password {}").format(
                sql.Identifier(user), sql.Literal(password)
            )
        )


def test_aws_logins_reach_the_database_through_the_temp_passfile(
    aws_env: MotoServer, lab_profile: LabProfile, private_pg: Postgres
) -> None:
    """Secrets Manager (user from the secret) and IAM (a long token full of ':') go through the
    one-shot's PGPASSFILE to a real server behind the lab bastion.

    The token is signed for the fake cluster name, which the bastion cannot resolve, so the
    tunnel is opened with a lab profile aimed at 127.0.0.1 and reused (`port=`), as a one-shot
    reuses the agent's tunnel. The server checks the token as a plain (SCRAM) password here.
    """
    import boto3

    lab_profile.write(endpoint=f"127.0.0.1:{private_pg.port}", database="postgres")
    tunnel_profile = prof.load(lab_profile.config).get("lab")
    sm = boto3.client("secretsmanager", region_name=aws_env.region)
    arn = sm.create_secret(
        Name="app", SecretString='{"username": "gis_admin", "password": "a:b\\\\c"}'
    )["ARN"]
    sm_profile = _profile(
        password="secretsmanager",
        secret=arn,
        region=aws_env.region,
        database="postgres",
        user="ignored",
    )
    iam_profile = _profile(
        password="iam", user="iam_user", region=aws_env.region, database="postgres"
    )
    sm_login = credentials.resolve_login(sm_profile)
    iam_login = credentials.resolve_login(iam_profile)
    assert iam_login.password is not None
    _create_role(private_pg, "gis_admin", "a:b\\c")
    _create_role(private_pg, "iam_user", iam_login.password)
    with open_tunnel(tunnel_profile, local_port=0) as tunnel:
        assert tunnel.local_port is not None
        for profile, login, who in (
            (sm_profile, sm_login, "gis_admin"),
            (iam_profile, iam_login, "iam_user"),
        ):
            out = Path(lab_profile.config).parent / "out.txt"
            with out.open("w") as fh:
                code = subprocess.run(
                    [sys.executable, "-c", _RUN, profile.name, str(tunnel.local_port)],
                    input=_encode(profile, login), stdout=fh, stderr=subprocess.PIPE, text=True, timeout=60, check=False,
                )  # fmt: skip
            assert code.returncode == 0, code.stderr
            assert out.read_text().strip() == f"{who} true"


def _encode(profile: Profile, login: credentials.Login) -> str:
    import json

    return json.dumps(
        {
            "profile": prof.profile_to_table(profile),
            "name": profile.name,
            "user": login.user,
            "password": login.password,
        }
    )


# Runs oneshot.run in a child Python (signal handlers need a main thread of its own) with the
# profile and login given on stdin, so no secret is ever in this test's argv either.
_RUN = """
import json, sys
from tunnelman.core import oneshot, profiles
from tunnelman.core.credentials import Login
data = json.load(sys.stdin)
profile = profiles.parse_profiles({"profiles": {data["name"]: data["profile"]}}, "stdin")[data["name"]]
login = Login(data["user"], data["password"], profile.password)
argv = ["psql", "-XAtw", "-c", "select current_user || ' ' || ssl from pg_stat_ssl where pid = pg_backend_pid()"]
sys.exit(oneshot.run(profile, argv, login, port=int(sys.argv[2])))
"""


def test_write_pgpass_for_secretsmanager_uses_the_secrets_user(
    aws_env: MotoServer, tmp_path: Path
) -> None:
    import boto3

    sm = boto3.client("secretsmanager", region_name=aws_env.region)
    arn = sm.create_secret(Name="w", SecretString='{"username": "gis_admin", "password": "pw"}')[
        "ARN"
    ]
    profile = _profile(password="secretsmanager", secret=arn, region=aws_env.region)
    login = credentials.resolve_login(profile)
    path = tmp_path / "pgpass"
    client_files.write_pgpass(profile, 5433, login.password or "", user=login.user, path=path)
    assert path.read_text() == "127.0.0.1:5433:geo:gis_admin:pw\n"
