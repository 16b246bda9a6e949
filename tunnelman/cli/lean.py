"""The `tunnelman` entry point, and its warm path: a held tunnel reached without loading click.

`main()` is the console script (and `python -m tunnelman`). When the command line is one it fully
understands — `[--config PATH] psql NAME [PSQL ARGS…]`, `exec NAME [--] CMD [ARGS…]`,
`env NAME`, `conn NAME [-f|--format F]` — and the background agent already holds NAME's tunnel
up, it does the command's work itself: load the profile, ask the agent for the port, read the
password where that needs no prompt and no AWS (`password = "none"`, or the keyring holding it),
then start the child with `core.oneshot`'s environment, or print what `env`/`conn` print. On
POSIX the child replaces this process (exec: nothing is left waiting, psql gets the terminal's
signals itself); a password goes to it in a sealed memfd on Linux (see `_exec`). On Windows, and
on macOS when there is a password, the child runs under `core.oneshot` as in the full CLI (its
temporary 0600 PGPASSFILE, its signal handling). Click, paramiko, boto3 and Textual are never
imported on that path, and it imports as little else as it can: each module costs every one-shot.

Anything else goes to the full CLI (`tunnelman.cli.main`) untouched: any option of ours
(`--start-cluster`, `--port`, `--linger`, `-h/--help`, …), a profile that does not load, a tunnel
the agent does not hold, a password that needs a prompt or AWS, a program that is not installed.
The full CLI then does the whole command from the start, so help, errors, prompts and exit codes
are exactly its own; nothing is printed or written here before that decision. It does take the
profile file as this module read it (`loaded_profiles`), not parsing it a second time.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tunnelman.core.credentials import Login
    from tunnelman.core.profiles import Profile, ProfileSet

ENV_NO_LEAN = "TUNNELMAN_NO_LEAN"
"""Set (to anything but "" or "0") to always take the full CLI: for tests and for debugging."""

_COMMANDS = frozenset({"psql", "exec", "env", "conn"})
# Characters our output uses that a legacy code page may lack (cp1252 has "…" but not "→").
_GLYPHS = "→✓✗…"


class _Fallback(Exception):
    """The lean path does not take this command line: the full CLI runs it."""


# The profile file as this command read it, for the full CLI when the command falls back to it
# (a tunnel the agent does not hold: the cold one-shot), so the file is read and checked once per
# command, not twice. Set only while that full CLI runs; `loaded_profiles` hands it over once.
_read: list[ProfileSet] = []
_handed: list[ProfileSet] = []


def loaded_profiles(config: str | None) -> ProfileSet | None:
    """The profile file this command already read, if it is the one `config` names; once.

    For `cli.common.load_profile`. The same read the full CLI would have made itself a few
    milliseconds later, in the same process: nothing is kept between commands. The agent's
    answer is not handed over: the full CLI asks again after the login (a prompt may have taken
    a while, and a tunnel come up meanwhile), and that costs one local round trip.
    """
    if not _handed:
        return None
    handed = _handed.pop()
    from tunnelman.core import profiles
    from tunnelman.core.errors import TunnelmanError

    try:
        same = profiles.config_path(config) == handed.path
    except TunnelmanError:
        return None  # the full CLI reports it, reading the file itself
    return handed if same else None


def _split(argv: Sequence[str]) -> tuple[str | None, str, str, list[str]]:
    """(--config value, command, NAME, the rest); _Fallback for any other shape."""
    args = list(argv)
    config: str | None = None
    if args and (args[0] == "--config" or args[0].startswith("--config=")):
        if args[0] == "--config":
            if len(args) < 2:
                raise _Fallback
            config, args = args[1], args[2:]
        else:
            config, args = args[0].split("=", 1)[1], args[1:]
        if not config or config.startswith("-"):
            raise _Fallback
    if len(args) < 2 or args[0] not in _COMMANDS or args[1].startswith("-") or not args[1]:
        raise _Fallback
    return config, args[0], args[1], args[2:]


def _conn_format(rest: list[str]) -> str:
    """The format of `conn NAME [-f F | --format F | --format=F]`; _Fallback for anything else."""
    from tunnelman.core import clients

    if not rest:
        return "psql"
    if len(rest) == 2 and rest[0] in ("-f", "--format"):
        fmt = rest[1]
    elif len(rest) == 1 and rest[0].startswith("--format="):
        fmt = rest[0].split("=", 1)[1]
    else:
        raise _Fallback
    if fmt not in clients.FORMATS:
        raise _Fallback
    return fmt


def _held_port(name: str) -> int:
    """The port of NAME's tunnel when the agent holds it up; _Fallback otherwise."""
    from tunnelman.agent.client import AgentClient

    port = AgentClient().up_port(name)
    if port is None:
        raise _Fallback
    return port


def _load(config: str | None, name: str) -> Profile:
    from tunnelman.core import profiles
    from tunnelman.core.errors import TunnelmanError

    try:
        loaded = profiles.load(config, missing_ok=False)
        profile = loaded.get(name)
    except (TunnelmanError, OSError):
        raise _Fallback from None
    _read.append(loaded)
    return profile


def _program_argv(command: str, rest: list[str]) -> list[str]:
    if command == "psql":
        if rest and rest[0] == "--start-cluster":
            raise _Fallback
        return ["psql", *rest]
    if rest and rest[0] == "--":
        rest = rest[1:]
    if not rest or rest[0].startswith("-"):
        raise _Fallback
    return rest


def _oneshot(profile: Profile, port: int, argv: list[str]) -> int:
    from tunnelman.core import credentials, oneshot
    from tunnelman.core.errors import TunnelmanError

    try:
        program = oneshot.find_program(argv[0])
    except TunnelmanError:
        raise _Fallback from None
    if profile.password not in ("none", "keyring"):
        raise _Fallback  # a prompt (click) or AWS (boto3): the full CLI's work
    try:
        # No prompt: a keyring without the password is the full CLI's (it asks, offers to save).
        login = credentials.resolve_login(profile, prompt=None, offer_save=None)
    except TunnelmanError:
        raise _Fallback from None
    # From here on the command is ours: its errors are reported as the full CLI reports them.
    if _EXEC:
        _exec(profile, port, [program, *argv[1:]], login)  # returns only when it cannot exec
    return oneshot.run(profile, argv, login, port=port)


# Replace this process with the child where nothing has to happen after it exits: no Python
# parent waits for psql, and the shell sees psql's own exit status and signals. Windows has no
# exec that keeps the process (os.execv there starts a new one and exits: the console would see
# tunnelman end at once), so the child is spawned and waited for there, as in the full CLI.
_EXEC = os.name == "posix"


def _exec(profile: Profile, port: int, argv: list[str], login: Login) -> None:
    """exec `argv` with the child's environment; returns when that is not possible here.

    Without a password (`password = "none"`: libpq reads the user's own .pgpass) there is nothing
    to clean up. With one, it goes in an anonymous memory file (Linux memfd, 0600, sealed
    read-only) that the child inherits and libpq opens as /proc/PID/fd/N: the file exists only
    while a process holds it open, so it goes when the child ends, however it ends (a SIGKILL
    too), and nothing touches a disk. Where there is no memfd (macOS), the caller runs the child
    under `core.oneshot` with its temporary PGPASSFILE, removed when the child ends.
    """
    from tunnelman.core import oneshot

    passfile = None
    fd = -1
    if login.password is not None:
        fd = _memfd_passfile(profile, port, login)
        if fd < 0:
            return
        passfile = f"/proc/{os.getpid()}/fd/{fd}"
    env = oneshot.child_env(profile, port, user=login.user, base=None)
    if passfile is not None:
        env["PGPASSFILE"] = passfile
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(argv[0], argv, env)  # noqa: S606 - replaces this process, no shell
    except OSError:
        # Not executable after all (permissions, format): the spawning path reports it.
        if fd >= 0:
            os.close(fd)


if sys.platform == "linux":

    def _memfd_passfile(profile: Profile, port: int, login: Login) -> int:
        """An inheritable, sealed memfd holding the pgpass line; -1 where there is none."""
        if not os.path.isdir(f"/proc/{os.getpid()}/fd"):
            return -1
        import fcntl

        from tunnelman.core import clients

        assert login.password is not None
        s = clients.conn_settings(profile, port, user=login.user)
        line = clients.pgpass_line(s.host, s.port, "*", s.user, login.password) + "\n"
        try:
            fd = os.memfd_create("tunnelman-pgpass", os.MFD_ALLOW_SEALING)
        except OSError:
            return -1
        try:
            os.fchmod(fd, 0o600)  # libpq ignores a passfile that others could read
            data = line.encode("utf-8")
            while data:
                data = data[os.write(fd, data) :]
            seals = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
            os.set_inheritable(fd, True)
        except OSError:
            os.close(fd)
            return -1
        return fd

else:

    def _memfd_passfile(profile: Profile, port: int, login: Login) -> int:
        """No memfd here (macOS, Windows): the caller takes the spawning path."""
        return -1


def _print(profile: Profile, port: int, command: str, rest: list[str]) -> int:
    from tunnelman.core import clients

    if command == "env":
        if rest:
            raise _Fallback
        from tunnelman.core.platform import shells

        sys.stdout.write(clients.render("env", profile, port, shell=shells.default_shell()))
        return 0
    fmt = _conn_format(rest)
    text = clients.render(fmt, profile, port, pgadmin_ssh=False)
    notes = [] if fmt in clients.COMMENTED_FORMATS else list(clients.notes(fmt, profile, port))
    sys.stdout.write(text)
    sys.stdout.flush()
    for note in notes:
        sys.stderr.write(f"tunnelman: note: {note}\n")
    return 0


def ensure_encodable_streams() -> None:
    """Switch stdout/stderr to UTF-8 when their encoding cannot print our output.

    Windows writes a redirected stream (a file, a pipe) in the ANSI code page, cp1252 in the West,
    where "→" or "✓" raise UnicodeEncodeError in the middle of a command. UTF-8 is what
    PYTHONUTF8=1 (Python's default from 3.15) gives, and it keeps non-ASCII data in --json
    intact. A console, or any stream that can encode them (Linux, macOS), is left as it is.
    """
    import contextlib

    for stream in (sys.stdout, sys.stderr):
        encoding = getattr(stream, "encoding", None)
        reconfigure = getattr(stream, "reconfigure", None)
        if not encoding or reconfigure is None:
            continue
        try:
            _GLYPHS.encode(encoding)
        except (UnicodeEncodeError, LookupError):
            with contextlib.suppress(Exception):
                reconfigure(encoding="utf-8", errors="replace")


def run(argv: Sequence[str]) -> int:
    """The command's exit status when the lean path takes it; _Fallback when it does not."""
    if os.environ.get(ENV_NO_LEAN, "") not in ("", "0"):
        raise _Fallback
    config, command, name, rest = _split(argv)
    if command == "conn":
        _conn_format(rest)  # before any file or socket: `conn NAME --write` is not ours
    elif command == "env" and rest:
        raise _Fallback
    profile = _load(config, name)
    if command in ("psql", "exec"):
        program = _program_argv(command, rest)
        try:
            port = _held_port(name)
        except _Fallback:
            # Cold: the full CLI will connect; start the bastion's TCP connection now, while
            # it loads (`core.ssh.preconnect`: only where nothing can differ from its own).
            from tunnelman.core.ssh import preconnect

            preconnect.for_oneshot(profile, program)
            raise
        return _oneshot(profile, port, program)
    return _print(profile, _held_port(name), command, rest)


def _error(exc: BaseException) -> int:
    """As `cli.main` reports an error: one line on stderr, the error's exit status."""
    from tunnelman.core.errors import TunnelmanError
    from tunnelman.core.profiles import printable

    if isinstance(exc, KeyboardInterrupt):
        sys.stderr.write("tunnelman: error: interrupted\n")
        return 130
    assert isinstance(exc, TunnelmanError)
    text = "\n".join(printable(line) for line in str(exc).split("\n"))
    sys.stderr.write(f"tunnelman: error: {text}\n")
    return exc.exit_code


def main(argv: list[str] | None = None) -> None:
    """`tunnelman`: the warm path when it applies, else the full CLI (`cli.main.main`)."""
    from tunnelman.core.errors import TunnelmanError

    args = sys.argv[1:] if argv is None else argv
    ensure_encodable_streams()
    _read.clear()
    try:
        code = run(args)
    except _Fallback:
        from tunnelman.cli.main import main as full

        _handed[:] = _read[-1:]
        _read.clear()
        try:
            full(argv)
        finally:
            _handed.clear()
        return
    except (TunnelmanError, KeyboardInterrupt) as exc:
        code = _error(exc)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    sys.exit(code)
