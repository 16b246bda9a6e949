"""ssh_config: what `~/.ssh/config` (or `ssh_config = "PATH"`) says about a profile's bastion.

Called by `tunnelman.core.tunnel` (both engines) and by `check` / `profile show`. When the
bastion names a `Host` in the file, its HostName, User, Port, IdentityFile, IdentitiesOnly,
ProxyJump, UserKnownHostsFile and ServerAliveInterval apply, as ssh applies them; a key the
profile (or `[defaults]`) states wins. `ssh_config = false` turns all of this off.

Values: where OpenSSH's ssh is installed, `ssh -G -F FILE ALIAS` is the exact resolver (Match,
tokens, Include and ssh's first-value-wins rule exactly as ssh itself), and a setting counts as
coming from the file when it differs from `ssh -G -F none`'s answer. Without ssh, a small reader
here evaluates Host blocks, Include, `Match all|host|originalhost` and the first-value rule (paramiko's
parser knows no Include and needs `invoke` for `Match exec`); a Match it cannot evaluate (exec,
user, canonical, …) is skipped with a note saying so. Lines: `ssh -G` gives none, so the origin
("~/.ssh/config line 4") is found by reading the Host blocks ourselves; a value set in a Match
block ssh evaluated is shown as coming from the file without a line. A host no Host line names
gets nothing from the file (a `Host *` alone changes no existing profile), so for it `effective`
runs no `ssh -G` at all: a tunnel start pays for ssh only when the file names its bastion or hop.

`$HOME` is honoured (ssh itself reads `~` from the passwd entry): the file is found from $HOME
here and handed to ssh with `-F`.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import shutil
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from tunnelman.core.errors import ConfigError
from tunnelman.core.logs import get_logger
from tunnelman.core.platform import process

if TYPE_CHECKING:
    from tunnelman.core.profiles import Bastion, Profile

__all__ = ["KEYS", "Resolution", "Setting", "config_file", "effective", "resolve"]

KEYS = (
    "hostname",
    "user",
    "port",
    "identityfile",
    "identitiesonly",
    "proxyjump",
    "userknownhostsfile",
    "serveraliveinterval",
)
"""The ssh_config keywords tunnelman applies (lower case, as `ssh -G` prints them)."""

_INCLUDE_DEPTH = 16  # as ssh's READCONF_MAX_DEPTH
_SSH_G_TIMEOUT = 10.0

_log = get_logger("ssh_config")


@dataclass(frozen=True)
class Setting:
    """One value the file gives, and where (`origin`, e.g. "~/.ssh/config line 4")."""

    key: str
    value: str
    origin: str


@dataclass(frozen=True)
class Resolution:
    """What the ssh_config file says about one host name."""

    path: Path | None
    settings: dict[str, Setting] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    resolver: str = "none"
    named: bool = False  # a Host line names this host (a pattern other than a bare `*`)


def _home() -> Path:
    home = os.environ.get("HOME") or os.environ.get("USERPROFILE")
    return Path(home) if home else Path.home()


def _shown(path: Path) -> str:
    home = str(_home())
    text = str(path)
    if text.startswith(home + os.sep):
        return "~" + text[len(home) :]
    return text


def config_file(setting: bool | Path) -> Path | None:
    """The ssh_config file a profile uses, or None (turned off, or no ~/.ssh/config)."""
    if setting is False:
        return None
    if setting is True:
        path = user_config()
        return path if path.is_file() else None
    if not setting.is_file():
        raise ConfigError(
            f"ssh_config file {setting} does not exist or is not a file",
            hint="fix ssh_config in the profile (true for ~/.ssh/config, false for none)",
        )
    return setting


def passwd_config() -> Path | None:
    """The file ssh reads without -F: ~/.ssh/config of the passwd entry's home (None: no passwd)."""
    import importlib

    try:
        pwd = importlib.import_module("pwd")
        uid = getattr(os, "getuid")()  # noqa: B009 - POSIX only; mypy --platform win32 has none
        return Path(pwd.getpwuid(uid).pw_dir) / ".ssh" / "config"
    except (ImportError, KeyError, AttributeError):
        return None


def user_config() -> Path:
    """~/.ssh/config, `~` from $HOME."""
    return _home() / ".ssh" / "config"


# ----------------------------------------------------------------------------- reading the file


@dataclass(frozen=True)
class _Line:
    file: Path
    number: int
    keyword: str
    args: tuple[str, ...]


def _split(text: str) -> tuple[str, tuple[str, ...]] | None:
    """`Keyword value…` or `Keyword=value`, with double quotes, as ssh splits a line."""
    text = text.strip()
    if not text or text.startswith("#"):
        return None
    words: list[str] = []
    current: list[str] = []
    quoted = False
    started = False
    for char in text:
        if char == '"':
            quoted = not quoted
            started = True
            continue
        if not quoted and (char.isspace() or (char == "=" and not words and started)):
            if started:
                words.append("".join(current))
                current, started = [], False
            continue
        current.append(char)
        started = True
    if started:
        words.append("".join(current))
    if not words:
        return None
    keyword, *args = words
    if "=" in keyword and not args:
        keyword, _, rest = keyword.partition("=")
        args = [rest]
    return keyword.lower(), tuple(a for a in args if a != "=")


def _read(path: Path, base: Path, depth: int = 0) -> list[_Line]:
    """The file's lines with every Include read in place (relative names: from `base`)."""
    try:
        text = path.read_text("utf-8", errors="replace")
    except OSError as exc:
        raise ConfigError(f"cannot read ssh_config file {path}: {exc.strerror or exc}") from None
    lines: list[_Line] = []
    for number, raw in enumerate(text.splitlines(), 1):
        split = _split(raw)
        if split is None:
            continue
        keyword, args = split
        if keyword == "include":
            if depth >= _INCLUDE_DEPTH:
                raise ConfigError(f"{_shown(path)} line {number}: Include nested too deeply")
            for pattern in args:
                full = os.path.expanduser(pattern) if pattern.startswith("~") else pattern
                if pattern.startswith("~"):
                    full = str(_home()) + pattern[1:]
                if not os.path.isabs(full):
                    full = str(base / full)
                for name in sorted(glob.glob(full)):
                    if Path(name).is_file():
                        lines += _read(Path(name), base, depth + 1)
            continue
        lines.append(_Line(path, number, keyword, args))
    return lines


def _patterns_match(patterns: tuple[str, ...], host: str) -> bool:
    """ssh's pattern-list rule: some pattern matches and no negated one does."""
    matched = False
    for item in patterns:
        for pattern in item.split(","):
            negated = pattern.startswith("!")
            if fnmatch.fnmatchcase(host.lower(), pattern.lstrip("!").lower()):
                if negated:
                    return False
                matched = True
    return matched


def _names(patterns: tuple[str, ...], host: str) -> bool:
    """Whether a Host line names `host` itself, not merely `*` (which names every host)."""
    specific = tuple(p for item in patterns for p in item.split(",") if p != "*")
    return _patterns_match(specific, host) and _patterns_match(patterns, host)


def _scan(
    path: Path, host: str
) -> tuple[dict[str, tuple[str, _Line]], list[str], list[_Line], bool]:
    """First value of each KEY in blocks that match `host`; notes; the Match-block lines; whether
    a Host line names the host (`_names`)."""
    base = path.parent if path.parent.name == ".ssh" else _home() / ".ssh"
    found: dict[str, tuple[str, _Line]] = {}
    notes: list[str] = []
    in_match: list[_Line] = []
    active = True
    block_is_match = False
    named = False
    for line in _read(path, base):
        if line.keyword == "host":
            active, block_is_match = _patterns_match(line.args, host), False
            if _names(line.args, host):
                named = True
            continue
        if line.keyword == "match":
            block_is_match = True
            active = _match_applies(line, host, notes)
            continue
        if line.keyword not in KEYS:
            continue
        if block_is_match:
            in_match.append(line)
        if active and line.keyword not in found and line.args:
            found[line.keyword] = (" ".join(line.args), line)
    return found, notes, in_match, named


def _match_applies(line: _Line, host: str, notes: list[str]) -> bool:
    """Evaluate `Match all | host P | originalhost P`; anything else: False, with a note."""
    args = list(line.args)
    result = True
    while args:
        criterion = args.pop(0).lower()
        negated = criterion.startswith("!")
        criterion = criterion.lstrip("!")
        if criterion == "all":
            value = True
        elif criterion in ("host", "originalhost") and args:
            value = _patterns_match((args.pop(0),), host)
        else:
            notes.append(
                f"{_shown(line.file)} line {line.number}: `Match {' '.join(line.args)}` cannot be "
                "evaluated without OpenSSH's ssh (not on PATH); its settings are ignored"
            )
            return False
        result = result and (value != negated)
    return result


# ----------------------------------------------------------------------------- ssh -G


def _find_ssh() -> str | None:
    return shutil.which("ssh", path=process.ssh_search_path(None))


def _ssh_g(ssh: str, config: str, host: str) -> dict[str, str]:
    try:
        done = subprocess.run(
            [ssh, "-G", "-F", config, "--", host],
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=_SSH_G_TIMEOUT,
            check=False,
            **process.ssh_child_plan().popen,  # no console window on Windows
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"`ssh -G` could not read {config}: {exc}") from None
    if done.returncode != 0:
        reason = done.stderr.decode("utf-8", errors="replace").strip().splitlines()
        raise ConfigError(
            f"ssh cannot read {config}: {reason[-1] if reason else 'ssh -G failed'}",
            hint="fix that file, or set ssh_config = false in the profile to ignore it",
        )
    values: dict[str, str] = {}
    for raw in done.stdout.decode("utf-8", errors="replace").splitlines():
        key, _, value = raw.partition(" ")
        if key in KEYS and key not in values:
            values[key] = value.strip()
    return values


def _same(written: str, printed: str) -> bool:
    """Whether the file's text is the value `ssh -G` printed (it lower-cases and expands some)."""
    a, b = written.strip().lower(), printed.strip().lower()
    return a == b or a.replace("~", str(_home()).lower(), 1) == b or b.endswith(a.lstrip("~"))


def resolve(host: str, path: Path | None, *, named_only: bool = False) -> Resolution:
    """What `path` (an ssh_config file) says about `host`, for KEYS; empty when path is None.

    `named_only`: when no Host line names `host`, return no settings without running `ssh -G`.
    `effective` and `hop_through_config` apply the file only to a host it names, so for any
    other host (a `Host *`-only file, the usual case) the two `ssh -G` runs bought nothing.
    """
    if path is None:
        return Resolution(path=None)
    found, notes, in_match, named = _scan(path, host)
    ssh = _find_ssh()
    if named_only and not named:
        # `named` comes from our own reading of the Host lines, not from ssh -G, so skipping it
        # changes nothing the callers use: with ssh the notes were empty too.
        return Resolution(path=path, notes=() if ssh is not None else tuple(notes))
    settings: dict[str, Setting] = {}
    if ssh is not None:
        given = _ssh_g(ssh, str(path), host)
        plain = _ssh_g(ssh, os.devnull, host)
        for key in KEYS:
            if key not in given:
                continue
            written = key in found and _same(found[key][0], given[key])
            if given[key] == plain.get(key) and not written:
                continue  # ssh's default, not the file's (a Host line may say the same)
            # A Host line's value ssh did not take was beaten by an earlier Match block.
            if key in found and _same(found[key][0], given[key]):
                line = found[key][1]
                origin = f"{_shown(line.file)} line {line.number}"
            else:
                lines = [f"line {m.number}" for m in in_match if m.keyword == key]
                origin = f"{_shown(path)} (a Match block, {', '.join(lines) or 'evaluated by ssh'})"
            settings[key] = Setting(key, given[key], origin)
        return Resolution(path=path, settings=settings, resolver="ssh -G", named=named)
    for key, (value, line) in found.items():
        settings[key] = Setting(key, value, f"{_shown(line.file)} line {line.number}")
    return Resolution(
        path=path,
        settings=settings,
        notes=tuple(notes),
        resolver="built-in reader",
        named=named,
    )


# ----------------------------------------------------------------------------- applying


def _expand(value: str, *, host: str, user: str, port: int) -> Path:
    import getpass

    tokens = {"%%": "%", "%d": str(_home()), "%u": getpass.getuser(), "%h": host}
    tokens |= {"%r": user, "%p": str(port)}
    out = value
    for token, text in tokens.items():
        out = out.replace(token, text)
    if out.startswith("~"):
        out = str(_home()) + out[1:]
    return Path(out)


def effective(profile: Profile) -> tuple[Profile, list[str]]:
    """The profile with ssh_config applied, and one provenance line per value it took or lost.

    The returned profile has `ssh_config = False` (applying it again changes nothing) and the
    bastion's real HostName/Port/User, IdentityFile, known_hosts file, keepalive and jump hops.
    """
    from tunnelman.core import profiles as prof

    bastion = profile.bastion
    if bastion is None or profile.ssh_config is False:
        return profile, []
    path = config_file(profile.ssh_config)
    found = resolve(bastion.host, path, named_only=True)
    lines: list[str] = list(found.notes)
    if not found.named or not found.settings:
        # Only a bastion the file names: a `Host *` alone changes no existing profile.
        return replace(profile, ssh_config=False), lines
    settings = found.settings
    stated = profile.stated
    changes: dict[str, object] = {"ssh_config": False}

    def took(key: str, shown: str) -> None:
        lines.append(f"{key} {shown} (from {settings[key].origin})")

    def lost(key: str, own: str) -> None:
        lines.append(
            f"{key} {settings[key].value} in {settings[key].origin} is overridden by the "
            f"profile's {own}"
        )

    host, user, port = bastion.host, bastion.user, bastion.port
    if "hostname" in settings:
        host = settings["hostname"].value
        took("hostname", host)
    if "user" in settings:
        if bastion.user is None:
            user = settings["user"].value
            took("user", user)
        else:
            lost("user", bastion.user)
    if "port" in settings:
        text = settings["port"].value
        if bastion.port_given:
            lost("port", str(bastion.port))
        elif text.isdigit() and 1 <= int(text) <= 65535:
            port = int(text)
            took("port", text)
    changes["bastion"] = prof.Bastion(host=host, user=user, port=port, port_given=True)
    login = user or prof.Bastion(host=host).login
    if "identityfile" in settings and not profile.instance_connect:
        first = settings["identityfile"].value.split()[0]
        if "identity_file" in stated:
            lost("identityfile", f"identity_file {profile.identity_file}")
        elif first.lower() != "none":
            key = _expand(first, host=host, user=login, port=port)
            changes["identity_file"] = key
            took("identityfile", _shown(key))
    if "identitiesonly" in settings:
        took("identitiesonly", settings["identitiesonly"].value)
        lines[-1] += "; tunnelman offers only that key (or ssh-agent's) either way"
    if "userknownhostsfile" in settings:
        first = settings["userknownhostsfile"].value.split()[0]
        if "known_hosts" in stated:
            lost("userknownhostsfile", f"known_hosts {profile.known_hosts}")
        elif first.lower() != "none":
            known = _expand(first, host=host, user=login, port=port)
            changes["known_hosts"] = known
            took("userknownhostsfile", _shown(known))
    if "serveraliveinterval" in settings:
        text = settings["serveraliveinterval"].value
        low, high = prof.KEEPALIVE_RANGE
        if "keepalive" in stated:
            lost("serveraliveinterval", f"keepalive {profile.keepalive}")
        elif text.isdigit() and int(text) > 0:
            changes["keepalive"] = max(low, min(high, int(text)))
            took("serveraliveinterval", text)
    if "proxyjump" in settings:
        text = settings["proxyjump"].value
        if "jump" in stated:
            lost("proxyjump", "jump " + ",".join(str(h) for h in profile.jump))
        elif text.lower() != "none":
            hops: list[prof.Bastion] = []
            for item in text.split(","):
                try:
                    hop = prof.parse_bastion(item.strip().removeprefix("ssh://"))
                except ValueError as exc:
                    raise ConfigError(
                        f"ProxyJump {item!r} in {settings['proxyjump'].origin} {exc}",
                        hint="expected [user@]host[:port]",
                    ) from None
                hops.append(hop_through_config(hop, path))
            changes["jump"] = tuple(hops)
            took("proxyjump", text)
    return replace(profile, **changes), lines  # type: ignore[arg-type]


def hop_through_config(hop: Bastion, path: Path | None) -> Bastion:
    """A jump host with its own Host entry's HostName, User and Port (as ssh resolves hops)."""
    from tunnelman.core import profiles as prof

    if path is None:
        return hop
    found = resolve(hop.host, path, named_only=True)
    settings = found.settings if found.named else {}
    host = settings["hostname"].value if "hostname" in settings else hop.host
    user = hop.user or (settings["user"].value if "user" in settings else None)
    port = hop.port
    text = settings["port"].value if "port" in settings else ""
    if not hop.port_given and text.isdigit():
        port = int(text)
    return prof.Bastion(host=host, user=user, port=port, port_given=True)
