"""Profiles: the TOML file format, where the file lives, strict loading and comment-preserving saves.

Called by every command and by the TUI. Loading uses tomllib and validates every key strictly:
an unknown key is an error with a did-you-mean, a bad value names the file and the dotted key, and
every value is range-checked here so that nothing the file says can crash `check`, `up`, a client
or the agent later. All the problems of a file are reported at once (`ConfigProblems`), as a linter
does. Paths (in the file, `--config`, `$TUNNELMAN_CONFIG`) are checked by `user_path` before any
file is touched; the profile file itself is opened without blocking and only read when it is a
regular file, so a FIFO given as `--config` is refused instead of hanging. `printable` is how any
text from the file is shown on a terminal (`ls`, the TUI, error lines).
Saving goes through tomlkit so the user's comments and layout survive, and is atomic (a temporary
file in the same directory, fsync, rename), so a crash never leaves half a file.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tomllib
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, Self, cast, get_args

from tunnelman.core.errors import ConfigError, ProfileNotFound, registered
from tunnelman.core.files import atomic_write, file_kind

PasswordSource = Literal["keyring", "prompt", "none", "iam", "secretsmanager"]
SSLMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
Engine = Literal["sshtunnel", "openssh"]
# How the bastion is reached: a TCP connection to its port 22 (ssh, the default); an AWS Systems
# Manager session through the instance's SSM agent (ssm); or an EC2 Instance Connect Endpoint's
# websocket to the instance's port 22 (eice). The last two need bastion_instance_id.
Transport = Literal["ssh", "ssm", "eice"]
# The way a tunnel travels, from `transport` and whether there is a bastion (`Profile.hop`): SSH
# over TCP to the bastion; SSH to the bastion over an SSM session; SSM port forwarding straight to
# the endpoint (no SSH, a `transport = "ssm"` profile without a bastion); SSH over EICE.
Hop = Literal["tcp", "ssm", "ssm-forward", "eice"]

ENV_CONFIG = "TUNNELMAN_CONFIG"
DEFAULT_DB_PORT = 5432
DEFAULT_SSH_PORT = 22
# fullmatch only: `$` would also accept a name ending in a newline, which then breaks the
# `[name]` line of pg_service.conf.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
NAME_HINT = "use letters, digits, '-', '_' or '.', starting with a letter or digit, at most 63"

CONNECT_TIMEOUT_RANGE = (1, 3600)
"""Seconds; past an hour the socket timeout is a hang in all but name (and 10**12 overflows)."""
LINGER_MAX = 86400
"""Seconds a one-shot's tunnel may linger with the agent: a day; longer is `up --detach`'s job."""
KEEPALIVE_RANGE = (1, 3600)
"""Seconds between keepalives; the dead-link probe and TCP_USER_TIMEOUT are derived from it."""
MAX_TEXT = 4096
"""Characters in any string value: far below what argv, libpq or AWS take, far above real use."""
MAX_HOST = 253
"""Characters in a DNS name (each dot-separated label at most 63)."""
MAX_NAME_BYTES = 255
"""Bytes in one component of a path (NAME_MAX on Linux and macOS, 255 UTF-16 units on NTFS)."""
MAX_PATH_BYTES = 4095
"""Bytes in a whole path (PATH_MAX less its NUL on Linux)."""
MAX_FILE_BYTES = 16 << 20
"""A profile file is a few KiB; refusing more keeps a wrong `--config` from filling memory."""
MAX_PROBLEMS_SHOWN = 20

_REGION_RE = re.compile(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?")  # botocore's own rule
_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
SSM_PREFIX = "ssm:"
# An SSM parameter: a name or /path, or a parameter ARN; an optional :VERSION or :LABEL.
_SSM_NAME_RE = re.compile(
    r"(?:arn:aws[a-z-]*:ssm:[a-z0-9-]+:\d{12}:parameter)?/?[A-Za-z0-9_.\-/]+(?::[A-Za-z0-9_.\-]+)?"
)
_ZONE_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_URL_DELIMITERS = frozenset("@?#[]\\%<>\"'`{}|^,;=!$&()*+~")
# Bidirectional overrides and isolates: they reorder what a terminal shows ("Trojan Source").
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


# ----------------------------------------------------------------------------- text and paths


def _escape_char(char: str) -> str:
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _unsafe(char: str) -> bool:
    return char in _BIDI or unicodedata.category(char) in ("Cc", "Cs", "Zl", "Zp")


def printable(text: str) -> str:
    """`text` safe for a terminal: control characters (ESC, NUL, CR, newline, tab, DEL, C1),
    bidirectional overrides, line separators and lone surrogates shown as `\\x1b`-style escapes.

    Everything else (accents, CJK, emoji) is kept. Used for every text from the profile file that
    reaches a terminal: `ls`, `profile show`, the TUI, error lines.
    """
    if text.isprintable():  # the common case: no scan per character
        return text
    return "".join(_escape_char(c) if _unsafe(c) else c for c in text)


def valid_name(name: object) -> bool:
    """Whether `name` may name a profile (a `[profiles.NAME]` table, a pg_service section)."""
    return isinstance(name, str) and _NAME_RE.fullmatch(name) is not None


def _show_key(key: object) -> str:
    """A key as TOML would spell it: bare when it can be, else quoted with escapes."""
    text = key if isinstance(key, str) else str(key)
    if _BARE_KEY_RE.fullmatch(text):
        return text
    return '"' + printable(text.replace("\\", "\\\\").replace('"', '\\"')) + '"'


def _show(value: Any, limit: int = 60) -> str:
    """A value for an error message: short, one line, never a container's (deep) repr."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        # Past ~4300 digits str(int) raises ValueError; long before that it is unreadable.
        return (
            str(value) if value.bit_length() <= 64 else f"an integer of {value.bit_length()} bits"
        )
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        shown = printable(value[:limit]) + ("…" if len(value) > limit else "")
        return f"'{shown}'"
    return _tname(value)


def _text_problem(text: str, *, controls: bool = False) -> str | None:
    """Why a string cannot be used, or None. `controls`: allow control characters (descriptions)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"holds a lone surrogate ({_escape_char(text[exc.start])}), which is not text"
    if len(text) > MAX_TEXT:
        return f"is {len(text)} characters long; at most {MAX_TEXT} are allowed"
    if "\0" in text:
        return "holds a NUL character (\\x00); remove it"
    if not controls:
        for char in text:
            if unicodedata.category(char) == "Cc":
                return f"holds a control character ({_escape_char(char)}); remove it"
    return None


def _fs_encodable(text: str) -> bool:
    try:
        os.fsencode(text)
    except UnicodeError:
        return False
    return True


def _path_problem(text: str, *, from_os: bool = False) -> tuple[Path | None, str | None]:
    """(the `~`-expanded path, None) or (None, why it cannot be a path here).

    `from_os`: the text came from argv or the environment, where a file name that is not UTF-8
    arrives as surrogate escapes and a newline is merely odd; only NUL is impossible there.
    """
    if from_os:
        problem = None
        if "\0" in text:
            problem = "holds a NUL character (\\x00); remove it"
        elif not _fs_encodable(text):
            problem = "holds characters that cannot be in a file name here"
    else:
        problem = _text_problem(text)
    if problem:
        return None, problem
    try:
        path = Path(text).expanduser()
    except RuntimeError:
        user = text[1:].split("/", 1)[0].split("\\", 1)[0]
        if user:
            return (
                None,
                f"starts with '~{printable(user)}', but there is no user '{printable(user)}'",
            )
        return None, "starts with '~', but the home directory is unknown (set HOME)"
    encoded = os.fsencode(path)
    for part in encoded.replace(b"\\", b"/").split(b"/"):
        if len(part) > MAX_NAME_BYTES:
            name = _show(os.fsdecode(part), 24)
            return None, (
                f"has a name of {len(part)} bytes ({name}); the system allows {MAX_NAME_BYTES}"
            )
    if len(encoded) > MAX_PATH_BYTES:
        return None, f"is {len(encoded)} bytes long; the system allows {MAX_PATH_BYTES}"
    return path, None


def user_path(text: str | os.PathLike[str], what: str) -> Path:
    """A path a person gave (`--config`, an environment variable), `~`-expanded and checked.

    Raises ConfigError naming `what` for a NUL byte, `~nosuchuser`, a name longer than the system
    allows, so that the problem is one line here instead of a traceback wherever the path is opened.
    """
    raw = os.fspath(text)
    path, problem = _path_problem(raw, from_os=True)
    if path is None:
        raise ConfigError(f"{what} {_show(raw, 80)}: {problem}")
    return path


def default_config_path() -> Path:
    """`profiles.toml` in the platform's per-user config directory."""
    import platformdirs  # deferred: only needed when no path was given

    return Path(platformdirs.user_config_dir("tunnelman")) / "profiles.toml"


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The profile file: `--config`, else `$TUNNELMAN_CONFIG`, else the platform default."""
    if explicit:
        return user_path(explicit, "profile file (--config or $TUNNELMAN_CONFIG)")
    env = os.environ.get(ENV_CONFIG)
    if env:
        return user_path(env, f"profile file (${ENV_CONFIG})")
    return default_config_path()


@dataclass(frozen=True)
class Bastion:
    """`[user@]host[:port]` of the SSH jump host."""

    host: str
    user: str | None = None
    port: int = DEFAULT_SSH_PORT
    # Whether the text named the port: an unstated port may come from ~/.ssh/config.
    port_given: bool = field(default=True, compare=False, repr=False)

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
    group: str | None = None  # the TUI lists profiles under a heading per group
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
    transport: Transport = "ssh"
    bastion_instance_id: str | None = None
    instance_connect: bool = False
    connect_timeout: int = 15
    keepalive: int = 15
    ssh_config: bool | Path = True
    jump: tuple[Bastion, ...] = ()
    linger: int = 0  # seconds a one-shot's tunnel stays with the agent after it; 0: off
    # The keys the file (the profile or [defaults]) set: those win over ~/.ssh/config.
    stated: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    @property
    def uses_aws(self) -> bool:
        """Whether any of this profile's work needs boto3."""
        return bool(
            self.cluster
            or self.instance_connect
            or self.transport != "ssh"
            or self.password in ("iam", "secretsmanager")
            or (self.endpoint is None and self.cluster)
        )

    @property
    def hop(self) -> Hop:
        """The way the tunnel travels: what `route`, `transport.describe` and the engine choice
        (`tunnel.open_tunnel`: "ssm-forward" is the SSM engine's) all follow."""
        if self.transport == "ssm":
            return "ssm" if self.bastion is not None else "ssm-forward"
        return "eice" if self.transport == "eice" else "tcp"

    @property
    def instance_text(self) -> str:
        """The instance an AWS transport reaches, for messages ("?" when the profile has none)."""
        return self.bastion_instance_id or "?"

    @property
    def route(self) -> str:
        """How the database is reached, for messages ("via …"): the bastion, and the AWS way to
        it when the transport is not plain TCP (`transport.describe` says it for the TUI)."""
        hop = self.hop
        if hop == "ssm-forward":
            return f"an SSM session to {self.instance_text}"
        if hop == "ssm":
            return f"{self.bastion} over an SSM session to {self.instance_text}"
        if hop == "eice":
            return (
                f"{self.bastion} through an EC2 Instance Connect Endpoint to {self.instance_text}"
            )
        return str(self.bastion) if self.bastion is not None else "no bastion"

    def to_public_dict(self) -> dict[str, Any]:
        """A JSON-ready view (the `ls --json` shape). Never holds a secret: none are stored here."""
        out: dict[str, Any] = {"name": self.name}
        for f in fields(self):
            if f.name in ("name", "stated"):
                continue
            value = getattr(self, f.name)
            if isinstance(value, Bastion | Endpoint | Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = [str(v) for v in value]
            out[f.name] = value
        return out


def require_route(profile: Profile, *, endpoint: bool = True) -> None:
    """The profile names the bastion and (unless `endpoint=False`) the database endpoint.

    The one check of the way in before any work: tunnels (`Tunnel._require_route`), the bare SSH
    connection (`ssh.connect`, which needs only the bastion) and the doctor's config step. A
    tunnel with `transport = "ssm"` needs no bastion (SSM port forwarding to the endpoint).
    """
    if endpoint and profile.endpoint is None:
        raise ConfigError(
            f"profile '{profile.name}' has no endpoint",
            hint='add endpoint = "HOST[:PORT]" (the database as the bastion sees it)',
        )
    if profile.bastion is None and not (endpoint and profile.transport == "ssm"):
        # SSM port forwarding needs no bastion: the instance's SSM agent reaches the endpoint.
        raise ConfigError(
            f"profile '{profile.name}' has no bastion",
            hint='add bastion = "user@host" to the profile',
        )


# ----------------------------------------------------------------------------- schema

_Converter = Callable[[Any, str], Any]


def _expect_str(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise _bad(key, f"must be a string, not {_tname(value)}")
    problem = _text_problem(value)
    if problem:
        raise _bad(key, problem)
    return value


def _description(value: Any, key: str) -> str:
    """Any one-line-ish text: control characters are kept here and escaped where shown."""
    if not isinstance(value, str):
        raise _bad(key, f"must be a string, not {_tname(value)}")
    problem = _text_problem(value, controls=True)
    if problem:
        raise _bad(key, problem)
    return value


def _group(value: Any, key: str) -> str | None:
    """A heading of the TUI's list: text as a description is (escaped where shown); "" is none."""
    text = _description(value, key).strip()
    return text or None


def _nonempty_str(value: Any, key: str) -> str:
    text = _expect_str(value, key).strip()
    if not text:
        raise _bad(key, "must not be empty")
    return text


def _word(value: Any, key: str) -> str:
    """An identifier (cluster id, instance id, AWS profile, secret): no spaces inside."""
    text = _nonempty_str(value, key)
    if any(c.isspace() for c in text):
        raise _bad(key, f"must not hold spaces, not {_show(text)}")
    return text


def _aws_ref(value: Any, key: str) -> str:
    """`secret` / `cluster`: an id, name or ARN, or `ssm:/NAME` (read from SSM Parameter Store)."""
    text = _word(value, key)
    if text.startswith(SSM_PREFIX):
        name = text[len(SSM_PREFIX) :]
        if not name:
            raise _bad(key, 'names no SSM parameter; expected "ssm:/NAME"')
        if not _SSM_NAME_RE.fullmatch(name):
            raise _bad(
                key,
                f"{_show(text)} is not an SSM parameter name (letters, digits and _.-/ only)",
            )
    return text


def _region(value: Any, key: str) -> str:
    text = _nonempty_str(value, key)
    if not _REGION_RE.fullmatch(text):
        raise _bad(key, f"must be an AWS region name such as 'us-east-2', not {_show(text)}")
    return text


def _path(value: Any, key: str) -> Path:
    path, problem = _path_problem(_nonempty_str(value, key))
    if path is None:
        raise _bad(key, str(problem))
    return path


def _port(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(key, f"must be a port number (an integer 1-65535), not {_tname(value)}")
    if not 1 <= value <= 65535:
        raise _bad(key, f"must be a port number 1-65535, not {_show(value)}")
    return value


def _seconds(bounds: tuple[int, int]) -> _Converter:
    low, high = bounds

    def convert(value: Any, key: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(key, f"must be a whole number of seconds {low}-{high}, not {_show(value)}")
        if not low <= value <= high:
            raise _bad(key, f"must be {low}-{high} seconds, not {_show(value)}")
        return value

    return convert


_DURATION_RE = re.compile(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
DURATION_HINT = 'a duration such as "90s", "10m", "1h30m" (or 0 / "off")'


def parse_duration(text: str) -> int:
    """Seconds in "90s", "10m", "1h30m", a bare number of seconds, or "off"/"0" (0).

    ValueError (a reason a person can act on) for anything else or more than LINGER_MAX."""
    raw = text.strip().lower()
    if raw in ("off", "0", "no", "false"):
        return 0
    if raw.isdigit():
        seconds = int(raw)
    else:
        match = _DURATION_RE.fullmatch(raw)
        if not raw or match is None:
            raise ValueError(f"{text!r} is not {DURATION_HINT}")
        hours, minutes, secs = (int(g) if g else 0 for g in match.groups())
        seconds = hours * 3600 + minutes * 60 + secs
    if seconds > LINGER_MAX:
        raise ValueError(f"{text!r} is more than a day ({LINGER_MAX} s)")
    return seconds


def _duration(value: Any, key: str) -> int:
    if isinstance(value, bool):
        raise _bad(key, f"must be {DURATION_HINT}, not {_show(value)}")
    if isinstance(value, int):
        if not 0 <= value <= LINGER_MAX:
            raise _bad(key, f"must be 0-{LINGER_MAX} seconds, not {_show(value)}")
        return value
    if not isinstance(value, str):
        raise _bad(key, f"must be {DURATION_HINT}, not {_tname(value)}")
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise _bad(key, str(exc)) from None


def _bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise _bad(key, f"must be true or false, not {_show(value)}")
    return value


def _choice(options: Iterable[str]) -> _Converter:
    allowed = tuple(options)

    def convert(value: Any, key: str) -> str:
        if not isinstance(value, str):
            raise _bad(key, f"must be one of {', '.join(allowed)}, not {_tname(value)}")
        if value not in allowed:
            guess = did_you_mean(value, allowed)
            raise _bad(key, f"must be one of {', '.join(allowed)}, not {_show(value)}{guess}")
        return value

    return convert


def _idna_check(host: str) -> None:
    """`host.encode("idna")` (what the socket module does), UnicodeError when that fails.

    An ASCII name gets the codec's own ASCII rule without importing it (encodings.idna and
    stringprep cost milliseconds on every one-shot): every label but the last 1-63 characters,
    the last (empty after a trailing dot) under 64.
    """
    if not host.isascii():
        host.encode("idna")
        return
    *labels, last = host.split(".")
    if any(not 0 < len(label) < 64 for label in labels) or len(last) >= 64:
        raise UnicodeError("label empty or too long")


def _host_problem(host: str) -> str | None:
    """Why `host` cannot be resolved, or None. What getaddrinfo would choke on, found now."""
    if not host or any(c.isspace() for c in host) or "/" in host:
        return f"has a bad host name {_show(host)}"
    problem = _text_problem(host)
    if problem:
        return f"has a host name that {problem}"
    if ":" in host:  # an IPv6 literal, maybe with a %zone: no DNS labels, but a real address
        import ipaddress

        address, _, zone = host.partition("%")
        try:
            ipaddress.IPv6Address(address)
        except ValueError:
            return f"has a bad IPv6 address {_show(host)}"
        if "%" in host and not _ZONE_RE.fullmatch(zone):
            return f"has a bad IPv6 zone {_show(zone)} in {_show(host)}"
        return None
    bad = next((c for c in host if c in _URL_DELIMITERS), None)
    if bad is not None:
        # No DNS name holds these, and each one cuts a URI (postgresql://, jdbc:) in the wrong place.
        return f"has a bad host name {_show(host)} (no {bad!r} in a host name)"
    if len(host) > MAX_HOST:
        return f"has a host name of {len(host)} characters; DNS allows {MAX_HOST}"
    try:
        _idna_check(host)
    except UnicodeError:
        return (
            f"has a bad host name {_show(host)} (each dot-separated part must be 1-63 characters)"
        )
    return None


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
    problem = _host_problem(host)
    if problem:
        raise ValueError(problem)
    if port_text:
        # isascii: str.isdigit() is also true for '²', which int() refuses; the length bound
        # keeps int() away from huge digit strings.
        ok = port_text.isascii() and port_text.isdigit() and len(port_text) <= 5
        if not ok or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"has a bad port {_show(port_text, 12)} (use 1-65535)")
        return host, int(port_text)
    return host, default_port


def parse_bastion(text: str) -> Bastion:
    """Parse `[user@]host[:port]`; raise ValueError with a reason."""
    user: str | None = None
    if "@" in text:
        user, _, text = text.rpartition("@")
        if not user:
            raise ValueError("has an empty user before '@'")
        if any(c.isspace() for c in user):
            raise ValueError(f"has a bad user name {_show(user)} (no spaces)")
    host, port = parse_host_port(text, 0)
    return Bastion(host=host, user=user, port=port or DEFAULT_SSH_PORT, port_given=port != 0)


def parse_endpoint(text: str) -> Endpoint:
    """Parse `host[:port]` (port 5432 by default); raise ValueError with a reason."""
    host, port = parse_host_port(text, DEFAULT_DB_PORT)
    return Endpoint(host=host, port=port)


def _bastion(value: Any, key: str) -> Bastion:
    try:
        return parse_bastion(_nonempty_str(value, key))
    except ValueError as exc:
        raise _bad(key, f"{exc}; expected [user@]host[:port]") from None


def _jump(value: Any, key: str) -> tuple[Bastion, ...]:
    """One hop or a list of hops, each `[user@]host[:port]`, in the order they are crossed."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise _bad(key, "must name at least one hop; remove the key for none")
    hops: list[Bastion] = []
    for index, item in enumerate(items):
        where = f"{key}[{index}]" if isinstance(value, list) else key
        if not isinstance(item, str):
            raise _bad(where, f"must be a string [user@]host[:port], not {_tname(item)}")
        hops.append(_bastion(item, where))
    return tuple(hops)


def _ssh_config(value: Any, key: str) -> bool | Path:
    """true (~/.ssh/config), false (none), or the path of an ssh_config file."""
    if isinstance(value, bool):
        return value
    if not isinstance(value, str):
        raise _bad(
            key, f"must be true, false or the path of an ssh_config file, not {_tname(value)}"
        )
    return _path(value, key)


def _endpoint(value: Any, key: str) -> Endpoint:
    try:
        return parse_endpoint(_nonempty_str(value, key))
    except ValueError as exc:
        raise _bad(key, f"{exc}; expected host[:port]") from None


SCHEMA: dict[str, _Converter] = {
    "description": _description,
    "group": _group,
    "bastion": _bastion,
    "identity_file": _path,
    "known_hosts": _path,
    "endpoint": _endpoint,
    "database": _nonempty_str,
    "user": _nonempty_str,
    "local_port": _port,
    "password": _choice(get_args(PasswordSource)),
    "secret": _aws_ref,
    "sslmode": _choice(get_args(SSLMode)),
    "sslrootcert": _path,
    "cluster": _aws_ref,
    "region": _region,
    "aws_profile": _nonempty_str,
    "engine": _choice(get_args(Engine)),
    "transport": _choice(get_args(Transport)),
    "bastion_instance_id": _word,
    "instance_connect": _bool,
    "connect_timeout": _seconds(CONNECT_TIMEOUT_RANGE),
    "keepalive": _seconds(KEEPALIVE_RANGE),
    "ssh_config": _ssh_config,
    "jump": _jump,
    "linger": _duration,
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
    import datetime

    return {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "a boolean",
        list: "a list",
        dict: "a table",
        datetime.datetime: "a date-time",
        datetime.date: "a date",
        datetime.time: "a time of day",
    }.get(type(value), type(value).__name__)


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """' (did you mean 'x'?)' or ''."""
    if not isinstance(word, str) or len(word) > 200:  # difflib is quadratic: no guess for junk
        return ""
    import difflib  # only for a typo: loading a good file does not need it

    guess = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean '{guess[0]}'?)" if guess else ""


# ----------------------------------------------------------------------------- loading


class ConfigProblems(ConfigError):
    """Several problems in one profile file, each a ConfigError of its own (`problems`).

    `str()` is one line per problem, each `FILE: DOTTED.KEY: reason`, so the CLI prints them as a
    linter would. A file with one problem raises that plain ConfigError instead. `total` counts
    them all when `problems` holds only the first ones (as rebuilt from the agent's reply, which
    carries the shown ones only: a 16 MiB file may hold many thousands).
    """

    def __init__(self, problems: Iterable[ConfigError], *, total: int | None = None) -> None:
        self.problems: tuple[ConfigError, ...] = tuple(problems)
        self.total = max(total or 0, len(self.problems))
        lines = [str(p) for p in self.problems[:MAX_PROBLEMS_SHOWN]]
        if self.total > MAX_PROBLEMS_SHOWN:
            lines.append(f"… and {self.total - MAX_PROBLEMS_SHOWN} more problems")
        self.lines: tuple[str, ...] = tuple(lines)
        super().__init__("\n".join(lines))

    def wire_fields(self) -> dict[str, Any]:
        return {
            "problems": [
                {"kind": type(p).__name__, "message": p.message, "hint": p.hint}
                for p in self.problems[:MAX_PROBLEMS_SHOWN]
            ],
            "total": self.total,
        }

    @classmethod
    def from_wire(cls, message: str, *, hint: str | None, fields: Mapping[str, Any]) -> Self:
        problems: list[ConfigError] = []
        items = fields["problems"]
        if not isinstance(items, list) or not items:
            raise ValueError("problems is not a list of problems")
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("message"), str):
                raise TypeError("a problem is not an object with a message")
            found = registered(str(item.get("kind")))
            kind = found if found is not None and issubclass(found, ConfigError) else ConfigError
            text = item["message"]
            hint_ = item.get("hint") if isinstance(item.get("hint"), str) else None
            try:
                problems.append(kind.from_wire(text, hint=hint_, fields={}))
            except (TypeError, ValueError, KeyError):
                problems.append(ConfigError(text, hint=hint_))
        total = fields.get("total")
        return cls(problems, total=total if isinstance(total, int) and 0 < total < 2**31 else None)


def _raise_problems(problems: list[ConfigError]) -> None:
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise ConfigProblems(problems)


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
                f"no profile named {_show(name, 80)} in {printable(str(self.path))}"
                f"{did_you_mean(name, self.profiles)}",
                hint=f"profiles: {known}",
            ) from None

    def __iter__(self) -> Any:
        return iter(self.profiles.values())

    def __len__(self) -> int:
        return len(self.profiles)


_Report = Callable[[str, str, str | None], None]


def _convert_table(table: Mapping[str, Any], where: str, report: _Report) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{where}.{_show_key(key)}"
        converter = SCHEMA.get(key)
        if converter is None:
            guess = did_you_mean(key, SCHEMA)
            report(
                dotted,
                f"unknown key{guess}",
                None if guess else f"known keys: {', '.join(SCHEMA)}",
            )
            continue
        try:
            out[key] = converter(value, dotted)
        except _BadValue as exc:
            report(exc.key, exc.reason, None)
    return out


def parse_profiles(data: Mapping[str, Any], path: Path) -> dict[str, Profile]:
    """Validate a parsed TOML document into profiles.

    Raises ConfigError naming the file and the dotted key; with several problems, ConfigProblems
    holding all of them (in file order).
    """
    shown = printable(str(path))
    problems: list[ConfigError] = []

    def report(dotted: str, reason: str, hint: str | None = None) -> None:
        problems.append(ConfigError(f"{shown}: {dotted}: {reason}", hint=hint))

    for key in data:
        if key not in TOP_LEVEL_KEYS:
            report(
                _show_key(key),
                f"unknown top-level key{did_you_mean(key, TOP_LEVEL_KEYS)}",
                "profiles go in [profiles.NAME] tables, shared settings in [defaults]",
            )
    defaults: dict[str, Any] = {}
    defaults_raw = data.get("defaults", {})
    if isinstance(defaults_raw, dict):
        defaults = _convert_table(defaults_raw, "defaults", report)
    else:
        report("defaults", "must be a table ([defaults])")
    profiles_raw = data.get("profiles", {})
    if not isinstance(profiles_raw, dict):
        report("profiles", "must be a table of [profiles.NAME] tables")
        profiles_raw = {}
    out: dict[str, Profile] = {}
    for name, table in profiles_raw.items():
        where = f"profiles.{_show_key(name)}"
        before = len(problems)
        if not valid_name(name):
            report(where, f"bad profile name {_show(name, 80)}", NAME_HINT)
        if not isinstance(table, dict):
            report(where, f"must be a table ([{where}])")
            continue
        own = _convert_table(table, where, report)
        if len(problems) > before:
            continue  # a bad value makes the cross-checks below guess wrong: skip them
        values = {**defaults, **own}
        if values.get("password") == "secretsmanager" and not (
            values.get("secret") or values.get("cluster")
        ):
            report(
                f"{where}.password",
                "'secretsmanager' needs a secret or a cluster",
                'add secret = "arn:aws:secretsmanager:…" or cluster = "ID"',
            )
        if values.get("transport", "ssh") != "ssh" and not values.get("bastion_instance_id"):
            report(
                f"{where}.transport",
                f"'{values['transport']}' needs bastion_instance_id (the instance it reaches)",
                'add bastion_instance_id = "i-…"',
            )
        if values.get("instance_connect") and not values.get("bastion_instance_id"):
            report(
                f"{where}.instance_connect",
                "needs bastion_instance_id",
                'add bastion_instance_id = "i-…"',
            )
        if len(problems) == before:
            out[name] = Profile(name=name, stated=frozenset(values), **values)
    _raise_problems(problems)
    return out


def _read_profile_file(path: Path, shown: str) -> bytes:
    """The file's bytes; FileNotFoundError when it is missing; ConfigError for anything else.

    A FIFO or a device is refused before it is read: `stat` first, then an O_NONBLOCK open (a
    FIFO with no writer would block a plain open forever) and `fstat` on what was opened.
    """

    def refuse(mode: int) -> None:
        if stat.S_ISDIR(mode):
            raise ConfigError(f"{shown}: is a directory, not a profile file")
        if not stat.S_ISREG(mode):
            raise ConfigError(
                f"{shown}: is {file_kind(mode)}, not a profile file",
                hint="give --config the path of a TOML file",
            )

    try:
        refuse(os.stat(path).st_mode)
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
        fd = os.open(path, flags | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise
    except PermissionError:
        with contextlib.suppress(OSError):
            if path.is_dir():  # Windows: opening a directory is "permission denied"
                raise ConfigError(f"{shown}: is a directory, not a profile file") from None
        raise ConfigError(f"{shown}: cannot read the profile file (permission denied)") from None
    except NotADirectoryError:
        raise ConfigError(f"{shown}: a part of the path is a file, not a directory") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"{shown}: cannot open the profile file ({reason})") from None
    try:
        info = os.fstat(fd)
        refuse(info.st_mode)
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_FILE_BYTES:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_FILE_BYTES:
            raise ConfigError(
                f"{shown}: is larger than {MAX_FILE_BYTES >> 20} MiB; that is not a profile file"
            )
        return b"".join(chunks)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"{shown}: cannot read the profile file ({reason})") from None
    finally:
        os.close(fd)


def load(path: str | os.PathLike[str] | None = None, *, missing_ok: bool = True) -> ProfileSet:
    """Load and validate the profile file. A missing file is an empty set (unless missing_ok=False)."""
    resolved = config_path(path)
    shown = printable(str(resolved))
    try:
        raw = _read_profile_file(resolved, shown)
    except FileNotFoundError:
        if missing_ok:
            return ProfileSet(path=resolved, profiles={}, exists=False)
        raise ConfigError(
            f"{shown}: no such profile file",
            hint="create it with `tunnelman profile add` or copy profiles.example.toml",
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{shown}:{line}: not valid UTF-8 text") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(_toml_error(shown, exc)) from None
    except RecursionError:
        raise ConfigError(
            f"{shown}: invalid TOML: arrays or inline tables nested too deeply",
            hint="a profile file needs no nesting beyond [profiles.NAME]",
        ) from None
    except ValueError as exc:  # an integer of more than 4300 digits: int() refuses to parse it
        raise ConfigError(f"{shown}: invalid TOML: {printable(str(exc))[:120]}") from None
    return ProfileSet(path=resolved, profiles=parse_profiles(data, resolved))


def _toml_error(shown: str, exc: tomllib.TOMLDecodeError) -> str:
    message = printable(str(exc))
    match = re.search(r"\(at line (\d+), column (\d+)\)", message)
    if match:
        reason = message[: match.start()].strip()
        return f"{shown}:{match.group(1)}: invalid TOML: {reason} (column {match.group(2)})"
    lineno = getattr(exc, "lineno", None)
    where = f":{lineno}" if lineno else ""
    return f"{shown}{where}: invalid TOML: {message}"


# ----------------------------------------------------------------------------- saving


def _to_toml_value(key: str, value: Any) -> Any:
    if isinstance(value, Path):
        home = str(Path.home())
        text = str(value)
        return "~" + text[len(home) :] if text == home or text.startswith(home + os.sep) else text
    if isinstance(value, Bastion | Endpoint):
        return str(value)
    if isinstance(value, tuple):
        return [str(v) for v in value]
    return value


def profile_to_table(profile: Profile, *, base: Profile | None = None) -> dict[str, Any]:
    """The TOML keys for a profile: only those that differ from `base` (the defaults)."""
    reference = base or Profile(name=profile.name)
    out: dict[str, Any] = {}
    for f in fields(profile):
        if f.name in ("name", "stated"):
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

    if not valid_name(name):
        raise ConfigError(f"bad profile name {_show(name, 80)}", hint=NAME_HINT)
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
