"""One-shot commands: run a libpq program through a tunnel that lives exactly as long as it does.

Called by `tunnelman psql` and `tunnelman exec` (the CLI finds an agent tunnel to reuse and
resolves the login first; core never imports the agent). The order is: find the program (fail
fast, before any SSH), open the tunnel (or reuse the given port), write the password into a
temporary PGPASSFILE, run the child, then remove the file and close the tunnel.

The password reaches the child only through that file: a fresh 0700 directory (in
$XDG_RUNTIME_DIR, a per-user tmpfs, when there is one) holding one 0600 file; `PGPASSFILE` names it,
`PGPASSWORD` is removed from the child's environment, and the file and directory are removed when
the child ends, however it ends: normal exit, crash, Ctrl-C (SIGINT reaches psql from the terminal
and psql cancels the query; we ignore it and forward it only when the terminal could not have
delivered it) or SIGTERM/SIGHUP (forwarded to the child, then we clean up; on Windows the
console's Ctrl-C, Ctrl-Break and close reach the child by themselves). Only a SIGKILL of
tunnelman itself can leave the file behind, in a directory nobody else can read.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from tunnelman.core import clients
from tunnelman.core.errors import ClientError
from tunnelman.core.platform import programs

# subprocess, threading, tempfile and the signal plan are imported where they are used: the
# warm path (`cli.lean`) takes only `find_program` and `child_env` from here, then execs.
if TYPE_CHECKING:
    import subprocess

    from tunnelman.core.credentials import Login
    from tunnelman.core.profiles import Profile
    from tunnelman.core.ssh import PassphrasePrompt
    from tunnelman.core.ssh.known_hosts import HostKeyPolicy
    from tunnelman.core.tunnel import TunnelStatus

_PG_CLIENT = (
    "install the PostgreSQL client tools: Debian/Ubuntu `sudo apt install postgresql-client`, "
    "Fedora/RHEL `sudo dnf install postgresql`, macOS `brew install libpq` (found where Homebrew puts it), "
    "Windows: the PostgreSQL installer's command line tools"
)
INSTALL_HINTS: dict[str, str] = {
    **dict.fromkeys(sorted(programs.PG_TOOLS), _PG_CLIENT),
    "ogr2ogr": "install GDAL: Debian/Ubuntu `sudo apt install gdal-bin`, macOS `brew install gdal`",
    "ogrinfo": "install GDAL: Debian/Ubuntu `sudo apt install gdal-bin`, macOS `brew install gdal`",
    "raster2pgsql": "install PostGIS's client tools: Debian/Ubuntu `sudo apt install postgis`",
    "shp2pgsql": "install PostGIS's client tools: Debian/Ubuntu `sudo apt install postgis`",
    "pgcli": "install pgcli: `pipx install pgcli` (or `pip install --user pgcli`)",
    "qgis": "install QGIS: see https://qgis.org/download/",
}

# Variables the child must not inherit: a password meant for another server, a service that would
# override our settings (libpq prefers the service file's values to PG* variables), and stale
# address/certificate settings from another database.
_CLEARED = ("PGPASSWORD", "PGSERVICE", "PGHOSTADDR", "PGSSLROOTCERT", "PGREQUIRESSL")


class ProgramNotFound(ClientError):
    """The program to run is not installed (or not on PATH)."""

    exit_code = 127


def _not_found(name: str, system: str | None = None) -> ProgramNotFound:
    base = os.path.basename(name)
    hint = programs.install_hint(base, system) or INSTALL_HINTS.get(
        base, "install it or check your PATH"
    )
    looked = programs.where_looked(system)
    if looked and base == name:
        return ProgramNotFound(f"{name} not found on PATH, nor in {looked}", hint=hint)
    return ProgramNotFound(f"{name} not found", hint=hint)


def find_program(name: str, path: str | None = None) -> str:
    """The full path of `name`: on PATH, else where the PostgreSQL installers put it (Windows,
    macOS; see `platform.programs`); or ProgramNotFound naming where it looked and how to
    install it."""
    found = programs.search(name, path)
    if found:
        return found
    raise _not_found(name)


def connect_timeout(profile: Profile) -> int:
    """The profile's connect_timeout, raised when the cluster may have to resume (no AWS call:
    a long timeout only costs time on failure, a short one fails a resume)."""
    if profile.cluster:
        from tunnelman.core.aws import RESUME_CONNECT_TIMEOUT  # cheap: boto3 stays unimported

        return max(profile.connect_timeout, RESUME_CONNECT_TIMEOUT)
    return profile.connect_timeout


def child_env(
    profile: Profile,
    port: int,
    *,
    user: str | None = None,
    passfile: Path | None = None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The child's environment: `base` (default os.environ) with the PG* settings for the tunnel.

    PGPASSWORD is always removed; PGPASSFILE is set only when `passfile` is given (otherwise the
    user's own .pgpass / PGPASSFILE applies, for `password = "none"`).
    """
    s = clients.conn_settings(profile, port, user=user)
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in _CLEARED}
    env["PGHOST"] = s.host
    if s.hostaddr:
        env["PGHOSTADDR"] = s.hostaddr
    env["PGPORT"] = str(s.port)
    env["PGDATABASE"] = s.dbname
    env["PGUSER"] = s.user
    env["PGSSLMODE"] = s.sslmode
    if s.sslrootcert:
        env["PGSSLROOTCERT"] = s.sslrootcert
    env.setdefault("PGAPPNAME", clients.APP_NAME)
    env["PGCONNECT_TIMEOUT"] = str(max(s.connect_timeout, connect_timeout(profile)))
    if passfile is not None:
        env["PGPASSFILE"] = str(passfile)
    return env


def _private_base() -> str | None:
    """$XDG_RUNTIME_DIR when it is ours and private (a tmpfs: the password never hits a disk)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if not runtime:
        return None
    try:
        st = os.stat(runtime)
    except OSError:
        return None
    if not hasattr(os, "getuid") or st.st_uid != os.getuid() or st.st_mode & 0o077:
        return None
    return runtime


@contextlib.contextmanager
def temp_passfile(profile: Profile, port: int, login: Login) -> Iterator[Path | None]:
    """A private PGPASSFILE holding the login's password for this tunnel; None without a password.

    The line names the host libpq matches (the endpoint for verify-*, else 127.0.0.1), the local
    port, any database (`\\c otherdb` in psql keeps working) and the user.
    """
    if login.password is None:
        yield None
        return
    s = clients.conn_settings(profile, port, user=login.user)
    line = clients.pgpass_line(s.host, s.port, "*", s.user, login.password) + "\n"
    import shutil
    import tempfile

    directory = tempfile.mkdtemp(prefix="tunnelman-", dir=_private_base())  # 0700
    path = Path(directory) / "pgpass"
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(path, flags, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(line)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        shutil.rmtree(directory, ignore_errors=True)


def _exit_status(returncode: int) -> int:
    """A shell-style status: 128+N for a child killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


class Terminated(ClientError):
    """tunnelman was told to stop (SIGTERM, SIGHUP; SIGBREAK on Windows) before the child started."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name} before the command started")
        self.exit_code = 128 + signum


class ChildRunner:
    """Signal handling around one child; install it before any secret is written.

    Before the child runs, SIGTERM/SIGHUP (Windows: SIGTERM/SIGBREAK) raise `Terminated` (so
    `finally` blocks remove the password file and close the tunnel) and Ctrl-C raises
    KeyboardInterrupt as usual. While the child runs, SIGINT is ignored here (psql handles it: it
    cancels the query) and forwarded only when the terminal could not have delivered it; SIGTERM
    and SIGHUP are forwarded. On Windows the console delivers Ctrl-C and Ctrl-Break/close to the
    child itself, so they are only ignored here; SIGTERM terminates the child (see
    `tunnelman.core.platform.terminal`). The handlers
    are Python functions, not SIG_IGN, so the child starts with the default dispositions.
    Outside the main thread (no signal handlers possible) the child simply runs.
    """

    def __init__(self) -> None:
        import threading

        from tunnelman.core.platform import terminal

        self._plan = terminal.signal_plan()
        self._caught = terminal.signals_named(self._plan.stop)
        self._proc: subprocess.Popen[bytes] | None = None
        self._spawning = False
        self._pending: list[int] = []
        self._previous: dict[int, object] = {}
        self._tty_sigint = False
        self._active = threading.current_thread() is threading.main_thread()
        self._grace = contextlib.ExitStack()

    def __enter__(self) -> ChildRunner:
        if self._active:
            for sig in self._caught:
                self._previous[sig] = signal.signal(sig, self._on_signal)
        # Windows: closing the console must still let the password file and tunnel go.
        from tunnelman.core.platform import terminal

        self._grace.enter_context(terminal.console_close_grace())
        return self

    def __exit__(self, *_exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()
        self._grace.close()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        proc = self._proc
        if proc is None:
            if self._spawning:
                self._pending.append(signum)
                return
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise Terminated(signum)
        if proc.poll() is not None:
            return
        action = self._plan.while_child(signal.Signals(signum).name, tty_delivers=self._tty_sigint)
        if action == "send":
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)
        elif action == "terminate":
            with contextlib.suppress(OSError):
                proc.terminate()

    def run(self, argv: Sequence[str], env: Mapping[str, str]) -> int:
        """Run `argv` in the foreground; its exit status (128+N when killed by signal N)."""
        import subprocess

        from tunnelman.core.platform import process, terminal

        if self._active:
            self._tty_sigint = terminal.interrupt_reaches_child()
            self._previous.setdefault(signal.SIGINT, signal.signal(signal.SIGINT, self._on_signal))
        self._spawning = True
        try:
            self._proc = subprocess.Popen(list(argv), env=dict(env))
        except FileNotFoundError:
            raise _not_found(argv[0]) from None
        except PermissionError:
            raise ClientError(f"{argv[0]}: permission denied (is it executable?)") from None
        finally:
            self._spawning = False
        proc = self._proc
        try:
            for signum in self._pending:
                self._on_signal(signum, None)
            return _exit_status(proc.wait())
        finally:
            # Only when waiting itself failed: never leave the child running on its own.
            process.end_child(proc)


def run_child(argv: Sequence[str], env: Mapping[str, str]) -> int:
    """Run `argv` with `env` under `ChildRunner`'s signal handling; return its exit status."""
    with ChildRunner() as runner:
        return runner.run(argv, env)


def run(
    profile: Profile,
    argv: Sequence[str],
    login: Login,
    *,
    port: int | None = None,
    host_keys: HostKeyPolicy | None = None,
    passphrase: PassphrasePrompt | None = None,
    on_status: Callable[[TunnelStatus], None] | None = None,
    on_ready: Callable[[int], None] | None = None,
    base_env: Mapping[str, str] | None = None,
) -> int:
    """Run `argv` through a tunnel for `profile`; return the child's exit status.

    `port`: a tunnel that is already up (the agent's) to reuse; else an in-process tunnel on a
    free port is opened now and closed when the child ends. `on_ready(port)` is called once the
    tunnel is up, before the child starts.
    """
    if not argv:
        raise ClientError("no command to run")
    env_path = (os.environ if base_env is None else base_env).get("PATH")
    program = find_program(argv[0], env_path)
    with ChildRunner() as runner, contextlib.ExitStack() as stack:
        if port is None:
            from tunnelman.core.ssh.known_hosts import HostKeyPolicy
            from tunnelman.core.tunnel import open_tunnel

            tunnel = open_tunnel(
                profile,
                local_port=0,  # a free port: a one-shot never collides with `tunnelman up`
                host_keys=host_keys or HostKeyPolicy(),
                passphrase=passphrase,
                on_status=on_status,
            )
            port = tunnel.start()
            stack.callback(tunnel.stop)
        if on_ready is not None:
            on_ready(port)
        passfile = stack.enter_context(temp_passfile(profile, port, login))
        env = child_env(profile, port, user=login.user, passfile=passfile, base=base_env)
        return runner.run([program, *argv[1:]], env)
