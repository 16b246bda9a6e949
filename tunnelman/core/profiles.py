"""Profiles: the TOML file format, where the file lives, strict loading and comment-preserving saves.

Called by every command and by the TUI. Loading uses tomllib and validates every key strictly:
an unknown key is an error with a did-you-mean, a bad value names the file and the dotted key.
Saving goes through tomlkit so the user's comments and layout survive, and is atomic (a temporary
file in the same directory, fsync, rename), so a crash never leaves half a file.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, cast, get_args

from tunnelman.core.errors import ConfigError, ProfileNotFound
from tunnelman.core.files import atomic_write

PasswordSource = Literal["keyring", "prompt", "none", "iam", "secretsmanager"]
SSLMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
Engine = Literal["sshtunnel", "openssh"]

ENV_CONFIG = "TUNNELMAN_CONFIG"
DEFAULT_DB_PORT = 5432
DEFAULT_SSH_PORT = 22
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def default_config_path() -> Path:
    """`profiles.toml` in the platform's per-user config directory."""
    import platformdirs  # deferred: only needed when no path was given

    return Path(platformdirs.user_config_dir("tunnelman")) / "profiles.toml"


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The profile file: `--config`, else `$TUNNELMAN_CONFIG`, else the platform default."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get(ENV_CONFIG)
    if env:
        return Path(env).expanduser()
    return default_config_path()


@dataclass(frozen=True)
class Bastion:
    """`[user@]host[:port]` of the SSH jump host."""

    host: str
    user: str | None = None
    port: int = DEFAULT_SSH_PORT

    def __str__(self) -> str:
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port != DEFAULT_SSH_PORT else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{user}{host}{port}"

    @property
    def login(self) -> str:
        """The SSH user: the given one, else the local user name (as OpenSSH does)."""
        if self.user:
            return self.user
        import getpass

        return getpass.getuser()


@dataclass(frozen=True)
class Endpoint:
    """`host[:port]` of the database as the bastion sees it."""

    host: str
    port: int = DEFAULT_DB_PORT

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_DB_PORT else f"{host}:{self.port}"


@dataclass(frozen=True)
class Profile:
    """One saved way into one database. Paths are already `~`-expanded."""

    name: str
    description: str = ""
    bastion: Bastion | None = None
    identity_file: Path | None = None
    known_hosts: Path = field(default_factory=lambda: Path("~/.ssh/known_hosts").expanduser())
    endpoint: Endpoint | None = None
    database: str = "postgres"
    user: str = "postgres"
    local_port: int | None = None
    password: PasswordSource = "keyring"
    secret: str | None = None
    sslmode: SSLMode = "prefer"
    sslrootcert: Path | None = None
    cluster: str | None = None
    region: str | None = None
    aws_profile: str | None = None
    engine: Engine = "sshtunnel"
    bastion_instance_id: str | None = None
    instance_connect: bool = False
    connect_timeout: int = 15
    keepalive: int = 15

    @property
    def uses_aws(self) -> bool:
        """Whether any of this profile's work needs boto3."""
        return bool(
            self.cluster
            or self.instance_connect
            or self.password in ("iam", "secretsmanager")
            or (self.endpoint is None and self.cluster)
        )

    def to_public_dict(self) -> dict[str, Any]:
        """A JSON-ready view (the `ls --json` shape). Never holds a secret: none are stored here."""
        out: dict[str, Any] = {"name": self.name}
        for f in fields(self):
            if f.name == "name":
                continue
            value = getattr(self, f.name)
            if isinstance(value, Bastion | Endpoint | Path):
                value = str(value)
            out[f.name] = value
        return out


# ----------------------------------------------------------------------------- schema

_Converter = Callable[[Any, str], Any]


def _expect_str(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise _bad(key, f"must be a string, not {_tname(value)}")
    return value


def _nonempty_str(value: Any, key: str) -> str:
    text = _expect_str(value, key).strip()
    if not text:
        raise _bad(key, "must not be empty")
    return text


def _path(value: Any, key: str) -> Path:
    return Path(_nonempty_str(value, key)).expanduser()


def _port(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(key, f"must be a port number (an integer 1-65535), not {_tname(value)}")
    if not 1 <= value <= 65535:
        raise _bad(key, f"must be a port number 1-65535, not {value}")
    return value


def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise _bad(key, f"must be a positive integer (seconds), not {value!r}")
    return value


def _bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise _bad(key, f"must be true or false, not {value!r}")
    return value


def _choice(options: Iterable[str]) -> _Converter:
    allowed = tuple(options)

    def convert(value: Any, key: str) -> str:
        text = _expect_str(value, key)
        if text not in allowed:
            guess = difflib.get_close_matches(text, allowed, n=1)
            hint = f" (did you mean '{guess[0]}'?)" if guess else ""
            raise _bad(key, f"must be one of {', '.join(allowed)}, not '{text}'{hint}")
        return text

    return convert


def parse_host_port(text: str, default_port: int) -> tuple[str, int]:
    """Split `host[:port]` or `[v6]:port`; raise ValueError with a reason."""
    text = text.strip()
    if not text:
        raise ValueError("is empty")
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError("has '[' without ']'")
        host, rest = text[1:close], text[close + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError("has text after ']' that is not ':port'")
        port_text = rest[1:] if rest else ""
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
    if not host or any(c.isspace() for c in host) or "/" in host:
        raise ValueError(f"has a bad host name '{host}'")
    if port_text:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"has a bad port '{port_text}' (use 1-65535)")
        return host, int(port_text)
    return host, default_port


def parse_bastion(text: str) -> Bastion:
    """Parse `[user@]host[:port]`; raise ValueError with a reason."""
    user: str | None = None
    if "@" in text:
        user, _, text = text.rpartition("@")
        if not user:
            raise ValueError("has an empty user before '@'")
    host, port = parse_host_port(text, DEFAULT_SSH_PORT)
    return Bastion(host=host, user=user, port=port)


def parse_endpoint(text: str) -> Endpoint:
    """Parse `host[:port]` (port 5432 by default); raise ValueError with a reason."""
    host, port = parse_host_port(text, DEFAULT_DB_PORT)
    return Endpoint(host=host, port=port)


def _bastion(value: Any, key: str) -> Bastion:
    try:
        return parse_bastion(_nonempty_str(value, key))
    except ValueError as exc:
        raise _bad(key, f"{exc}; expected [user@]host[:port]") from None


def _endpoint(value: Any, key: str) -> Endpoint:
    try:
        return parse_endpoint(_nonempty_str(value, key))
    except ValueError as exc:
        raise _bad(key, f"{exc}; expected host[:port]") from None


SCHEMA: dict[str, _Converter] = {
    "description": _expect_str,
    "bastion": _bastion,
    "identity_file": _path,
    "known_hosts": _path,
    "endpoint": _endpoint,
    "database": _nonempty_str,
    "user": _nonempty_str,
    "local_port": _port,
    "password": _choice(get_args(PasswordSource)),
    "secret": _nonempty_str,
    "sslmode": _choice(get_args(SSLMode)),
    "sslrootcert": _path,
    "cluster": _nonempty_str,
    "region": _nonempty_str,
    "aws_profile": _nonempty_str,
    "engine": _choice(get_args(Engine)),
    "bastion_instance_id": _nonempty_str,
    "instance_connect": _bool,
    "connect_timeout": _positive_int,
    "keepalive": _positive_int,
}
"""Every key a profile (or `[defaults]`) may hold, with its converter."""

PROFILE_KEYS: tuple[str, ...] = tuple(SCHEMA)
TOP_LEVEL_KEYS = ("profiles", "defaults")


class _BadValue(Exception):
    def __init__(self, key: str, reason: str) -> None:
        super().__init__(reason)
        self.key = key
        self.reason = reason


def _bad(key: str, reason: str) -> _BadValue:
    return _BadValue(key, reason)


def _tname(value: Any) -> str:
    return {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "a boolean",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """' (did you mean 'x'?)' or ''."""
    guess = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean '{guess[0]}'?)" if guess else ""


# ----------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class ProfileSet:
    """The loaded file: its path and its profiles, in file order."""

    path: Path
    profiles: dict[str, Profile]
    exists: bool = True

    def get(self, name: str) -> Profile:
        """The named profile, or ProfileNotFound naming the known ones."""
        try:
            return self.profiles[name]
        except KeyError:
            known = ", ".join(self.profiles) or "none"
            raise ProfileNotFound(
                f"no profile named '{name}' in {self.path}{did_you_mean(name, self.profiles)}",
                hint=f"profiles: {known}",
            ) from None

    def __iter__(self) -> Any:
        return iter(self.profiles.values())

    def __len__(self) -> int:
        return len(self.profiles)


def _convert_table(
    table: Mapping[str, Any], where: str, path: Path, *, allow_empty_name: bool = True
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{where}.{key}"
        converter = SCHEMA.get(key)
        if converter is None:
            guess = did_you_mean(key, SCHEMA)
            raise ConfigError(
                f"{path}: {dotted}: unknown key{guess}",
                hint=None if guess else f"known keys: {', '.join(SCHEMA)}",
            )
        try:
            out[key] = converter(value, dotted)
        except _BadValue as exc:
            raise ConfigError(f"{path}: {dotted}: {exc.reason}") from None
    return out


def parse_profiles(data: Mapping[str, Any], path: Path) -> dict[str, Profile]:
    """Validate a parsed TOML document into profiles. Raises ConfigError naming the dotted key."""
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            raise ConfigError(
                f"{path}: {key}: unknown top-level key{did_you_mean(key, TOP_LEVEL_KEYS)}",
                hint="profiles go in [profiles.NAME] tables, shared settings in [defaults]",
            )
    defaults_raw = data.get("defaults", {})
    if not isinstance(defaults_raw, dict):
        raise ConfigError(f"{path}: defaults: must be a table ([defaults])")
    defaults = _convert_table(defaults_raw, "defaults", path)
    profiles_raw = data.get("profiles", {})
    if not isinstance(profiles_raw, dict):
        raise ConfigError(f"{path}: profiles: must be a table of [profiles.NAME] tables")
    out: dict[str, Profile] = {}
    for name, table in profiles_raw.items():
        where = f"profiles.{name}"
        if not _NAME_RE.match(name):
            raise ConfigError(
                f"{path}: {where}: bad profile name '{name}'",
                hint="use letters, digits, '-', '_' or '.', starting with a letter or digit",
            )
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {where}: must be a table ([{where}])")
        values = {**defaults, **_convert_table(table, where, path)}
        if values.get("password") == "secretsmanager" and not (
            values.get("secret") or values.get("cluster")
        ):
            raise ConfigError(
                f"{path}: {where}.password: 'secretsmanager' needs a secret or a cluster",
                hint='add secret = "arn:aws:secretsmanager:…" or cluster = "ID"',
            )
        if values.get("instance_connect") and not values.get("bastion_instance_id"):
            raise ConfigError(
                f"{path}: {where}.instance_connect: needs bastion_instance_id",
                hint='add bastion_instance_id = "i-…"',
            )
        out[name] = Profile(name=name, **values)
    return out


def load(path: str | os.PathLike[str] | None = None, *, missing_ok: bool = True) -> ProfileSet:
    """Load and validate the profile file. A missing file is an empty set (unless missing_ok=False)."""
    resolved = config_path(path)
    try:
        raw = resolved.read_bytes()
    except FileNotFoundError:
        if missing_ok:
            return ProfileSet(path=resolved, profiles={}, exists=False)
        raise ConfigError(
            f"{resolved}: no such profile file",
            hint="create it with `tunnelman profile add` or copy profiles.example.toml",
        ) from None
    except IsADirectoryError:
        raise ConfigError(f"{resolved}: is a directory, not a profile file") from None
    except PermissionError:
        raise ConfigError(f"{resolved}: cannot read the profile file (permission denied)") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{resolved}:{line}: not valid UTF-8 text") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(_toml_error(resolved, exc)) from None
    return ProfileSet(path=resolved, profiles=parse_profiles(data, resolved))


def _toml_error(path: Path, exc: tomllib.TOMLDecodeError) -> str:
    message = str(exc)
    match = re.search(r"\(at line (\d+), column (\d+)\)", message)
    if match:
        reason = message[: match.start()].strip()
        return f"{path}:{match.group(1)}: invalid TOML: {reason} (column {match.group(2)})"
    lineno = getattr(exc, "lineno", None)
    where = f":{lineno}" if lineno else ""
    return f"{path}{where}: invalid TOML: {message}"


# ----------------------------------------------------------------------------- saving


def _to_toml_value(key: str, value: Any) -> Any:
    if isinstance(value, Path):
        home = str(Path.home())
        text = str(value)
        return "~" + text[len(home) :] if text == home or text.startswith(home + os.sep) else text
    if isinstance(value, Bastion | Endpoint):
        return str(value)
    return value


def profile_to_table(profile: Profile, *, base: Profile | None = None) -> dict[str, Any]:
    """The TOML keys for a profile: only those that differ from `base` (the defaults)."""
    reference = base or Profile(name=profile.name)
    out: dict[str, Any] = {}
    for f in fields(profile):
        if f.name == "name":
            continue
        value = getattr(profile, f.name)
        if value is None or value == getattr(reference, f.name):
            continue
        out[f.name] = _to_toml_value(f.name, value)
    return out


def save_profile(
    path: Path, name: str, values: Mapping[str, Any], *, overwrite: bool = False
) -> None:
    """Add or replace `[profiles.NAME]` with `values` (raw TOML values), keeping comments elsewhere.

    The values are validated first with the same rules as loading; nothing is written on error.
    """
    import tomlkit  # deferred: only writes need it

    if not _NAME_RE.match(name):
        raise ConfigError(
            f"bad profile name '{name}'",
            hint="use letters, digits, '-', '_' or '.', starting with a letter or digit",
        )
    text = path.read_text("utf-8") if path.exists() else ""
    try:
        doc = tomlkit.parse(text)
    except Exception as exc:  # tomlkit raises several types; all mean a broken file
        load(path)  # reports the syntax error with file and line
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    profiles = doc.get("profiles")
    if profiles is None:
        profiles = tomlkit.table(is_super_table=True)
        doc["profiles"] = profiles
    if name in profiles and not overwrite:
        raise ConfigError(
            f"{path}: profiles.{name}: a profile of that name exists",
            hint="pick another name or pass --force to replace it",
        )
    table = tomlkit.table()
    for key, value in values.items():
        if value is not None:
            table[key] = value
    if name in profiles:
        existing = profiles[name]
        # Keep the table object (and its comments) and update keys in place.
        for key in list(existing.keys()):
            if key not in values or values[key] is None:
                del existing[key]
        for key, value in table.items():
            existing[key] = value
    else:
        profiles[name] = table
    new_text = tomlkit.dumps(doc)
    parse_profiles(tomllib.loads(new_text), path)  # validate before writing
    atomic_write(path, new_text)


def delete_profile(path: Path, name: str) -> None:
    """Remove `[profiles.NAME]`, keeping the rest of the file (and its comments) as it was."""
    import tomlkit

    sets = load(path, missing_ok=False)
    sets.get(name)  # raises ProfileNotFound
    text = path.read_text("utf-8")
    doc = tomlkit.parse(text)
    profiles = cast(Any, doc["profiles"])
    del profiles[name]
    new_text = tomlkit.dumps(doc)
    # tomlkit keeps the blank line that separated the removed table: end as the file ended.
    tail = len(text) - len(text.rstrip("\n"))
    atomic_write(path, new_text.rstrip("\n") + "\n" * tail)


def with_overrides(profile: Profile, **changes: Any) -> Profile:
    """A copy of the profile with some fields changed (e.g. `local_port` from `--port`)."""
    return replace(profile, **changes)
