"""Shared pytest fixtures: the integration lab (real sshd, PostgreSQL/PostGIS, moto, Secret
Service, network namespaces) and a private HOME for every test that wants one.

Every test is marked ``unit``, ``cli`` or ``lab`` here at collection
(``pytest_collection_modifyitems``): ``lab`` when it uses a lab fixture (``LAB_FIXTURES``,
directly or through another fixture), lives in a module that starts real processes or drives the
whole TUI (``LAB_MODULES``, ``test_tui_*``) or carries a long-run marker (``LAB_MARKERS``: lab,
slow, fuzz, windows); else ``cli`` when it runs the tunnelman CLI in a subprocess (the
``run_cli`` fixture: half a second an interpreter); ``unit`` otherwise.  ``pytest -m unit`` runs
the quick in-process ones, and a ``unit`` test that starts a lab program or the CLI anyway
(sshd, PostgreSQL, tmux, …: ``LAB_PROGRAMS``, watched by an audit hook) fails saying what to use.

Session-scoped servers are shared by all tests: do not stop, restart or re-key them; ask
``make_sshd`` / ``make_postgres`` for a private one instead.  A service that cannot be
started skips the test locally and fails it in CI (``tests.lab.need``).

Under pytest-xdist (``-n 2``) every worker has its own session servers, temp dirs and network
namespaces (names and subnets are per process), and its own Secret Service (``PrivateKeyring``,
started in ``pytest_configure``): the tests store fixed keyring names.  A module whose
module-scoped fixture is expensive (``MODULE_GROUPS``) stays on one worker (``--dist
loadgroup``) so the fixture runs once.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.cli import RunCli, run_cli
from tests.lab import in_ci, long_run, need
from tests.lab.keyring_env import PrivateKeyring, keyring_available, under_with_keyring
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


# -- test kinds: unit, cli or lab --------------------------------------------------------------

# Fixtures that start (or need) a real service; a test using one, even through another
# fixture, is a lab test.
LAB_FIXTURES = frozenset(
    {
        "sshd", "make_sshd", "postgres", "make_postgres", "postgres_tls", "lab_profile",
        "moto", "aws_env", "keyring_backend", "netns_pair", "agent_home",
        "tmux", "pty_run", "ssh_agent",
    }
)  # fmt: skip

# Modules whose tests start real processes (the agent, the demo's database, interpreters
# timing their imports, wine) without going through a fixture above.  Every ``test_tui_*`` /
# ``test_*_tui`` module is lab too: it drives the whole app (Pilot or tmux), seconds a test.
LAB_MODULES = frozenset(
    {
        "test_agent", "test_bastion_closes", "test_bench_smoke", "test_demo", "test_demo_tcp",
        "test_no_boto3", "test_windows_smoke",
    }
)  # fmt: skip

# Modules with an expensive module-scoped fixture: under `--dist loadgroup` all their tests go
# to one worker (the Windows prefix takes ~40 s to make; the others start servers).
MODULE_GROUPS = frozenset(
    {
        "test_windows_smoke", "test_db_ops", "test_query", "test_aws", "test_aws_params",
        "test_cli_aws", "test_known_hosts",
    }
)  # fmt: skip

# Modules running the demo sandbox in the test process: a demo sweeps the temp dir for
# `tunnelman-demo-PID-*` dirs whose PID is not a tunnelman process, and another worker's pytest
# is not, so its running sandbox would be deleted. One worker runs them all, one after another.
DEMO_MODULES = frozenset({"test_demo", "test_demo_tcp", "test_demo_tui"})

# Long runs have markers of their own; none of them belongs in the quick `-m unit` run.
LAB_MARKERS = ("lab", "slow", "fuzz", "windows")

# Programs only the lab starts (and the agent, `python -m tunnelman.agent`): a unit test that
# runs one is misfiled.
LAB_PROGRAMS = frozenset(
    {
        "sshd", "initdb", "pg_ctl", "postgres", "gnome-keyring-daemon", "dbus-run-session",
        "dbus-daemon", "tmux", "wine", "wine64", "wineserver", "tunnelman.agent",
    }
)  # fmt: skip


# Through runuser, su, ip netns exec, …: these are lab programs wherever they stand in argv;
# "postgres" only as the program itself (it is also a user name on many command lines).
_LAB_ANYWHERE = LAB_PROGRAMS - {"postgres"}


def pytest_configure(config: pytest.Config) -> None:
    sys.addaudithook(_refuse_lab_programs)
    if os.environ.get("PYTEST_XDIST_WORKER") and under_with_keyring():
        _private_keyring(config)


def _private_keyring(config: pytest.Config) -> None:
    """This xdist worker's own Secret Service, for it and every process it starts."""
    keyring = PrivateKeyring()
    try:
        keyring.start()
    except _LAB_ERRORS:
        keyring.close()
        # No shared fallback (the workers would overwrite each other's entries): the keyring
        # tests then skip, or fail under CI (`keyring_backend`).
        os.environ.pop("DBUS_SESSION_BUS_ADDRESS", None)
        return
    os.environ.update(keyring.env)
    config.add_cleanup(keyring.close)


def _kind(item: pytest.Item) -> pytest.MarkDecorator:
    if _is_lab(item):
        return pytest.mark.lab
    if "run_cli" in getattr(item, "fixturenames", ()):
        return pytest.mark.cli
    return pytest.mark.unit


def _is_lab(item: pytest.Item) -> bool:
    if any(item.get_closest_marker(name) for name in LAB_MARKERS):
        return True
    if LAB_FIXTURES.intersection(getattr(item, "fixturenames", ())):
        return True
    module = item.path.stem
    return module in LAB_MODULES or "tui" in module.split("_")


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by these markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            if item.path.stem in MODULE_GROUPS:
                item.add_marker(pytest.mark.xdist_group(item.path.stem))
            elif item.path.stem in DEMO_MODULES:
                item.add_marker(pytest.mark.xdist_group("demo"))
        if item.get_closest_marker("lab") is not None:
            continue
        item.add_marker(_kind(item))
    if long_run():
        return
    # Tests marked `long` run in the documented longer run only (TUNNELMAN_LONG=1): deselected,
    # and counted as such in pytest's summary line, so the CI budget stays about 20 minutes.
    long = [item for item in items if item.get_closest_marker("long") is not None]
    if long:
        config.hook.pytest_deselected(items=long)
        items[:] = [item for item in items if item.get_closest_marker("long") is None]


_unit_running: list[str] = []  # the nodeid of the unit test being set up or run, if any


def _program(argv: object) -> str | None:
    """The lab program ``argv`` (a Popen args) runs, if any."""
    if isinstance(argv, str | bytes | os.PathLike):
        argv = [argv]
    if not isinstance(argv, Sequence):
        return None
    names = [
        os.path.basename(os.fsdecode(a)) for a in argv if isinstance(a, str | bytes | os.PathLike)
    ]
    if names and names[0] in LAB_PROGRAMS:
        return names[0]
    return next((name for name in names if name in _LAB_ANYWHERE), None)


def _runs_the_cli(argv: object) -> bool:
    """``python -m tunnelman …``: what the ``run_cli`` fixture runs."""
    if not isinstance(argv, list | tuple):
        return False
    return any(pair == ("-m", "tunnelman") for pair in itertools.pairwise(argv))


def _refuse_lab_programs(event: str, args: tuple[object, ...]) -> None:
    if event != "subprocess.Popen" or not _unit_running:
        return
    if _runs_the_cli(args[1]):
        pytest.fail(
            f"{_unit_running[0]} is marked unit but runs the tunnelman CLI: take the `run_cli` "
            "fixture (tests/cli.py), which marks it cli",
            pytrace=False,
        )
    program = _program(args[1])
    if program is not None:
        pytest.fail(
            f"{_unit_running[0]} is marked unit but starts {program}: use a lab fixture "
            f"({', '.join(sorted(LAB_FIXTURES))}) or mark it lab (tests/conftest.py)",
            pytrace=False,
        )


@contextlib.contextmanager
def _watching(item: pytest.Item) -> Iterator[None]:
    # Setup and call only: a session fixture's teardown (pg_ctl stop) may run in the teardown
    # of whichever test happens to be last.
    if item.get_closest_marker("unit") is None:
        yield
        return
    _unit_running.append(item.nodeid)
    try:
        yield
    finally:
        _unit_running.clear()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    with _watching(item):
        yield


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    with _watching(item):
        yield


# -- the CLI -----------------------------------------------------------------------------------


@pytest.fixture(name="run_cli")
def run_cli_fixture() -> RunCli:
    """``tunnelman ARGS`` in a subprocess, as a user runs it (`tests.cli.run_cli`); a test taking
    this fixture is a ``cli`` test."""
    return run_cli


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
