"""SSH key pairs for the lab, made by the real ``ssh-keygen``.

``make_key(dir, kind, fmt, passphrase)`` writes ``<dir>/<name>`` (mode 0600) and
``<dir>/<name>.pub`` and returns ``(private_path, public_line)``.  ``fmt="pem"`` is the legacy
PEM encoding AWS hands out for EC2 key pairs (``-----BEGIN RSA PRIVATE KEY-----``); OpenSSH
cannot write ed25519 keys as PEM, so that combination raises ``ValueError``.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Literal

__all__ = ["KeyFormat", "KeyKind", "fingerprint", "make_key"]

KeyKind = Literal["ed25519", "rsa", "ecdsa"]
KeyFormat = Literal["openssh", "pem"]


def make_key(
    directory: str | os.PathLike[str],
    kind: KeyKind = "ed25519",
    fmt: KeyFormat = "openssh",
    passphrase: str | None = None,
    *,
    name: str | None = None,
    comment: str = "tunnelman-lab",
    bits: int | None = None,
) -> tuple[Path, str]:
    """Generate a key pair with ssh-keygen; return (private key path, ``authorized_keys`` line).

    ``name`` defaults to ``id_<kind>[_pem]``; an existing file of that name is replaced.
    RSA keys are 2048-bit unless ``bits`` says otherwise (3072 costs ~1 s per key).
    OpenSSH demands passphrases of at least 5 characters.
    """
    if kind not in ("ed25519", "rsa", "ecdsa"):
        raise ValueError(f"unknown key kind {kind!r}")
    if fmt not in ("openssh", "pem"):
        raise ValueError(f"unknown key format {fmt!r}")
    if kind == "ed25519" and fmt == "pem":
        raise ValueError("ssh-keygen cannot write ed25519 keys in PEM format")
    if passphrase is not None and 0 < len(passphrase) < 5:
        raise ValueError("ssh-keygen refuses passphrases shorter than 5 characters")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    path = d / (name or (f"id_{kind}" + ("_pem" if fmt == "pem" else "")))
    for stale in (path, path.with_name(path.name + ".pub")):
        stale.unlink(missing_ok=True)
    argv = ["ssh-keygen", "-q", "-t", kind, "-N", passphrase or "", "-C", comment, "-f", str(path)]
    if kind == "rsa":
        argv += ["-b", str(bits or 2048)]
    elif bits is not None:
        argv += ["-b", str(bits)]
    if fmt == "pem":
        argv += ["-m", "PEM"]
    subprocess.run(argv, check=True, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    path.chmod(0o600)
    public_line = path.with_name(path.name + ".pub").read_text().strip()
    return path, public_line


def fingerprint(public_line: str) -> str:
    """SHA256 fingerprint of a public key line, exactly as OpenSSH prints it (``SHA256:…``)."""
    import base64
    import hashlib

    blob = base64.b64decode(public_line.split()[1])
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"
