"""The `tunnelman demo` sandbox: bastion + database + a temporary profile, and their clean-up.

Called by `tunnelman.cli.cmd_demo` (and tests). `Sandbox.start()` starts a private PostgreSQL
(`tunnelman.demo.database`) and an in-process bastion (`tunnelman.demo.bastion`) that routes the
endpoint `db.sandbox.invalid:5432` to the database's Unix socket (or, without Unix sockets, or
with `tcp=True` / `$TUNNELMAN_DEMO_TCP=1`, to its 127.0.0.1 port), writes a fresh user key and a
known_hosts holding the bastion's key into a private 0700 directory, and adds a profile (`demo`,
else `demo-2`, … when the user already has one) to the user's own profile file with
`save_profile`, which keeps their comments. `close()` undoes all of it, in reverse, and is
idempotent; the CLI calls it on exit, Ctrl-C and SIGTERM.

The database password: random per run, never in the profile file. The profile says
`password = "none"` ("libpq finds it itself"), and the sandbox adds one marked block to libpq's
own password file (`$PGPASSFILE`, else `~/.pgpass`, kept 0600) for host 127.0.0.1/localhost, any
port, database `geo` and the sandbox's own role (`demo`, never `postgres`, so the line matches no
other database of the user). That is what lets `tunnelman psql demo` work from another terminal
on a machine without a usable keyring; the block is removed on exit. A keyring would have been
the production path, but a fresh machine often has no Secret Service.

The private directory is made in the temp dir, or in /tmp when that is too long for a socket
path (macOS's per-user $TMPDIR: sun_path holds 104 bytes there).

A demo that died without cleaning up (SIGKILL, a crash) leaves a profile whose description names
its pid; the next demo removes that profile, its private directory and its password block.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import tempfile
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from tunnelman.core import profiles as prof
from tunnelman.core.errors import ConfigError
from tunnelman.core.files import atomic_write
from tunnelman.core.platform import paths, programs
from tunnelman.demo import DemoError
from tunnelman.demo.bastion import InprocBastion, generate_key
from tunnelman.demo.database import Binaries, SandboxDatabase, find_binaries

__all__ = [
    "DESCRIPTION_PREFIX",
    "ENDPOINT_HOST",
    "Sandbox",
    "SandboxInfo",
    "demo_pid",
    "pgpass_path",
]

DESCRIPTION_PREFIX = "tunnelman demo sandbox"
ENDPOINT_HOST = "db.sandbox.invalid"  # .invalid never resolves: only the bastion knows it
ENDPOINT_PORT = 5432
DATABASE = "geo"
BASTION_USER = "demo"
WORKDIR_PREFIX = "tunnelman-demo-"
_PID_RE = re.compile(rf"^{re.escape(DESCRIPTION_PREFIX)} \(pid (\d+)\b")
_BLOCK_BEGIN = "# tunnelman demo {pid}: begin (removed when the demo exits)"
_BLOCK_END = "# tunnelman demo {pid}: end"
_BLOCK_RE = re.compile(r"^# tunnelman demo (\d+): (begin|end)\b")
ENV_TCP = "TUNNELMAN_DEMO_TCP"
"""Set to 1 to make the sandbox database listen on loopback TCP even where Unix sockets exist."""
# The workdir's name plus `/pg/.s.PGSQL.5432.lock` (mkdtemp adds 8 random characters).
_SOCKET_ROOM = len(f"/{WORKDIR_PREFIX}4194304-abcdefgh/pg/.s.PGSQL.5432.lock")

Progress = Callable[[str], None]


# ----------------------------------------------------------------------------- stale runs


def demo_pid(profile: prof.Profile) -> int | None:
    """The pid of the demo that wrote this profile, or None when it is not a demo profile."""
    match = _PID_RE.match(profile.description)
    return int(match.group(1)) if match else None


def _alive(pid: int) -> bool:
    """Whether a demo process `pid` still runs (a reused pid that is not tunnelman counts dead)."""
    if pid == os.getpid():
        return True
    if not programs.pid_alive(pid):
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():
        with contextlib.suppress(OSError):
            return b"tunnelman" in cmdline.read_bytes()
    return True


def _remove_workdir(path: Path | None) -> None:
    """Remove a sandbox directory, but only one that looks like ours."""
    if path is None or not path.name.startswith(WORKDIR_PREFIX) or not path.is_dir():
        return
    shutil.rmtree(path, ignore_errors=True)


def _workdir_bases() -> list[Path]:
    """Where sandbox directories are made: the temp dir, or a shorter one for socket paths."""
    short = paths.socket_safe_tempdir(_SOCKET_ROOM)
    bases = [Path(tempfile.gettempdir())]
    if short is not None and Path(short) not in bases:
        bases.append(Path(short))
    return bases


def _ours(path: Path) -> bool:
    getuid = getattr(os, "getuid", None)  # Windows: the per-user temp dir is ours already
    return getuid is None or path.stat().st_uid == getuid()


def _stale_workdirs() -> list[Path]:
    """Sandbox directories in the temp dir left by dead demos of this user."""
    out: list[Path] = []
    for base in _workdir_bases():
        with contextlib.suppress(OSError):
            for path in base.glob(f"{WORKDIR_PREFIX}*"):
                match = re.match(rf"{re.escape(WORKDIR_PREFIX)}(\d+)-", path.name)
                with contextlib.suppress(OSError):
                    if match and _ours(path) and not _alive(int(match.group(1))):
                        out.append(path)
    return out


# ----------------------------------------------------------------------------- libpq's passfile


def pgpass_path() -> Path:
    """The password file libpq reads: `$PGPASSFILE`, else ~/.pgpass (%APPDATA% on Windows)."""
    return paths.pgpass_file()


def _without_blocks(text: str, drop: Callable[[int], bool]) -> str:
    """`text` without the demo blocks whose pid `drop` says to remove."""
    kept: list[str] = []
    skipping = False
    for line in text.splitlines(keepends=True):
        match = _BLOCK_RE.match(line)
        if match and match.group(2) == "begin" and drop(int(match.group(1))):
            skipping = True
            continue
        if skipping:
            if match and match.group(2) == "end":
                skipping = False
            continue
        kept.append(line)
    return "".join(kept)


def _rewrite_pgpass(path: Path, drop: Callable[[int], bool], add: str = "") -> None:
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        text = ""
    new = _without_blocks(text, drop)
    if add:
        if new and not new.endswith("\n"):
            new += "\n"
        new += add
    if new == text:
        return
    if not new.strip():
        path.unlink(missing_ok=True)
        return
    atomic_write(path, new, mode=0o600)  # libpq ignores a passfile others can read


# ----------------------------------------------------------------------------- the sandbox


@dataclass(frozen=True)
class SandboxInfo:
    """What a running sandbox offers, for the CLI to print."""

    profile: prof.Profile
    config_path: Path
    workdir: Path
    bastion_port: int
    binaries: Binaries
    server_version: str
    postgis_version: str | None
    password: str
    pgpass: Path


class Sandbox:
    """A bastion, a database and a temporary profile. Use as a context manager, or start/close.

    `config`: the profile file (already resolved from --config / $TUNNELMAN_CONFIG / default).
    `postgres`: auto | system | embedded | a bin directory (else `$TUNNELMAN_DEMO_POSTGRES`).
    `local_port`: written into the profile (the TUI's tunnel then uses it).
    `tcp`: the database listens on 127.0.0.1 at a random port instead of a Unix socket; default
    where Unix sockets are missing (Windows) or when `$TUNNELMAN_DEMO_TCP` is 1.
    """

    def __init__(
        self,
        config: Path,
        *,
        progress: Progress | None = None,
        postgres: str | None = None,
        local_port: int | None = None,
        tcp: bool | None = None,
    ) -> None:
        self.config = config
        if tcp is None:
            tcp = os.environ.get(ENV_TCP, "") == "1" or not paths.unix_sockets()
        self.tcp = tcp
        self.progress: Progress = progress or (lambda _text: None)
        self.postgres = postgres
        self.local_port = local_port
        self.name: str | None = None
        self.info: SandboxInfo | None = None
        self.workdir: Path | None = None
        self.database: SandboxDatabase | None = None
        self.bastion: InprocBastion | None = None
        self._profile_saved = False
        self._pgpass: Path | None = None
        self._config_before: str | None = None
        self._closed = False

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -------------------------------------------------------------- start

    def start(self) -> SandboxInfo:
        """Start everything; on any failure undo what was done and raise."""
        try:
            return self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> SandboxInfo:
        self._clean_stale()
        name = self._choose_name()
        binaries = find_binaries(self.postgres)
        self.workdir = Path(
            tempfile.mkdtemp(
                prefix=f"{WORKDIR_PREFIX}{os.getpid()}-",
                dir=None if self.tcp else paths.socket_safe_tempdir(_SOCKET_ROOM),
            )
        )
        geteuid = getattr(os, "geteuid", None)
        if geteuid is not None and geteuid() == 0:
            # The server runs as another account (PostgreSQL refuses root): let it reach its
            # own subdirectory; everything else in here stays 0600.
            self.workdir.chmod(0o711)
        password = secrets.token_urlsafe(24)
        role = name.replace("-", "_").replace(".", "_")

        self.progress(f"starting a sandbox database ({binaries.describe()})…")
        self.database = SandboxDatabase(
            self.workdir / "pg",
            binaries,
            password=password,
            user=role,
            database=DATABASE,
            tcp=self.tcp,
        )
        self.database.start()
        if self.tcp:
            self.progress(
                f"the sandbox database listens on {self.database.describe_listener()}: "
                + ("no Unix sockets on this system" if not paths.unix_sockets() else f"{ENV_TCP}=1")
                + "; its password is made for this run"
            )
        if self.database.postgis_version is None:
            self.progress(
                "PostGIS not available in this sandbox: public.places has lon/lat columns"
                + (
                    " (install postgresql-NN-postgis-3 for geometry)"
                    if binaries.source == "system"
                    else ""
                )
            )

        user_key = generate_key()
        self.bastion = InprocBastion(
            user_key.pkey,
            routes={(ENDPOINT_HOST, ENDPOINT_PORT): self.database.target},
            username=BASTION_USER,
        ).start()
        self.progress(f"starting a sandbox bastion on 127.0.0.1:{self.bastion.port}…")

        key_path = self.workdir / "id_ed25519"
        _write_private(key_path, user_key.private_text)
        _write_private(key_path.with_name("id_ed25519.pub"), user_key.public_line("demo") + "\n")
        known_hosts = self.workdir / "known_hosts"
        _write_private(known_hosts, self.bastion.host_key_line() + "\n")

        self._pgpass = pgpass_path()
        block = "".join(
            [
                _BLOCK_BEGIN.format(pid=os.getpid()) + "\n",
                f"127.0.0.1:*:{DATABASE}:{role}:{password}\n",
                f"localhost:*:{DATABASE}:{role}:{password}\n",
                _BLOCK_END.format(pid=os.getpid()) + "\n",
            ]
        )
        _rewrite_pgpass(self._pgpass, lambda pid: pid == os.getpid(), add=block)

        values: dict[str, object] = {
            "description": f"{DESCRIPTION_PREFIX} (pid {os.getpid()}; removed when the demo exits)",
            "bastion": f"{BASTION_USER}@127.0.0.1:{self.bastion.port}",
            "identity_file": str(key_path),
            "known_hosts": str(known_hosts),
            "endpoint": ENDPOINT_HOST,
            "database": DATABASE,
            "user": role,
            "password": "none",
            "sslmode": "disable",
        }
        if self.local_port is not None:
            values["local_port"] = self.local_port
        if _defaults(self.config).get("instance_connect") is True:
            values["instance_connect"] = False  # the sandbox's bastion is not an EC2 instance
        try:
            self._config_before = self.config.read_text("utf-8")
        except FileNotFoundError:
            self._config_before = None
        prof.save_profile(self.config, name, values)
        self._profile_saved = True
        self.name = name
        profile = prof.load(self.config).get(name)
        self.info = SandboxInfo(
            profile=profile,
            config_path=self.config,
            workdir=self.workdir,
            bastion_port=self.bastion.port,
            binaries=binaries,
            server_version=self.database.server_version or binaries.version,
            postgis_version=self.database.postgis_version,
            password=password,
            pgpass=self._pgpass,
        )
        return self.info

    def _clean_stale(self) -> None:
        """Remove what dead demos left: profiles, directories, password blocks."""
        sets = prof.load(self.config)
        for profile in list(sets):
            pid = demo_pid(profile)
            if pid is None or _alive(pid):
                continue
            with contextlib.suppress(ConfigError):
                prof.delete_profile(self.config, profile.name)
                # tomlkit leaves the blank line that preceded the table at the end of the file.
                text = self.config.read_text("utf-8")
                if text.endswith("\n\n"):
                    atomic_write(self.config, text.rstrip("\n") + "\n" if text.strip() else "")
            if profile.identity_file is not None:
                _remove_workdir(profile.identity_file.parent)
            self.progress(f"removed profile '{profile.name}' left by a demo that did not exit")
        for path in _stale_workdirs():
            _remove_workdir(path)
        with contextlib.suppress(OSError):
            _rewrite_pgpass(pgpass_path(), lambda pid: not _alive(pid))

    def _choose_name(self) -> str:
        sets = prof.load(self.config)
        for n in range(1, 100):
            name = "demo" if n == 1 else f"demo-{n}"
            existing = sets.profiles.get(name)
            if existing is None:
                if n > 1:
                    first = sets.profiles["demo"]
                    why = "another demo is running" if demo_pid(first) else "you have one"
                    self.progress(f"a profile 'demo' exists ({why}): this sandbox is '{name}'")
                return name
        raise DemoError(
            f"{self.config}: profiles demo … demo-99 all exist", hint="remove some of them"
        )

    # -------------------------------------------------------------- close

    def _restore_layout(self) -> None:
        """Undo the blank lines tomlkit leaves where the profile was, when nothing else changed.

        A file the demo created is removed when only whitespace is left in it.
        """
        before = self._config_before
        now = self.config.read_text("utf-8")
        if before is None:
            if not now.strip():
                self.config.unlink()
            return
        if now != before and now.rstrip() == before.rstrip():
            atomic_write(self.config, before)

    def close(self) -> None:
        """Remove the profile and password block, stop bastion and database, delete the files."""
        if self._closed:
            return
        self._closed = True
        errors: list[str] = []
        if self._profile_saved and self.name is not None:
            try:
                prof.delete_profile(self.config, self.name)
                self._restore_layout()
            except Exception as exc:  # keep cleaning up; report at the end
                errors.append(f"could not remove profile '{self.name}' from {self.config}: {exc}")
            self._profile_saved = False
        if self._pgpass is not None:
            try:
                _rewrite_pgpass(self._pgpass, lambda pid: pid == os.getpid())
            except OSError as exc:
                errors.append(f"could not clean {self._pgpass}: {exc}")
        if self.bastion is not None:
            self.bastion.stop()
        if self.database is not None:
            self.database.stop()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            if self.workdir.exists():
                errors.append(f"could not remove {self.workdir}")
        if errors:
            raise DemoError("; ".join(errors))


def _defaults(config: Path) -> dict[str, object]:
    """The file's [defaults] table: the demo profile inherits it, so some keys need overriding."""
    try:
        data = tomllib.loads(config.read_text("utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return {}
    table = data.get("defaults")
    return table if isinstance(table, dict) else {}


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
