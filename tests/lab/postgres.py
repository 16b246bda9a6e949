"""A real PostgreSQL + PostGIS server on loopback, playing the Aurora/RDS cluster.

``Postgres`` runs the system PostgreSQL (``/usr/lib/postgresql/<v>/bin``, newest version
with PostGIS installed, or ``$TUNNELMAN_PG_BINDIR``) from a temp dir::

    with Postgres() as pg:
        psycopg.connect(pg.dsn()).execute("select postgis_full_version()")

What is in it: superuser ``postgres`` with password ``pg.password`` (random per server, so a
test can grep logs and argv for it); TCP logins use ``scram-sha-256``; database ``geo`` with
the ``postgis`` extension and ``public.pts (id serial primary key, name text,
geom geometry(Point,4326))`` holding ``PTS_ROWS``.  Unix-socket logins (``pg.socket_dir``)
are ``trust``: that is how the lab itself sets up, also inside a network namespace.

``ssl=True`` adds a throw-away CA (``pg.ca_path``) and a server certificate whose only
subjectAltNames are ``ssl_names`` (default: a fake Aurora cluster endpoint), so
``sslmode=verify-full`` succeeds only with ``host=<that name> hostaddr=127.0.0.1``, exactly
like a client going through a tunnel.  ``require_ssl=True`` refuses non-TLS TCP logins.

initdb refuses to run as root: when euid is 0 every server command runs as the ``postgres``
system user (``runuser -u postgres --``) and the temp dir is chowned to it.  Startup is made
fast (``--no-sync``, ``fsync=off``, small ``shared_buffers``); ``stop()`` is
``pg_ctl stop -m immediate`` and ``close()`` also removes the temp dir.
"""

from __future__ import annotations

import contextlib
import datetime
import glob
import os
import pwd
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from tests.lab import procs
from tests.lab.ports import free_port, wait_port

__all__ = [
    "DEFAULT_ENDPOINT",
    "PTS_ROWS",
    "Postgres",
    "find_bindir",
    "make_ca",
    "make_server_cert",
    "postgres_missing",
]

DEFAULT_ENDPOINT = "database-1.cluster-abc.us-east-2.rds.amazonaws.com"

PTS_ROWS: tuple[tuple[str, float, float], ...] = (
    ("Columbus", -82.9988, 39.9612),
    ("Cleveland", -81.6944, 41.4993),
    ("Cincinnati", -84.5120, 39.1031),
    ("Dayton", -84.1916, 39.7589),
)
"""(name, lon, lat) of the rows in ``geo.public.pts``, in id order."""


def _version_key(bindir: str) -> tuple[int, ...]:
    m = re.search(r"/(\d+(?:\.\d+)*)/bin$", bindir)
    return tuple(int(x) for x in m.group(1).split(".")) if m else (0,)


def _has_postgis(bindir: Path) -> bool:
    version = bindir.parent.name
    return Path(f"/usr/share/postgresql/{version}/extension/postgis.control").exists()


def find_bindir() -> Path | None:
    """The PostgreSQL server bin dir to use: ``$TUNNELMAN_PG_BINDIR``, else the newest
    ``/usr/lib/postgresql/*/bin`` that has PostGIS, else ``pg_config --bindir``."""
    env = os.environ.get("TUNNELMAN_PG_BINDIR")
    if env:
        return Path(env) if (Path(env) / "initdb").exists() else None
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    candidates = [Path(b) for b in found if (Path(b) / "initdb").exists()]
    for b in candidates:
        if _has_postgis(b):
            return b
    if candidates:
        return candidates[0]
    if shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                ["pg_config", "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            if out and (Path(out) / "initdb").exists():
                return Path(out)
    return None


def postgres_missing(*, postgis: bool = True) -> str | None:
    """A reason why no lab PostgreSQL (with PostGIS) can run here, or None when it can."""
    bindir = find_bindir()
    if bindir is None:
        return "PostgreSQL server not installed (apt-get install postgresql)"
    if postgis and not _has_postgis(bindir):
        return f"PostGIS not installed for {bindir} (apt-get install postgresql-15-postgis-3)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root but there is no 'postgres' system user for initdb"
        if shutil.which("runuser") is None:
            return "running as root but runuser is missing"
    return None


# -- TLS ---------------------------------------------------------------------------------------


def make_ca(directory: Path, name: str = "tunnelman lab CA") -> tuple[Path, Path]:
    """A self-signed CA: writes ``ca.crt`` / ``ca.key`` in ``directory``, returns their paths.

    Uses the ``cryptography`` package (always present: paramiko depends on it).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "ca.crt", directory / "ca.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def make_server_cert(
    directory: Path, ca_cert: Path, ca_key: Path, names: Sequence[str]
) -> tuple[Path, Path]:
    """A server certificate signed by the CA whose subjectAltNames are exactly ``names``
    (DNS names; IP literals become IP SANs).  Writes ``server.crt``/``server.key`` (0600)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if not names:
        raise ValueError("a server certificate needs at least one name")
    ca = x509.load_pem_x509_certificate(ca_cert.read_bytes())
    ca_private = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
    if not isinstance(ca_private, ec.EllipticCurvePrivateKey):
        raise TypeError("make_ca() keys are EC keys")
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_private, hashes.SHA256())
    )
    cert_path, key_path = directory / "server.crt", directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


# -- server ------------------------------------------------------------------------------------


class Postgres:
    """One lab PostgreSQL cluster.  ``start()``/``stop()`` may be repeated (data is kept);
    ``close()`` stops it and removes everything."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        ssl: bool = False,
        ssl_names: Sequence[str] = (DEFAULT_ENDPOINT,),
        require_ssl: bool = False,
        postgis: bool = True,
        password: str | None = None,
        netns: str | None = None,
        settings: dict[str, str] | None = None,
    ) -> None:
        self.host = host
        self.port = port if port is not None else free_port()
        self.user = "postgres"
        self.database = "geo"
        self.password = password or f"lab-{secrets.token_hex(8)}"
        self.ssl = ssl or require_ssl
        self.ssl_names = list(ssl_names)
        self.require_ssl = require_ssl
        self.postgis = postgis
        self.netns = netns
        self.settings = dict(settings or {})
        bindir = find_bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL server not installed")
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="tunnelman-pg-"))
        self.data_dir = self.dir / "data"
        self.socket_dir = self.dir / "sock"
        self.log_path = self.dir / "postgres.log"
        self.ca_path: Path | None = None
        self.ca_key_path: Path | None = None
        self._initialized = False
        self._started = False
        self._watchdog: procs.Watchdog | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return self._started

    def _as_owner(self, argv: list[str]) -> list[str]:
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        if os.geteuid() == 0:
            return [*prefix, "runuser", "-u", "postgres", "--", *argv]
        return [*prefix, *argv]

    def _run(self, argv: list[str], timeout: float = 60.0) -> None:
        # Run from the temp dir: "runuser -u postgres" cannot read root's cwd (e.g. /root/...).
        res = subprocess.run(
            self._as_owner(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
            cwd=self.dir,
        )
        if res.returncode != 0:
            log = self.log_text()[-2000:]
            raise RuntimeError(
                f"{Path(argv[0]).name} failed ({res.returncode}): {res.stderr.strip()}\n{log}"
            )

    def _init(self) -> None:
        reason = postgres_missing(postgis=self.postgis)
        if reason:
            raise RuntimeError(reason)
        self.socket_dir.mkdir()
        pwfile = self.dir / "pwfile"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        if self.ssl:
            ssl_dir = self.dir / "ssl"
            self.ca_path, self.ca_key_path = make_ca(ssl_dir)
            self.ca_path.chmod(0o644)
            make_server_cert(ssl_dir, self.ca_path, self.ca_key_path, self.ssl_names)
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            for root, dirs, files in os.walk(self.dir):
                for name in [*dirs, *files]:
                    os.chown(os.path.join(root, name), pw.pw_uid, pw.pw_gid)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self._run(
            [
                str(self.bindir / "initdb"),
                "-D", str(self.data_dir),
                "-U", self.user,
                f"--pwfile={pwfile}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ]
        )  # fmt: skip
        pwfile.unlink()
        conf = [
            "# tests/lab/postgres.py",
            f"listen_addresses = '{self.host}'",
            f"port = {self.port}",
            f"unix_socket_directories = '{self.socket_dir}'",
            "fsync = off",
            "synchronous_commit = off",
            "full_page_writes = off",
            "shared_buffers = 16MB",
            "max_connections = 60",
            "password_encryption = 'scram-sha-256'",
            "log_connections = on",
            "log_disconnections = on",
            "dynamic_shared_memory_type = posix",
        ]
        if self.ssl:
            conf += [
                "ssl = on",
                f"ssl_cert_file = '{self.dir / 'ssl' / 'server.crt'}'",
                f"ssl_key_file = '{self.dir / 'ssl' / 'server.key'}'",
                f"ssl_ca_file = '{self.ca_path}'",
            ]
        conf += [f"{k} = '{v}'" for k, v in self.settings.items()]
        with (self.data_dir / "postgresql.conf").open("a") as f:
            f.write("\n".join(conf) + "\n")
        host_kw = "hostssl" if self.require_ssl else "host"
        hba = [
            "# tests/lab/postgres.py: sockets trusted (lab setup), TCP always SCRAM",
            "local all all trust",
            f"{host_kw} all all 0.0.0.0/0 scram-sha-256",
            f"{host_kw} all all ::/0 scram-sha-256",
        ]
        (self.data_dir / "pg_hba.conf").write_text("\n".join(hba) + "\n")
        self._initialized = True

    def _pg_ctl_start(self, timeout: float) -> None:
        self._run(
            [
                str(self.bindir / "pg_ctl"),
                "start", "-w", "-t", str(int(timeout)),
                "-D", str(self.data_dir),
                "-l", str(self.log_path),
            ],
            timeout=timeout + 10,
        )  # fmt: skip

    def start(self, timeout: float = 30.0) -> None:
        """initdb (first time), start, and create ``geo`` with PostGIS (first time)."""
        if self._started:
            return
        procs.on_exit(self.close)
        if self._watchdog is None:
            # If the test process is killed outright: stop the server, remove the dir.
            stop = [
                str(self.bindir / "pg_ctl"),
                "stop",
                "-m",
                "immediate",
                "-D",
                str(self.data_dir),
            ]
            self._watchdog = procs.Watchdog([self._as_owner(stop), ["rm", "-rf", str(self.dir)]])
        first = not self._initialized
        if first:
            self._init()
        self._pg_ctl_start(timeout)
        self._started = True
        if self.netns is None:
            wait_port(self.host, self.port, timeout=timeout)
        if first:
            self._populate()

    def _populate(self) -> None:
        import psycopg

        with psycopg.connect(self.socket_dsn(dbname="postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE geo")
        with psycopg.connect(self.socket_dsn(), autocommit=True) as conn:
            if self.postgis:
                conn.execute("CREATE EXTENSION postgis")
                conn.execute(
                    "CREATE TABLE public.pts (id serial PRIMARY KEY, name text,"
                    " geom geometry(Point, 4326))"
                )
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO public.pts (name, geom)"
                        " VALUES (%s, ST_SetSRID(ST_MakePoint(%s, %s), 4326))",
                        PTS_ROWS,
                    )
            else:
                conn.execute("CREATE TABLE public.pts (id serial PRIMARY KEY, name text)")
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO public.pts (name) VALUES (%s)", [(r[0],) for r in PTS_ROWS]
                    )

    def stop(self, timeout: float = 30.0) -> None:
        """``pg_ctl stop -m immediate`` (data kept; ``start()`` brings it back)."""
        if not self._started:
            return
        self._started = False
        try:
            self._run(
                [str(self.bindir / "pg_ctl"), "stop", "-w", "-m", "immediate",
                 "-t", str(int(timeout)), "-D", str(self.data_dir)],
                timeout=timeout + 10,
            )  # fmt: skip
        except (RuntimeError, subprocess.TimeoutExpired):
            self._kill_postmaster()

    def _kill_postmaster(self) -> None:
        pidfile = self.data_dir / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError):
            pid = int(pidfile.read_text().split()[0])
            procs.kill_tree([*procs.descendants(pid), pid], 9)

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server and remove its temp dir."""
        procs.on_exit_cancel(self.close)
        with contextlib.suppress(Exception):
            self.stop()
        # Belt and braces: a postmaster that survived pg_ctl would keep the port.
        if (self.data_dir / "postmaster.pid").exists():
            self._kill_postmaster()
        shutil.rmtree(self.dir, ignore_errors=True)
        if self._watchdog is not None:
            self._watchdog.disarm()
            self._watchdog = None

    @property
    def endpoint_name(self) -> str:
        """The fake cluster endpoint in the TLS certificate (the first of ``ssl_names``)."""
        return self.ssl_names[0]

    # -- connecting --------------------------------------------------------------------------

    def params(self, **overrides: Any) -> dict[str, Any]:
        """Connection parameters for a direct TCP login (libpq keyword names)."""
        p: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "dbname": self.database,
            "user": self.user,
            "password": self.password,
            "connect_timeout": 10,
        }
        p.update(overrides)
        return {k: v for k, v in p.items() if v is not None}

    def dsn(self, **overrides: Any) -> str:
        """A libpq conninfo string for a direct TCP login; ``None`` drops a key, e.g.
        ``pg.dsn(port=5433)`` (through a tunnel) or ``pg.dsn(password=None)``."""
        from psycopg.conninfo import make_conninfo

        return make_conninfo("", **self.params(**overrides))

    def socket_dsn(self, **overrides: Any) -> str:
        """Conninfo over the Unix socket (trust auth, works from any network namespace)."""
        return self.dsn(**{"host": str(self.socket_dir), "password": None, **overrides})

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except (FileNotFoundError, PermissionError):
            return ""

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until a socket login succeeds (after ``start()`` in a network namespace)."""
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.socket_dsn(connect_timeout=2)):
                    return
            except psycopg.OperationalError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)
