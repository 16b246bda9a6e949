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

On Linux it first tries one round trip (`_quick`): the `oneshot` request, where the agent, which
has the profile loader imported anyway, reads the profile file in this command's terms (the
`--config` text or $TUNNELMAN_CONFIG, the cwd, HOME and the XDG/keyring variables it compares
with its own) and answers with the port and the child's PG* settings, or the `env`/`conn` text.
This process then imports only `json` and `socket` (no dataclasses, tomllib, typing,
platformdirs, shutil: ~90 ms of CPU on every warm one-shot), finds the program on PATH as
`shutil.which` does, and execs. A `password = "keyring"` profile: the agent reads the keyring and
sends the pgpass line over its socket (reading it here would import keyring and its Secret
Service backend, more than the rest of this path): the Unix socket is 0600 in a 0700 directory,
the agent accepts only its own uid and this side checks the agent's uid (SO_PEERCRED) before it
trusts a reply; the agent never sends a password over TCP, nor logs it; the child gets it only in
the sealed memfd (`_memfd`), never in PGPASSWORD or argv. Whenever the agent does not answer that
way ("not held": a tunnel it does not hold up, a profile edited since `up`, another HOME, a
password needing a prompt, an agent older than the request, …) the path above runs as before,
and that falls back to the full CLI: nothing is printed before the decision either way.

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

# Not `typing.TYPE_CHECKING`: importing typing costs the warm path ~5 ms (mypy reads this name).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

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


def _conn_shape(rest: list[str]) -> str:
    """The format `conn NAME [-f F | --format F | --format=F]` names; _Fallback for another shape."""
    if not rest:
        return "psql"
    if len(rest) == 2 and rest[0] in ("-f", "--format"):
        return rest[1]
    if len(rest) == 1 and rest[0].startswith("--format="):
        return rest[0].split("=", 1)[1]
    raise _Fallback


def _conn_format(rest: list[str]) -> str:
    """The format of `conn NAME …`; _Fallback for another shape or a format we do not have."""
    from tunnelman.core import clients

    fmt = _conn_shape(rest)
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


def _memfd_passfile(profile: Profile, port: int, login: Login) -> int:
    """An inheritable, sealed memfd holding the login's pgpass line; -1 where there is none."""
    from tunnelman.core import clients

    assert login.password is not None
    s = clients.conn_settings(profile, port, user=login.user)
    return _memfd(clients.pgpass_line(s.host, s.port, "*", s.user, login.password) + "\n")


if sys.platform == "linux":

    def _memfd(line: str) -> int:
        """An inheritable memfd holding `line`, 0600 and sealed; -1 where there is none."""
        if not os.path.isdir(f"/proc/{os.getpid()}/fd"):
            return -1
        import fcntl

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
        except (OSError, UnicodeEncodeError):
            os.close(fd)
            return -1
        return fd

else:

    def _memfd(line: str) -> int:
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
    # Before any file or socket: `conn NAME --write`, `exec NAME` without a program are not ours.
    if command == "conn":
        detail = [_conn_shape(rest)]
    elif command == "env":
        if rest:
            raise _Fallback
        detail = []
    else:
        detail = _program_argv(command, rest)
    if _QUICK:
        code = _quick(config, command, name, detail)
        if code is not None:
            return code
    profile = _load(config, name)
    if command in ("psql", "exec"):
        try:
            port = _held_port(name)
        except _Fallback:
            # Cold: the full CLI will connect; start the bastion's TCP connection now, while
            # it loads (`core.ssh.preconnect`: only where nothing can differ from its own).
            from tunnelman.core.ssh import preconnect

            preconnect.for_oneshot(profile, detail)
            raise
        return _oneshot(profile, port, detail)
    return _print(profile, _held_port(name), command, rest)


# ----------------------------------------------------------------------------- the quick path

# What the agent compares with its own environment (`agent.warm.CONTEXT`, not imported: this
# path imports nothing of the agent's package).
_CONTEXT = (
    "HOME",
    "XDG_CONFIG_HOME",
    "XDG_DATA_HOME",
    "DBUS_SESSION_BUS_ADDRESS",
    "PYTHON_KEYRING_BACKEND",
)
_MAX_REPLY = 1 << 20  # as agent.protocol.MAX_LINE
_MAX_SOCKET_PATH = 100  # as agent.paths: a longer runtime path moves the agent to the temp dir
_CONNECT_TIMEOUT = 2.0  # as agent.client
_ANSWER_TIMEOUT = 15.0  # a keyring read on the agent's side may take a moment

# Linux: the agent's socket can be named without platformdirs, and a password has a memfd to
# go in. Elsewhere the path of before (profile read here, `status` asked, `core.oneshot`).
_QUICK = sys.platform == "linux"


def _quick(config: str | None, command: str, name: str, detail: list[str]) -> int | None:
    """The command done with one `oneshot` request (`agent.warm`): the agent reads the profile
    and answers with the port and the child's settings, or the text to print. None when it does
    not answer that (no agent, an older one, a tunnel it does not hold up, a profile changed
    since `up`, …): then the path of before, which reads the profile here."""
    path = _agent_socket()
    if path is None:
        return None
    try:
        cwd = os.getcwd()
    except OSError:
        return None
    environ = os.environ
    request: dict[str, Any] = {
        "v": 1,
        "op": "oneshot",
        "name": name,
        # As `profiles.config_path`: --config, else $TUNNELMAN_CONFIG, else the default file;
        # the agent resolves it in our terms (cwd, and HOME/XDG_CONFIG_HOME compared).
        "config": config or environ.get("TUNNELMAN_CONFIG") or None,
        "cwd": cwd,
        "environ": {k: environ[k] for k in _CONTEXT if k in environ},
        "command": command,
    }
    program = None
    if command == "conn":
        request["format"] = detail[0]
    elif command in ("psql", "exec"):
        program = _which(detail[0])
        if program is None:
            return None
        # Our PG* settings, for `child_env` to keep or clear; never a PGPASSWORD (always cleared).
        request["pg_env"] = {
            k: v for k, v in environ.items() if k.startswith("PG") and k != "PGPASSWORD"
        }
        request["secrets"] = True
    reply = _ask_agent(path, request)
    if reply is None or reply.get("ok") is not True or reply.get("held") is not True:
        return None
    port = reply.get("port")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port <= 65535:
        return None
    if program is None:
        return _print_reply(reply)
    return _exec_reply(reply, [program, *detail[1:]])


def _print_reply(reply: dict[str, Any]) -> int | None:
    text, notes = reply.get("text"), reply.get("notes", [])
    if not isinstance(text, str) or not isinstance(notes, list):
        return None
    if not all(isinstance(note, str) for note in notes):
        return None
    sys.stdout.write(text)
    sys.stdout.flush()
    for note in notes:
        sys.stderr.write(f"tunnelman: note: {note}\n")
    return 0


def _exec_reply(reply: dict[str, Any], argv: list[str]) -> int | None:
    """exec `argv` with the agent's PG* settings over ours; None when that cannot be done."""
    settings, line = reply.get("env"), reply.get("passfile")
    if not isinstance(settings, dict) or not (line is None or isinstance(line, str)):
        return None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in settings.items()):
        return None
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(settings)
    fd = -1
    if line is not None:
        fd = _memfd(line)
        if fd < 0:
            return None
        env["PGPASSFILE"] = f"/proc/{os.getpid()}/fd/{fd}"
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(argv[0], argv, env)  # noqa: S606 - replaces this process, no shell
    except (OSError, ValueError):
        # Not executable after all, or a NUL in a value: the path of before reports it.
        if fd >= 0:
            os.close(fd)
    return None


if sys.platform == "linux":

    def _which(name: str) -> str | None:
        """`shutil.which(name)` as it is on POSIX, without importing shutil (and bz2, lzma, …).

        Not found on PATH: None, and the path of before looks where `platform.programs` looks too,
        or reports it.
        """

        def runnable(path: str) -> bool:
            return (
                os.path.exists(path)
                and os.access(path, os.F_OK | os.X_OK)
                and not os.path.isdir(path)
            )

        if os.path.dirname(name):
            return name if runnable(name) else None
        search = os.environ.get("PATH")
        if search is None:
            try:
                search = os.confstr("CS_PATH")
            except (AttributeError, ValueError):
                search = os.defpath
        if not search:
            return None
        seen: set[str] = set()
        for directory in search.split(os.pathsep):
            if directory in seen:
                continue
            seen.add(directory)
            candidate = os.path.join(directory, name)
            if runnable(candidate):
                return candidate
        return None

    def _agent_socket() -> str | None:
        """The agent's Unix socket, named as `agent.paths` names it where that needs no
        platformdirs: $TUNNELMAN_AGENT_DIR, or a private $XDG_RUNTIME_DIR; None otherwise."""
        import stat

        environ = os.environ
        if environ.get("TUNNELMAN_AGENT_TRANSPORT", "").strip().lower() == "tcp":
            return None  # no password over TCP: the path of before
        directory = environ.get("TUNNELMAN_AGENT_DIR")
        if directory:
            try:
                directory = os.path.join(os.getcwd(), os.path.expanduser(directory))
            except OSError:
                return None
            return os.path.join(directory, "agent.sock")
        runtime = environ.get("XDG_RUNTIME_DIR", "")
        if not os.path.isabs(runtime):
            return None
        try:
            info = os.lstat(runtime)
        except OSError:
            return None
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
            return None  # platformdirs would not take it either: the path of before
        path = os.path.join(runtime, "tunnelman", "agent.sock")
        return path if len(path) <= _MAX_SOCKET_PATH else None

    def _ask_agent(path: str, request: dict[str, Any]) -> dict[str, Any] | None:
        """One request on the agent's socket, its reply; None on any failure.

        The agent must be our own user (SO_PEERCRED), as it checks us: the reply may hold a
        password.
        """
        import json
        import socket

        try:
            data = json.dumps(request, ensure_ascii=False, separators=(",", ":")).encode()
        except (UnicodeEncodeError, ValueError):
            return None  # bytes that are not UTF-8 in argv or the environment
        buf = b""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(_CONNECT_TIMEOUT)
                sock.connect(path)
                peer = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
                if int.from_bytes(peer[4:8], sys.byteorder) != os.getuid():
                    return None
                sock.settimeout(_ANSWER_TIMEOUT)
                sock.sendall(data + b"\n")
                while b"\n" not in buf:
                    if len(buf) > _MAX_REPLY:
                        return None
                    chunk = sock.recv(65536)
                    if not chunk:
                        return None
                    buf += chunk
        except OSError:
            return None
        try:
            reply = json.loads(buf.partition(b"\n")[0].decode("utf-8"))
        except (ValueError, RecursionError):
            return None
        return reply if isinstance(reply, dict) else None

else:

    def _which(name: str) -> str | None:
        return None

    def _agent_socket() -> str | None:
        return None

    def _ask_agent(path: str, request: dict[str, Any]) -> dict[str, Any] | None:
        return None


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
    except KeyboardInterrupt as exc:
        code = _error(exc)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    except Exception as exc:
        from tunnelman.core.errors import TunnelmanError  # not imported on the quick path

        if not isinstance(exc, TunnelmanError):
            raise
        code = _error(exc)
    sys.exit(code)
