"""known_hosts: reading OpenSSH's file, checking a bastion's host key, recording accepted keys.

Called by `tunnelman.core.ssh` right after the SSH handshake and before any authentication, so a
key is never offered to a server we have not recognised. The file format is OpenSSH's: plain and
hashed (`|1|salt|hash`) host patterns, `[host]:port` for ports other than 22, `*`/`?` wildcards
and `!negation`, and the `@revoked` / `@cert-authority` markers. Fingerprints are printed the way
OpenSSH prints them (`SHA256:` + unpadded base64), so a person can compare them with `ssh-keygen -l`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from tunnelman.core.errors import HostKeyError

if TYPE_CHECKING:
    import paramiko

DEFAULT_SSH_PORT = 22


@dataclass(frozen=True)
class HostKeyInfo:
    """The key a bastion presented: what a person is asked to confirm."""

    host: str
    port: int
    key_type: str  # as in known_hosts: ssh-ed25519, ecdsa-sha2-nistp256, ssh-rsa
    fingerprint: str  # "SHA256:…" exactly as OpenSSH prints it

    @property
    def display_type(self) -> str:
        """ED25519 / ECDSA / RSA, the word OpenSSH uses in its prompt."""
        return display_key_type(self.key_type)

    @property
    def target(self) -> str:
        """`host` or `[host]:port`, the name the key is recorded under."""
        return host_pattern(self.host, self.port)


@dataclass(frozen=True)
class HostKeyPolicy:
    """What to do with a bastion whose key is not in known_hosts yet."""

    accept_new: bool = False  # --accept-new-host-key
    ask: Callable[[HostKeyInfo], bool] | None = None  # terminal / TUI modal; None: nobody to ask


def _info_fields(info: HostKeyInfo, known_hosts: Path) -> dict[str, Any]:
    """The presented key and the file, as the agent sends them with a host-key error."""
    return {
        "host_key": {
            "host": info.host,
            "port": info.port,
            "key_type": info.key_type,
            "fingerprint": info.fingerprint,
        },
        "known_hosts": str(known_hosts),
    }


def _info_from_fields(fields: Mapping[str, Any]) -> tuple[HostKeyInfo, Path]:
    """`_info_fields` read back; KeyError / TypeError / ValueError when `host_key` is not one."""
    host_key = fields["host_key"]
    if not isinstance(host_key, dict):
        raise TypeError("host_key is not an object")
    info = HostKeyInfo(
        host=str(host_key["host"]),
        port=int(host_key["port"]),
        key_type=str(host_key["key_type"]),
        fingerprint=str(host_key["fingerprint"]),
    )
    return info, Path(str(fields.get("known_hosts") or "known_hosts"))


class HostKeyUnknown(HostKeyError):
    """The bastion's key is not in known_hosts and nobody confirmed it."""

    def __init__(
        self, message: str, *, info: HostKeyInfo, known_hosts: Path, hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.info = info
        self.known_hosts = known_hosts

    def wire_fields(self) -> dict[str, Any]:
        return _info_fields(self.info, self.known_hosts)

    @classmethod
    def from_wire(cls, message: str, *, hint: str | None, fields: Mapping[str, Any]) -> Self:
        info, path = _info_from_fields(fields)
        return cls(message, info=info, known_hosts=path, hint=hint)


class HostKeyChanged(HostKeyError):
    """known_hosts holds a different key of the same type for this bastion."""

    def __init__(
        self,
        message: str,
        *,
        info: HostKeyInfo,
        expected: str,
        known_hosts: Path,
        line: int,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.info = info
        self.expected = expected
        self.known_hosts = known_hosts
        self.line = line

    def wire_fields(self) -> dict[str, Any]:
        return {
            **_info_fields(self.info, self.known_hosts),
            "expected": self.expected,
            "line": self.line,
        }

    @classmethod
    def from_wire(cls, message: str, *, hint: str | None, fields: Mapping[str, Any]) -> Self:
        info, path = _info_from_fields(fields)
        line = fields.get("line")
        return cls(
            message,
            info=info,
            expected=str(fields.get("expected") or ""),
            known_hosts=path,
            line=line if isinstance(line, int) and not isinstance(line, bool) else 0,
            hint=hint,
        )


@dataclass(frozen=True)
class KnownKey:
    """A key known_hosts records for a host: what a refusal shows."""

    key_type: str
    fingerprint: str
    line: int

    @property
    def display_type(self) -> str:
        return display_key_type(self.key_type)


class HostKeyTypeMismatch(HostKeyChanged):
    """known_hosts holds keys for this bastion, but none of the type it presented.

    OpenSSH treats this as a refusal, not as a new host: a man in the middle who cannot present
    the pinned ED25519 key would otherwise offer an RSA key and be recorded. `expected` and `line`
    name the first known key, so code that handles HostKeyChanged shows something true.
    """

    def __init__(
        self,
        message: str,
        *,
        info: HostKeyInfo,
        known: tuple[KnownKey, ...],
        known_hosts: Path,
        hint: str | None = None,
    ) -> None:
        first = known[0] if known else KnownKey("", "", 0)
        super().__init__(
            message,
            info=info,
            expected=first.fingerprint,
            known_hosts=known_hosts,
            line=first.line,
            hint=hint,
        )
        self.known = known

    def wire_fields(self) -> dict[str, Any]:
        return {
            **super().wire_fields(),
            "known": [
                {"key_type": k.key_type, "fingerprint": k.fingerprint, "line": k.line}
                for k in self.known
            ],
        }

    @classmethod
    def from_wire(cls, message: str, *, hint: str | None, fields: Mapping[str, Any]) -> Self:
        info, path = _info_from_fields(fields)
        return cls(
            message,
            info=info,
            known=_known_from_fields(fields.get("known")),
            known_hosts=path,
            hint=hint,
        )


def _known_from_fields(value: object) -> tuple[KnownKey, ...]:
    """The known keys of a HostKeyTypeMismatch from the agent; entries of the wrong shape are
    dropped."""
    known: list[KnownKey] = []
    for item in value if isinstance(value, list) else []:
        if not isinstance(item, dict):
            continue
        key_type, fp, line = item.get("key_type"), item.get("fingerprint"), item.get("line")
        if isinstance(key_type, str) and isinstance(fp, str) and isinstance(line, int):
            known.append(KnownKey(key_type, fp, line))
    return tuple(known)


@dataclass(frozen=True)
class KnownHostEntry:
    """One key line of a known_hosts file."""

    line: int  # 1-based, for messages
    marker: str | None  # "@revoked", "@cert-authority" or None
    patterns: str  # the host field as written (hashed or not)
    key_type: str  # the type inside the key blob (trusted over the written one)
    key_blob: bytes

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.key_blob)


# ----------------------------------------------------------------------------- names


def fingerprint(key: paramiko.PKey | bytes) -> str:
    """`SHA256:…` as OpenSSH prints it: base64 of the SHA-256 of the key blob, without `=`."""
    blob = key if isinstance(key, bytes) else key.asbytes()
    digest = hashlib.sha256(blob).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def display_key_type(key_type: str) -> str:
    """OpenSSH's short word for a key type: ED25519, ECDSA, RSA…"""
    if key_type == "ssh-ed25519":
        return "ED25519"
    if key_type.startswith("ecdsa-"):
        return "ECDSA"
    if key_type in ("ssh-rsa", "rsa-sha2-256", "rsa-sha2-512"):
        return "RSA"
    if key_type.startswith("sk-"):
        return "ED25519-SK" if "ed25519" in key_type else "ECDSA-SK"
    return key_type


def host_pattern(host: str, port: int) -> str:
    """The name OpenSSH records a host under: `host`, or `[host]:port` when port is not 22."""
    host = host.lower()
    return host if port == DEFAULT_SSH_PORT else f"[{host}]:{port}"


def _blob_type(blob: bytes) -> str | None:
    """The key type string at the start of an SSH public key blob."""
    if len(blob) < 4:
        return None
    size = int.from_bytes(blob[:4], "big")
    if size <= 0 or size > 64 or len(blob) < 4 + size:
        return None
    try:
        return blob[4 : 4 + size].decode("ascii")
    except UnicodeDecodeError:
        return None


# ----------------------------------------------------------------------------- reading


def parse_line(text: str, lineno: int) -> KnownHostEntry | None:
    """One known_hosts line as an entry; None for blanks, comments and lines we cannot read."""
    stripped = text.strip()
    if not stripped or stripped.startswith("#"):
        return None
    fields = stripped.split()
    marker: str | None = None
    if fields[0].startswith("@"):
        marker = fields[0].lower()
        fields = fields[1:]
    if len(fields) < 3:
        return None
    patterns, _written_type, b64 = fields[0], fields[1], fields[2]
    try:
        blob = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        return None
    key_type = _blob_type(blob)
    if key_type is None:
        return None
    return KnownHostEntry(
        line=lineno, marker=marker, patterns=patterns, key_type=key_type, key_blob=blob
    )


def read_entries(path: Path) -> list[KnownHostEntry]:
    """Every readable key line of `path`; a missing file is an empty list."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except IsADirectoryError:
        raise HostKeyError(f"known_hosts {path} is a directory, not a file") from None
    except PermissionError:
        raise HostKeyError(
            f"cannot read known_hosts {path} (permission denied)",
            hint="fix its permissions or point the profile's known_hosts at a file you own",
        ) from None
    text = data.decode("utf-8", errors="replace")
    entries: list[KnownHostEntry] = []
    for number, line in enumerate(text.splitlines(), start=1):
        entry = parse_line(line, number)
        if entry is not None:
            entries.append(entry)
    return entries


def _wildcard_regex(pattern: str) -> re.Pattern[str]:
    # OpenSSH patterns know only `*` and `?`; `[` and `]` are literal (think `[host]:2222`).
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), re.DOTALL)


def _hashed_match(field: str, name: str) -> bool:
    parts = field.split("|")
    # |1|salt|hash → ["", "1", salt, hash]
    if len(parts) != 4 or parts[1] != "1":
        return False
    try:
        salt = base64.b64decode(parts[2])
        expected = base64.b64decode(parts[3])
    except (binascii.Error, ValueError):
        return False
    digest = hmac.new(salt, name.encode("utf-8"), hashlib.sha1).digest()
    return hmac.compare_digest(digest, expected)


def host_matches(patterns: str, name: str) -> bool:
    """Whether a known_hosts host field matches `name` (`host` or `[host]:port`), as OpenSSH does.

    A hashed field names exactly one host. A plain field is a comma-separated list of patterns;
    one matching `!pattern` excludes the host whatever else matches.
    """
    if patterns.startswith("|"):
        return _hashed_match(patterns, name)
    name = name.lower()
    matched = False
    for raw in patterns.split(","):
        pattern = raw.strip().lower()
        if not pattern:
            continue
        negated = pattern.startswith("!")
        if negated:
            pattern = pattern[1:]
        if _wildcard_regex(pattern).fullmatch(name):
            if negated:
                return False
            matched = True
    return matched


def entries_for(path: Path, host: str, port: int) -> list[KnownHostEntry]:
    """The entries of `path` that apply to the bastion `host`:`port`."""
    name = host_pattern(host, port)
    return [e for e in read_entries(path) if host_matches(e.patterns, name)]


def known_key_types(path: Path, host: str, port: int) -> list[str]:
    """Key types known for this bastion, to prefer them in the handshake as OpenSSH does."""
    types: list[str] = []
    for entry in entries_for(path, host, port):
        if entry.marker is None and entry.key_type not in types:
            types.append(entry.key_type)
    return types


# ----------------------------------------------------------------------------- checking


def _keygen_remove(path: Path, host: str, port: int) -> str:
    target = host_pattern(host, port)
    quoted = f"'{target}'" if port != DEFAULT_SSH_PORT else target
    default = Path("~/.ssh/known_hosts").expanduser()
    file_arg = "" if path == default else f"-f {path} "
    return f"ssh-keygen {file_arg}-R {quoted}"


def _keyscan(path: Path, host: str, port: int) -> str:
    port_arg = f"-p {port} " if port != DEFAULT_SSH_PORT else ""
    return f"ssh-keyscan {port_arg}{host} >> {path}"


def verify(
    host: str,
    port: int,
    key: paramiko.PKey,
    path: Path,
    policy: HostKeyPolicy,
    *,
    pinned: bytes | None = None,
) -> HostKeyInfo:
    """Check the key a bastion presented against `path`; record it when the policy accepts it.

    Returns the key's info when it is known (or was just accepted). Raises HostKeyChanged when the
    file holds another key of the same type for this host, HostKeyError when the key is marked
    `@revoked`, HostKeyUnknown when it is new and nobody accepted it. `pinned` is the key seen on
    the first connection of a tunnel: a reconnect must find that same key, whatever the file says.
    """
    blob = key.asbytes()
    info = HostKeyInfo(
        host=host,
        port=port,
        key_type=_blob_type(blob) or key.get_name(),
        fingerprint=fingerprint(blob),
    )
    entries = entries_for(path, host, port)
    for entry in entries:
        if entry.marker == "@revoked" and entry.key_blob == blob:
            raise HostKeyError(
                f"the host key of bastion {info.target} ({info.display_type} {info.fingerprint}) "
                f"is marked @revoked in {path} line {entry.line}: refusing to connect",
                hint="ask the bastion's administrator for its current host key",
            )
    plain = [e for e in entries if e.marker is None]
    if pinned is not None and blob != pinned:
        same = next((e for e in plain if e.key_blob == pinned), None)
        raise _changed(info, fingerprint(pinned), path, same.line if same else 0)
    if any(e.key_blob == blob for e in plain):
        return info
    if pinned is not None:
        return info  # the key this tunnel started with, even if the file lost it since
    same_type = [e for e in plain if e.key_type == info.key_type]
    if same_type:
        raise _changed(info, same_type[0].fingerprint, path, same_type[0].line)
    if plain:
        # Keys of other types are known: this is not a new host, whatever the policy says.
        raise _other_type(info, plain, path)
    if policy.ask is not None:
        if not policy.ask(info):
            raise HostKeyUnknown(
                f"host key of bastion {info.target} not accepted "
                f"({info.display_type} {info.fingerprint})",
                info=info,
                known_hosts=path,
                hint="nothing was recorded; run again and answer yes once you have checked it",
            )
    elif not policy.accept_new:
        raise HostKeyUnknown(
            f"the host key of bastion {info.target} is not known: {info.display_type} "
            f"{info.fingerprint} is not in {path}, and there is no terminal to ask",
            info=info,
            known_hosts=path,
            hint=(
                "check that fingerprint with the bastion's administrator, then run again with "
                f"--accept-new-host-key, or record it yourself with `{_keyscan(path, host, port)}` "
                "or by connecting once with ssh"
            ),
        )
    add(path, host, port, key)
    return info


def _changed(info: HostKeyInfo, expected: str, path: Path, line: int) -> HostKeyChanged:
    where = f"{path} line {line}" if line else f"the key this tunnel first connected to; {path}"
    return HostKeyChanged(
        f"the host key of bastion {info.target} has CHANGED: known_hosts expects {expected} "
        f"({where}), the server presented {info.display_type} {info.fingerprint}. Someone may be "
        "intercepting the connection, or the bastion was rebuilt: refusing to connect",
        info=info,
        expected=expected,
        known_hosts=path,
        line=line,
        hint=(
            "if you trust the change, after asking the bastion's administrator, remove the old key with "
            f"`{_keygen_remove(path, info.host, info.port)}` and connect again"
        ),
    )


def _other_type(
    info: HostKeyInfo, entries: list[KnownHostEntry], path: Path
) -> HostKeyTypeMismatch:
    known = tuple(KnownKey(e.key_type, e.fingerprint, e.line) for e in entries)
    listed = "; ".join(f"{k.display_type} {k.fingerprint} ({path} line {k.line})" for k in known)
    types = sorted({k.display_type for k in known})
    return HostKeyTypeMismatch(
        f"the bastion {info.target} presented an {info.display_type} host key "
        f"({info.fingerprint}), but known_hosts holds only {'/'.join(types)} keys for it: "
        f"{listed}. A key of another type is not a new host: someone may be intercepting the "
        "connection and offering a key type you have not pinned. Refusing to connect",
        info=info,
        known=known,
        known_hosts=path,
        hint=(
            "ask the bastion's administrator whether its host keys changed; if they did, remove "
            f"the old entries with `{_keygen_remove(path, info.host, info.port)}` and connect "
            f"again; if the bastion still has its {'/'.join(types)} key, it should offer it "
            "(sshd's HostKey / HostKeyAlgorithms settings)"
        ),
    )


# ----------------------------------------------------------------------------- writing


def add(path: Path, host: str, port: int, key: paramiko.PKey) -> None:
    """Append `key` for `host`:`port` to `path` (created 0600 in a 0700 directory when missing).

    One `write` on an O_APPEND descriptor: concurrent writers (ssh itself, another tunnelman) never
    interleave inside a line.
    """
    line = f"{host_pattern(host, port)} {key.get_name()} {key.get_base64()}\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        needs_newline = False
        try:
            with path.open("rb") as fh:
                fh.seek(0, os.SEEK_END)
                if fh.tell() > 0:
                    fh.seek(-1, os.SEEK_END)
                    needs_newline = fh.read(1) != b"\n"
        except FileNotFoundError:
            pass
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (("\n" if needs_newline else "") + line).encode("ascii"))
        finally:
            os.close(fd)
    except OSError as exc:
        raise HostKeyError(
            f"cannot record the bastion's host key in {path}: {exc.strerror or exc}",
            hint="fix the file's permissions or set known_hosts in the profile to a writable file",
        ) from None
