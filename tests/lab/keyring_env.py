"""Is a real Secret Service keyring usable here?  (``scripts/with-keyring`` provides one.)

``keyring_available()`` returns ``None`` when the ``keyring`` package resolves to its
SecretService backend and a set/get/delete round-trip works, else the reason it does not.
The probe runs in a child Python with a deadline, because a Secret Service that wants to
show an unlock prompt would block the caller forever.
"""

from __future__ import annotations

import os
import subprocess
import sys
from functools import cache

__all__ = ["PROBE_SERVICE", "keyring_available", "under_with_keyring"]

PROBE_SERVICE = "tunnelman-lab-probe"

_PROBE = f"""
import sys, uuid
import keyring
from keyring.backends import SecretService
kr = keyring.get_keyring()
if not isinstance(kr, SecretService.Keyring):
    sys.exit("keyring backend is %s.%s, not SecretService" % (type(kr).__module__, type(kr).__name__))
user, secret = uuid.uuid4().hex, uuid.uuid4().hex
keyring.set_password({PROBE_SERVICE!r}, user, secret)
try:
    got = keyring.get_password({PROBE_SERVICE!r}, user)
finally:
    keyring.delete_password({PROBE_SERVICE!r}, user)
if got != secret:
    sys.exit("Secret Service round-trip returned %r" % (got,))
if keyring.get_password({PROBE_SERVICE!r}, user) is not None:
    sys.exit("Secret Service delete did not delete")
"""


def under_with_keyring() -> bool:
    """True inside ``scripts/with-keyring`` (it exports ``TUNNELMAN_LAB_KEYRING=1``)."""
    return os.environ.get("TUNNELMAN_LAB_KEYRING") == "1"


@cache
def _probe(bus: str, backend: str) -> str | None:
    try:
        res = subprocess.run(
            [sys.executable, "-c", _PROBE],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return "Secret Service did not answer within 20 s (an unlock prompt?)"
    if res.returncode != 0:
        lines = (res.stderr or res.stdout).strip().splitlines()
        return f"Secret Service unusable: {lines[-1] if lines else res.returncode}"
    return None


def keyring_available() -> str | None:
    """``None`` when a real Secret Service works through ``keyring``, else why not.

    The answer is cached per D-Bus session address (and ``PYTHON_KEYRING_BACKEND``).
    """
    bus = os.environ.get("DBUS_SESSION_BUS_ADDRESS", "")
    if not bus:
        return "no D-Bus session bus (run the tests under scripts/with-keyring)"
    try:
        import keyring  # noqa: F401
    except ImportError:
        return "the keyring package is not installed"
    return _probe(bus, os.environ.get("PYTHON_KEYRING_BACKEND", ""))
