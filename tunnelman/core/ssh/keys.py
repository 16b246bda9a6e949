"""Private keys and ssh-agent: which key tunnelman offers the bastion, read as OpenSSH reads it.

Keys follow OpenSSH's rules: a private key that group or others can read is refused with the
`chmod 600` fix (on Windows: judged by the file's ACL, with the `icacls` fix; see
`tunnelman.core.platform.keys`). An encrypted key whose public half (KEY.pub beside it, or the
clear header of an OpenSSH-format file) ssh-agent holds is used through the agent, as ssh does:
no passphrase, and that one agent key only. Otherwise an encrypted key needs a `PassphrasePrompt`,
and without one the message says to use ssh-agent. Never every key in ~/.ssh.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import stat
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from tunnelman.core.errors import (
    PassphraseRequired,
    SSHKeyError,
)
from tunnelman.core.logs import get_logger
from tunnelman.core.platform import agents, keys

if TYPE_CHECKING:
    import paramiko

    from tunnelman.core.profiles import Profile

# paramiko imports `invoke` (~80 ms, a third of its import time, on every one-shot command) only
# for ssh_config "Match exec", which tunnelman never uses: tunnelman.core.ssh.config reads
# ssh_config with `ssh -G` or its own reader, never through paramiko.
sys.modules.setdefault("invoke", None)  # type: ignore[arg-type]

PassphrasePrompt = Callable[[Path], str | None]
"""Asks for the passphrase of the key at a path; None: nobody can answer."""

PASSPHRASE_ATTEMPTS = 3  # as OpenSSH's NumberOfPasswordPrompts

_log = get_logger("ssh")


def check_key_permissions(path: Path) -> None:
    """Refuse a private key others can read, as OpenSSH does ("UNPROTECTED PRIVATE KEY FILE")."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise SSHKeyError(
            f"identity file {path} does not exist",
            hint="fix identity_file in the profile, or remove it to use ssh-agent",
        ) from None
    except PermissionError:
        raise SSHKeyError(f"cannot read identity file {path} (permission denied)") from None
    if not stat.S_ISREG(st.st_mode):
        raise SSHKeyError(f"identity file {path} is not a regular file")
    problem = keys.key_problem(path, st)
    if problem is not None:
        raise SSHKeyError(problem.message, hint=problem.hint)


@dataclass(frozen=True)
class _KeyFile:
    kind: Literal["rsa", "ecdsa", "ed25519", "pkcs8", "unknown"]
    encrypted: bool
    detail: str = ""
    public: bytes | None = None  # the public key blob an OpenSSH-format file carries in clear


def _sniff(path: Path, data: bytes) -> _KeyFile:
    """What kind of private key file this is, without a passphrase."""
    text = data.decode("ascii", errors="replace")
    if text.startswith("PuTTY-User-Key-File"):
        return _KeyFile(
            "unknown",
            False,
            "a PuTTY .ppk key (convert it: `puttygen KEY -O private-openssh -o KEY.pem`)",
        )
    if "-----BEGIN SSH2 PUBLIC KEY-----" in text or text.lstrip().startswith(("ssh-", "ecdsa-")):
        return _KeyFile("unknown", False, "a public key, not a private key")
    if "-----BEGIN RSA PRIVATE KEY-----" in text:
        return _KeyFile("rsa", "ENCRYPTED" in text.split("-----END", 1)[0][:200])
    if "-----BEGIN EC PRIVATE KEY-----" in text:
        return _KeyFile("ecdsa", "ENCRYPTED" in text.split("-----END", 1)[0][:200])
    if "-----BEGIN ENCRYPTED PRIVATE KEY-----" in text:
        return _KeyFile("pkcs8", True)
    if "-----BEGIN PRIVATE KEY-----" in text:
        return _KeyFile("pkcs8", False)
    if "-----BEGIN OPENSSH PRIVATE KEY-----" in text:
        return _sniff_openssh(text)
    if "-----BEGIN DSA PRIVATE KEY-----" in text:
        return _KeyFile("unknown", False, "a DSA key, which OpenSSH and paramiko no longer support")
    return _KeyFile("unknown", False, "not a private key file tunnelman can read")


def _sniff_openssh(text: str) -> _KeyFile:
    body = text.split("-----BEGIN OPENSSH PRIVATE KEY-----", 1)[1].split("-----END", 1)[0]
    try:
        raw = base64.b64decode("".join(body.split()))
    except (binascii.Error, ValueError):
        return _KeyFile("unknown", False, "a damaged OpenSSH key file")
    magic = b"openssh-key-v1\x00"
    if not raw.startswith(magic):
        return _KeyFile("unknown", False, "a damaged OpenSSH key file")
    pos = len(magic)

    def read_string() -> bytes:
        nonlocal pos
        size = int.from_bytes(raw[pos : pos + 4], "big")
        value = raw[pos + 4 : pos + 4 + size]
        pos += 4 + size
        return value

    cipher = read_string()
    read_string()  # kdf name
    read_string()  # kdf options
    pos += 4  # number of keys
    # The public key sits here unencrypted, before the (possibly encrypted) private part: it is
    # what lets an encrypted key be matched to ssh-agent's copy without the passphrase.
    public = read_string()
    size = int.from_bytes(public[:4], "big")
    key_type = public[4 : 4 + size].decode("ascii", errors="replace")
    kinds: dict[str, Literal["rsa", "ecdsa", "ed25519"]] = {
        "ssh-rsa": "rsa",
        "ssh-ed25519": "ed25519",
    }
    kind = kinds.get(key_type) or ("ecdsa" if key_type.startswith("ecdsa-sha2-") else None)
    if kind is None:
        return _KeyFile("unknown", False, f"a {key_type} key, which tunnelman cannot use")
    return _KeyFile(kind, cipher != b"none", public=public if size and len(public) > 4 else None)


def _read_pub_file(pub: Path) -> bytes | None:
    """The key blob of an OpenSSH public key line (`TYPE BASE64 [comment]`); None if unusable."""
    try:
        text = pub.read_text("ascii", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) < 2:
            return None
        try:
            blob = base64.b64decode(fields[1], validate=True)
        except (binascii.Error, ValueError):
            return None
        size = int.from_bytes(blob[:4], "big")
        # A line whose type disagrees with its blob is damaged: better no match than a wrong one.
        return blob if blob[4 : 4 + size] == fields[0].encode() else None
    return None


def _public_blob(path: Path, info: _KeyFile) -> bytes | None:
    if info.public is not None:
        return info.public  # the file's own header: cannot be stale, unlike a KEY.pub
    return _read_pub_file(path.with_name(path.name + ".pub"))


def public_key_blob(path: Path) -> bytes | None:
    """The public key of the private key file at `path`, found without its passphrase.

    From the file itself for OpenSSH-format keys (their header holds the public key in clear), else
    from KEY.pub beside it, as ssh looks. None: neither (e.g. an encrypted PEM key without .pub).
    """
    path = Path(path).expanduser()
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return _public_blob(path, _sniff(path, data))


def agent_has_key(blob: bytes) -> bool:
    """Whether ssh-agent holds the key with this public blob (False: no agent, or not in it)."""
    if not agent_available():
        return False
    import paramiko

    try:
        agent = paramiko.Agent()
    except (paramiko.SSHException, OSError) as exc:
        _log.info("cannot list ssh-agent's keys: %s", exc)
        return False
    try:
        return any(key.asbytes() == blob for key in agent.get_keys())
    finally:
        agent.close()


def _in_agent(path: Path) -> bytes | None:
    """For an encrypted key ssh-agent holds: its public blob. None: load the file as usual."""
    check_key_permissions(path)  # OpenSSH's rule holds even when the agent will sign
    try:
        data = path.read_bytes()
    except OSError:
        return None  # load_private_key says why
    info = _sniff(path, data)
    if not info.encrypted or not agent_available():
        return None
    blob = _public_blob(path, info)
    if blob is None:
        _log.info("key %s is encrypted and has no public half to match in ssh-agent", path)
        return None
    return blob if agent_has_key(blob) else None


@contextlib.contextmanager
def _agent_key(blob: bytes, path: Path | None) -> Iterator[paramiko.PKey]:
    """The one agent key with this public blob, usable while the context is open."""
    import paramiko

    if not agent_available():
        raise SSHKeyError(
            f"key {path} was used through ssh-agent, and no ssh-agent is running now "
            f"({agents.missing_reason()})",
            hint=f"{agents.start_hint()} (ssh-add {path})",
        )
    agent = paramiko.Agent()
    try:
        for key in agent.get_keys():
            if key.asbytes() == blob:
                yield key
                return
        raise SSHKeyError(
            f"key {path} is no longer in ssh-agent (removed, or its lifetime ran out)",
            hint=f"add it again with `ssh-add {path}`",
        )
    finally:
        agent.close()


def _load_once(path: Path, info: _KeyFile, passphrase: str | None) -> paramiko.PKey:
    import paramiko

    if info.kind == "pkcs8":
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec, rsa

        try:
            loaded = serialization.load_pem_private_key(
                path.read_bytes(), password=passphrase.encode() if passphrase else None
            )
        except TypeError as exc:  # password given for an unencrypted key or vice versa
            raise paramiko.PasswordRequiredException(str(exc)) from None
        except ValueError as exc:
            raise paramiko.SSHException(str(exc)) from None
        if isinstance(loaded, rsa.RSAPrivateKey):
            return paramiko.RSAKey(key=loaded)
        if isinstance(loaded, ec.EllipticCurvePrivateKey):
            return paramiko.ECDSAKey(vals=(loaded, loaded.public_key()))
        raise SSHKeyError(f"{path}: unsupported PKCS#8 key type {type(loaded).__name__}")
    classes: dict[str, type[paramiko.PKey]] = {
        "rsa": paramiko.RSAKey,
        "ecdsa": paramiko.ECDSAKey,
        "ed25519": paramiko.Ed25519Key,
    }
    return classes[info.kind].from_private_key_file(str(path), password=passphrase)


def load_private_key(path: Path, passphrase: PassphrasePrompt | None = None) -> paramiko.PKey:
    """Load one private key file: RSA PEM (as AWS hands out), OpenSSH ed25519/ecdsa/rsa, PKCS#8.

    Checks permissions first. An encrypted key asks `passphrase` (up to three times, as ssh does);
    without a prompt it fails with the ssh-agent way out.
    """
    import paramiko

    path = Path(path).expanduser()
    check_key_permissions(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SSHKeyError(f"cannot read identity file {path}: {exc.strerror or exc}") from None
    info = _sniff(path, data)
    if info.kind == "unknown":
        raise SSHKeyError(
            f"identity file {path} is {info.detail}",
            hint="point identity_file at the private key (an OpenSSH or PEM file, e.g. the .pem AWS gave you)",
        )
    if not info.encrypted:
        try:
            return _load_once(path, info, None)
        except paramiko.PasswordRequiredException:
            pass  # our sniffing missed the encryption: ask below
        except (paramiko.SSHException, ValueError) as exc:
            raise SSHKeyError(f"cannot load private key {path}: {exc}") from None
    if passphrase is None:
        raise PassphraseRequired(
            f"key {path} is passphrase-protected and there is no terminal to ask: "
            f"add it to ssh-agent (ssh-add {path})",
            hint="then remove identity_file from the profile, or run from a terminal",
        )
    for _attempt in range(PASSPHRASE_ATTEMPTS):
        secret = passphrase(path)
        if secret is None:
            raise SSHKeyError(
                f"key {path} is passphrase-protected and no passphrase was given",
                hint=f"add it to ssh-agent (ssh-add {path}) or run from a terminal",
            )
        try:
            return _load_once(path, info, secret)
        except paramiko.PasswordRequiredException:
            continue
        except (paramiko.SSHException, ValueError):
            _log.info("wrong passphrase for %s", path)
            continue
    raise SSHKeyError(
        f"wrong passphrase for key {path} ({PASSPHRASE_ATTEMPTS} attempts)",
        hint=f"check it with `ssh-keygen -y -f {path}`",
    )


def agent_available() -> bool:
    """Whether an ssh-agent is reachable (SSH_AUTH_SOCK; on Windows Pageant or OpenSSH's pipe)."""
    return agents.find_agent() is not None


def no_agent_error() -> SSHKeyError:
    """The profile names no key and no agent is running: say so as this OS would."""
    return SSHKeyError(
        "the profile names no identity_file and no ssh-agent is running "
        f"({agents.missing_reason()})",
        hint=f'set identity_file = "~/.ssh/KEY.pem" in the profile, or {agents.start_hint()}',
    )


@contextlib.contextmanager
def agent_keys() -> Iterator[list[paramiko.PKey]]:
    """The keys ssh-agent holds, usable while the context is open."""
    import paramiko

    if not agent_available():
        raise no_agent_error()
    agent = paramiko.Agent()
    try:
        keys: list[paramiko.PKey] = list(agent.get_keys())
        if not keys:
            raise SSHKeyError(
                "the profile names no identity_file and ssh-agent holds no keys",
                hint="add your key with `ssh-add ~/.ssh/KEY`, or set identity_file in the profile",
            )
        yield keys
    finally:
        agent.close()


@dataclass
class Identity:
    """What we offer the bastion: the profile's one key, or whatever ssh-agent holds.

    source "agent" with `path` and `public_blob` set: the profile's (encrypted) key, signed by
    ssh-agent, which holds it. Only that key is offered, never the agent's others.
    """

    source: Literal["file", "agent", "instance-connect"]
    path: Path | None = None
    key: paramiko.PKey | None = None
    profile: Profile | None = field(default=None, repr=False)
    public_blob: bytes | None = field(default=None, repr=False)

    @property
    def through_agent(self) -> bool:
        """The profile's own key, used through ssh-agent."""
        return self.source == "agent" and self.public_blob is not None

    def describe(self) -> str:
        if self.source == "file":
            return f"key {self.path}"
        if self.through_agent:
            return f"key {self.path} (through ssh-agent)"
        if self.source == "agent":
            return "the keys in ssh-agent"
        return "an EC2 Instance Connect key"

    @contextlib.contextmanager
    def keys(self) -> Iterator[list[paramiko.PKey]]:
        """The keys to offer for one connection (the agent is asked afresh every time)."""
        if self.public_blob is not None:
            with _agent_key(self.public_blob, self.path) as held:
                yield [held]
            return
        if self.source == "agent":
            with agent_keys() as keys:
                yield keys
            return
        if self.source == "instance-connect":
            # A fresh key each time: an Instance Connect key is accepted for 60 s only.
            import importlib

            aws = importlib.import_module("tunnelman.core.aws")
            key: paramiko.PKey = aws.instance_connect_key(self.profile)
            yield [key]
            return
        assert self.key is not None
        yield [self.key]


def load_identity(profile: Profile, passphrase: PassphrasePrompt | None = None) -> Identity:
    """The profile's identity: its key file (loaded now, once), else the agent.

    An encrypted key file that ssh-agent holds is used through the agent (no passphrase asked),
    as ssh does; `passphrase` is asked only when the agent does not have it.
    """
    if profile.instance_connect:
        return Identity(source="instance-connect", profile=profile)
    if profile.identity_file is not None:
        path = Path(profile.identity_file).expanduser()
        blob = _in_agent(path)
        if blob is not None:
            _log.info("key %s is in ssh-agent: signing through the agent", path)
            return Identity(source="agent", path=path, public_blob=blob)
        return Identity(source="file", path=path, key=load_private_key(path, passphrase))
    with agent_keys():
        pass  # fails now, with the fix, when there is no agent or it is empty
    return Identity(source="agent")
