"""The agent's half of the warm one-shot: the `oneshot` request (see `protocol`).

`tunnelman psql|exec|env|conn NAME` through a tunnel the agent holds (`cli.lean`) would spend
most of its time importing the profile loader (dataclasses, tomllib, the checks) to learn what
the agent already knows. So it sends its command line's terms instead (the `--config` text or
`$TUNNELMAN_CONFIG`, its working directory, the environment names that change how a profile
reads) and the agent, which has `core.profiles` and `core.clients` loaded, answers in one round
trip with what the client needs to exec or print: the port, the child's PG* environment
(`core.oneshot.child_env` applied to the client's own PG* variables), the password file's line,
or the rendered `env`/`conn` text and its notes.

The agent answers only when it gives the same result the full CLI would; for anything else it
says "not held" (`{"held": false, "reason": …}`) and the client does the command the way it did
before this request existed, reading the profile itself (which then falls back to the full CLI
for errors, prompts and help). "Not held" when: no tunnel NAME, or not up; the profile file does
not load or lacks NAME; the profile read now differs from the one the tunnel was opened with
(it was edited after `up`: the client's own reading decides); the client's HOME or XDG/keyring
environment differs from the agent's (`~` and the default profile file would mean other
files); a password that needs a prompt or AWS; a keyring without the password; an unknown
`conn` format.

Passwords (`password = "keyring"`): the agent reads the keyring and sends the pgpass line,
password included, in the reply. The client reading it itself would import `keyring` and its
Secret Service backend (tens of milliseconds, more than the rest of the warm path). The line
travels only over the Unix socket: 0600 in a 0700 directory, and the agent accepts only peers of
its own uid (SO_PEERCRED), the client checks the agent's uid the same way. Over TCP (Windows, or
TUNNELMAN_AGENT_TRANSPORT=tcp) no password is sent: "not held", the client reads the keyring as
before. The line is never logged (the agent logs no request or reply bodies); the client puts it
in a sealed memfd the child inherits, never in PGPASSWORD or argv.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunnelman.core.errors import AgentError, TunnelmanError

if TYPE_CHECKING:
    from tunnelman.core.profiles import Profile

COMMANDS = frozenset({"psql", "exec", "env", "conn"})
# The environment names that change what a profile means or where its password is: `~`, the
# default profile file, the keyring's backend and its session. The client sends its values; any
# that differ from the agent's own and the agent says "not held".
CONTEXT = (
    "HOME",
    "XDG_CONFIG_HOME",
    "XDG_DATA_HOME",
    "DBUS_SESSION_BUS_ADDRESS",
    "PYTHON_KEYRING_BACKEND",
)
# The client asks only on Linux, where `platform.shells.default_shell()` is "posix".
_SHELL = "posix"


def not_held(reason: str) -> dict[str, Any]:
    return {"held": False, "reason": reason}


def _strings(value: object, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise AgentError(f"bad {what}: an object of strings")
    return value


def config_file(message: dict[str, Any]) -> Path:
    """The profile file the client means, as `profiles.config_path` resolves it there."""
    from tunnelman.core import profiles

    text = message.get("config")
    cwd = message.get("cwd")
    if not isinstance(cwd, str) or not os.path.isabs(cwd):
        raise AgentError("request without an absolute 'cwd'")
    if text is not None and (not isinstance(text, str) or not text):
        raise AgentError("bad 'config': a path or null")
    path = profiles.user_path(text, "profile file") if text else profiles.default_config_path()
    return path if path.is_absolute() else Path(cwd) / path


def answer(
    message: dict[str, Any],
    held: Profile,
    port: int,
    *,
    same: Callable[[Profile, Profile], bool],
    secrets: bool,
) -> dict[str, Any]:
    """The reply to `oneshot` for a tunnel that is up on `port`, opened for `held`."""
    command = message.get("command")
    if command not in COMMANDS:
        raise AgentError(f"bad command {command!r}")
    context = _strings(message.get("environ"), "'environ'")
    for key in CONTEXT:
        if context.get(key) != os.environ.get(key):
            return not_held(f"{key} differs")
    from tunnelman.core import profiles

    try:
        path = config_file(message)
        profile = profiles.load(path, missing_ok=False).get(str(message.get("name")))
    except (TunnelmanError, OSError):
        return not_held("the profile does not load here")
    if not same(profile, held):
        return not_held("the profile changed since the tunnel was opened")
    from tunnelman.core import clients

    reply: dict[str, Any] = {"held": True, "port": port, "config": str(path)}
    if command == "env":
        reply["text"] = clients.render("env", profile, port, shell=_SHELL)
        return reply
    if command == "conn":
        fmt = message.get("format")
        if not isinstance(fmt, str) or fmt not in clients.FORMATS:
            return not_held("not a format of this tunnelman")
        reply["text"] = clients.render(fmt, profile, port, pgadmin_ssh=False)
        commented = fmt in clients.COMMENTED_FORMATS
        reply["notes"] = [] if commented else list(clients.notes(fmt, profile, port))
        return reply
    return _child(message, profile, port, reply, secrets=secrets)


def _child(
    message: dict[str, Any], profile: Profile, port: int, reply: dict[str, Any], *, secrets: bool
) -> dict[str, Any]:
    """psql/exec: the child's PG* environment and, with a password, its pgpass line."""
    from tunnelman.core import clients, credentials, oneshot

    if profile.password not in ("none", "keyring"):
        return not_held("the password needs a prompt or AWS")
    if profile.password == "keyring" and not (secrets and message.get("secrets") is True):
        return not_held("no password over this connection")
    try:
        # No prompt: a keyring without the password is the full CLI's (it asks, offers to save).
        login = credentials.resolve_login(profile, prompt=None, offer_save=None)
    except TunnelmanError:
        return not_held("no password stored")
    base = _strings(message.get("pg_env"), "'pg_env'")
    reply["env"] = oneshot.child_env(profile, port, user=login.user, base=base)
    reply["passfile"] = None
    if login.password is not None:
        s = clients.conn_settings(profile, port, user=login.user)
        reply["passfile"] = clients.pgpass_line(s.host, s.port, "*", s.user, login.password) + "\n"
    return reply
