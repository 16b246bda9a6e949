"""Shared pytest fixtures: the integration lab (real sshd, PostgreSQL/PostGIS, moto, Secret
Service, network namespaces) and a private HOME for every test that wants one.

Session-scoped servers are shared by all tests: do not stop, restart or re-key them; ask
``make_sshd`` / ``make_postgres`` for a private one instead.  A service that cannot be
started skips the test locally and fails it in CI (``tests.lab.need``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.lab import in_ci, need
from tests.lab.keyring_env import keyring_available
from tests.lab.moto_server import MotoServer, moto_missing
from tests.lab.netns import NetnsPair, netns_missing
from tests.lab.postgres import DEFAULT_ENDPOINT, Postgres, postgres_missing
from tests.lab.sshd import Sshd, sshd_missing
from tests.lab.toml_profile import write_profile

__all__ = ["LabProfile", "need", "write_profile"]

_LAB_ERRORS = (RuntimeError, OSError, subprocess.SubprocessError)

# Environment a test must never inherit from the developer's shell.
_SCRUBBED_ENV = (
    "SSH_AUTH_SOCK",
    "PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSWORD", "PGPASSFILE",
    "PGSERVICE", "PGSERVICEFILE", "PGSSLMODE", "PGSSLROOTCERT", "PGOPTIONS",
    "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_REGION", "AWS_DEFAULT_REGION",
)  # fmt: skip


def pytest_report_header(config: pytest.Config) -> str:
    mode = "CI: a missing lab service FAILS" if in_ci() else "local: a missing lab service skips"
    return f"tunnelman lab: {mode}"


# -- SSH bastion -------------------------------------------------------------------------------


def _start_sshd(**kwargs: Any) -> Sshd:
    reason = sshd_missing()
    if reason:
        need(reason)
    server = Sshd(**kwargs)
    try:
        server.add_user_key()
        server.start()
    except _LAB_ERRORS as exc:
        server.close()
        need(f"cannot start the lab sshd: {exc}")
    return server


@pytest.fixture(scope="session")
def sshd() -> Iterator[Sshd]:
    """The shared bastion: ``Sshd`` on 127.0.0.1, user key at ``sshd.key_path``."""
    server = _start_sshd()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def make_sshd() -> Iterator[Callable[..., Sshd]]:
    """Factory for private, started ``Sshd``s (kwargs as ``Sshd()``), closed after the test."""
    made: list[Sshd] = []

    def factory(**kwargs: Any) -> Sshd:
        server = _start_sshd(**kwargs)
        made.append(server)
        return server

    yield factory
    for server in made:
        server.close()


# -- PostgreSQL --------------------------------------------------------------------------------


def _start_postgres(**kwargs: Any) -> Postgres:
    reason = postgres_missing(postgis=kwargs.get("postgis", True))
    if reason:
        need(reason)
    server = Postgres(**kwargs)
    try:
        server.start()
    except _LAB_ERRORS as exc:
        server.close()
        need(f"cannot start the lab PostgreSQL: {exc}")
    return server


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """The shared database: PostGIS ``geo`` on 127.0.0.1, SCRAM password ``postgres.password``."""
    server = _start_postgres()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def postgres_tls() -> Iterator[Postgres]:
    """Like ``postgres`` with TLS: certificate for ``postgres_tls.endpoint_name`` (a fake
    Aurora endpoint) signed by ``postgres_tls.ca_path``."""
    server = _start_postgres(ssl=True, ssl_names=[DEFAULT_ENDPOINT])
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def make_postgres() -> Iterator[Callable[..., Postgres]]:
    """Factory for private, started ``Postgres``es (kwargs as ``Postgres()``; ~1.5 s each)."""
    made: list[Postgres] = []

    def factory(**kwargs: Any) -> Postgres:
        server = _start_postgres(**kwargs)
        made.append(server)
        return server

    yield factory
    for server in made:
        server.close()


# -- AWS, keyring, namespaces ------------------------------------------------------------------


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoServer]:
    """The shared moto server (``moto.url``, ``moto.env()``, ``moto.reset()``)."""
    reason = moto_missing()
    if reason:
        need(reason)
    server = MotoServer()
    try:
        server.start()
    except _LAB_ERRORS as exc:
        need(f"cannot start moto: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def aws_env(moto: MotoServer, tmp_home: Path, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    """A reset moto server with boto3 pointed at it by environment variables."""
    moto.reset()
    for key, value in moto.env().items():
        monkeypatch.setenv(key, value)
    return moto


@pytest.fixture(scope="session")
def keyring_backend() -> Any:
    """The ``keyring`` backend, guaranteed to be a working Secret Service (tests run under
    ``scripts/with-keyring``); skip locally / fail in CI otherwise."""
    reason = keyring_available()
    if reason:
        need(reason)
    import keyring

    return keyring.get_keyring()


@pytest.fixture
def netns_pair() -> Iterator[NetnsPair]:
    """Namespaces ``bastion`` + ``db`` with an uplink from here (see tests/lab/netns.py)."""
    reason = netns_missing()
    if reason:
        need(reason)
    pair = NetnsPair()
    try:
        pair.create()
    except _LAB_ERRORS as exc:
        need(f"cannot create network namespaces: {exc}")
    try:
        yield pair
    finally:
        pair.close()


# -- a private HOME and profiles ---------------------------------------------------------------


@pytest.fixture
def tmp_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh HOME; XDG_* dirs and ``TUNNELMAN_CONFIG`` point inside it.

    ``TUNNELMAN_CONFIG`` = ``<home>/.config/tunnelman/profiles.toml`` (not created).
    ``XDG_RUNTIME_DIR`` is a short 0700 dir under the system temp dir (Unix socket paths
    are limited to 107 bytes).  ``SSH_AUTH_SOCK``, ``PG*`` and ``AWS_*`` are unset.
    """
    home = tmp_path / "home"
    dirs = {
        "XDG_CONFIG_HOME": home / ".config",
        "XDG_STATE_HOME": home / ".local" / "state",
        "XDG_DATA_HOME": home / ".local" / "share",
        "XDG_CACHE_HOME": home / ".cache",
    }
    for d in dirs.values():
        d.mkdir(parents=True)
    (home / ".ssh").mkdir(mode=0o700)
    runtime = Path(tempfile.mkdtemp(prefix="tm-run-"))
    runtime.chmod(0o700)
    for key in _SCRUBBED_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(home))
    for key, d in dirs.items():
        monkeypatch.setenv(key, str(d))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv(
        "TUNNELMAN_CONFIG", str(dirs["XDG_CONFIG_HOME"] / "tunnelman" / "profiles.toml")
    )
    try:
        yield home
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


@dataclass
class LabProfile:
    """The profile ``lab_profile`` wrote; ``write(**overrides)`` rewrites it."""

    name: str
    config: Path
    identity_file: Path
    known_hosts: Path
    sshd: Sshd
    postgres: Postgres
    keys: dict[str, Any]

    @property
    def password(self) -> str:
        return self.postgres.password

    def write(self, **overrides: Any) -> Path:
        """Rewrite the profile with ``overrides`` (``None`` removes a key)."""
        self.keys.update(overrides)
        return write_profile(self.config, self.name, **self.keys)


@pytest.fixture
def lab_profile(tmp_home: Path, sshd: Sshd, postgres: Postgres) -> LabProfile:
    """Profile ``lab`` in ``$TUNNELMAN_CONFIG``: bastion = the ``sshd`` fixture, endpoint =
    the ``postgres`` fixture, key copied to ``~/.ssh/id_lab`` (0600), ``~/.ssh/known_hosts``
    holding the bastion's host key.  No ``password`` key (the default, keyring): pass one to
    ``write()``."""
    assert sshd.key_path is not None
    ssh_dir = tmp_home / ".ssh"
    key = ssh_dir / "id_lab"
    shutil.copyfile(sshd.key_path, key)
    key.chmod(0o600)
    known_hosts = ssh_dir / "known_hosts"
    known_hosts.write_text(sshd.host_key_line() + "\n")
    known_hosts.chmod(0o600)
    profile = LabProfile(
        name="lab",
        config=Path(os.environ["TUNNELMAN_CONFIG"]),
        identity_file=key,
        known_hosts=known_hosts,
        sshd=sshd,
        postgres=postgres,
        keys={
            "description": "tunnelman test lab: loopback sshd + PostGIS",
            "bastion": sshd.destination,
            "identity_file": key,
            "known_hosts": known_hosts,
            "endpoint": f"127.0.0.1:{postgres.port}",
            "database": postgres.database,
            "user": postgres.user,
        },
    )
    profile.write()
    return profile
