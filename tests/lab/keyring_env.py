"""Is a real Secret Service keyring usable here?  (``scripts/with-keyring`` provides one.)

``keyring_available()`` returns ``None`` when the ``keyring`` package resolves to its
SecretService backend and a set/get/delete round-trip works, else the reason it does not.
The probe runs in a child Python with a deadline, because a Secret Service that wants to
show an unlock prompt would block the caller forever.

``PrivateKeyring`` starts one more such Secret Service (a D-Bus session bus and an unlocked
gnome-keyring on it, as ``scripts/with-keyring`` does): each pytest-xdist worker gets its own,
since the tests store fixed names (service ``tunnelman``, profile ``lab``) that two workers
sharing one keyring would overwrite and delete under each other.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from functools import cache
from pathlib import Path

from tests.lab import procs

__all__ = ["PROBE_SERVICE", "PrivateKeyring", "keyring_available", "under_with_keyring"]

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


class PrivateKeyring:
    """A private session bus + unlocked gnome-keyring; ``env`` is what a client needs.

    Both run in the foreground as children of this process (and die with it: PDEATHSIG);
    ``close()`` stops them and removes their temp dir.
    """

    def __init__(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="tm-keyring-"))
        self._dir.chmod(0o700)
        self.runtime = self._dir / "run"
        self.runtime.mkdir(mode=0o700)
        (self._dir / "data").mkdir(mode=0o700)
        self._procs: list[subprocess.Popen[bytes]] = []
        self.env: dict[str, str] = {}

    def start(self) -> None:
        bus = subprocess.Popen(
            ["dbus-daemon", "--session", "--nofork", "--nosyslog", "--print-address=1"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            preexec_fn=procs.preexec_die_with_parent(),  # noqa: PLW1509
        )
        self._procs.append(bus)
        assert bus.stdout is not None
        address = bus.stdout.readline().decode().strip()
        if not address:
            raise RuntimeError("dbus-daemon printed no address")
        self.env = {"DBUS_SESSION_BUS_ADDRESS": address, "XDG_RUNTIME_DIR": str(self.runtime)}
        env = {**os.environ, **self.env, "XDG_DATA_HOME": str(self._dir / "data")}
        daemon = subprocess.Popen(
            ["gnome-keyring-daemon", "--foreground", "--unlock", "--components=secrets"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            preexec_fn=procs.preexec_die_with_parent(),  # noqa: PLW1509
        )
        self._procs.append(daemon)
        assert daemon.stdin is not None
        daemon.stdin.write(b"lab-keyring-password")
        daemon.stdin.close()
        # Ready once it owns the Secret Service name on the bus.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            res = subprocess.run(
                ["dbus-send", "--session", "--print-reply", "--dest=org.freedesktop.DBus",
                 "/org/freedesktop/DBus", "org.freedesktop.DBus.NameHasOwner",
                 "string:org.freedesktop.secrets"],
                capture_output=True, text=True, env=env, timeout=10, check=False,
            )  # fmt: skip
            if "boolean true" in res.stdout:
                return
            if daemon.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError("gnome-keyring-daemon did not take the Secret Service name")

    def close(self) -> None:
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
            if proc.stdout is not None:
                proc.stdout.close()
        self._procs.clear()
        shutil.rmtree(self._dir, ignore_errors=True)
