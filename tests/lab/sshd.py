"""A real OpenSSH server on loopback, playing the bastion.

``Sshd`` runs ``/usr/sbin/sshd -D -f <cfg> -E <log>`` on ``127.0.0.1:<free port>`` from a
private temp dir holding its config, host keys, ``authorized_keys``, pid file and log::

    with Sshd() as bastion:
        key, pub = make_key(tmp)
        bastion.authorize(pub)
        subprocess.run(bastion.ssh_argv(key, known_hosts, "true"), check=True)

Login user: the user running the tests (``getpass.getuser()``).  The lab runs as root, so
sshd logs in as ``root``: the config says ``PermitRootLogin prohibit-password`` (keys only)
and ``PasswordAuthentication no``.  As a non-root user sshd can only log in that same user,
which is what ``user`` is then.

Bastion faults for tests:

* ``kill_sessions()``: kill the per-connection children; the listener stays (a dropped
  connection / an sshd crash of one session).
* ``stop()`` then ``start()``: the bastion goes away and comes back on the SAME port with the
  SAME host key (``restart()`` does both).
* ``rotate_host_key()``: new host keys, restart: the changed-host-key case.
* ``allow_tcp_forwarding=False`` / ``permit_open=[...]``: forwarding refused by the server.

``host_key_line()`` gives a known_hosts line (``[127.0.0.1]:PORT ssh-ed25519 AAAA…``,
optionally hashed) and ``host_key_fingerprint()`` the ``SHA256:…`` string OpenSSH prints.
Options are read at ``start()``: change an attribute and ``restart()`` to apply it.
"""

from __future__ import annotations

import base64
import contextlib
import getpass
import hashlib
import hmac
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

from tests.lab import procs
from tests.lab.keys import KeyKind, fingerprint, make_key
from tests.lab.ports import free_port, wait_port

__all__ = ["SSHD_BINARY", "Sshd", "sshd_missing"]

SSHD_BINARY = "/usr/sbin/sshd"
PRIVSEP_DIR = Path("/run/sshd")


def sshd_missing() -> str | None:
    """A reason why no lab sshd can run here, or None when it can."""
    if not os.access(SSHD_BINARY, os.X_OK):
        return f"{SSHD_BINARY} not installed (apt-get install openssh-server)"
    if shutil.which("ssh-keygen") is None:
        return "ssh-keygen not installed (apt-get install openssh-client)"
    return None


@cache
def _openssh_version() -> tuple[int, int]:
    try:
        out = subprocess.run(
            [SSHD_BINARY, "-V"], capture_output=True, text=True, timeout=10, check=False
        )
    except OSError:
        return (0, 0)
    m = re.search(r"OpenSSH_(\d+)\.(\d+)", out.stderr + out.stdout)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def _hash_hostname(name: str, salt: bytes | None = None) -> str:
    """The ``|1|salt|hash`` form of ``name`` that ``ssh-keygen -H`` writes."""
    salt = salt if salt is not None else os.urandom(20)
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


class Sshd:
    """One lab sshd.  ``start()``/``stop()`` may be repeated; ``close()`` also removes the dir."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        host_key_types: Sequence[KeyKind] = ("ed25519",),
        allow_tcp_forwarding: bool | Literal["yes", "no", "local", "remote", "all"] = True,
        permit_open: Sequence[str] | None = None,
        log_level: str = "VERBOSE",
        extra_config: Sequence[str] = (),
        netns: str | None = None,
        directory: str | os.PathLike[str] | None = None,
    ) -> None:
        if not host_key_types:
            raise ValueError("at least one host key type is needed")
        self.host = host
        self.port = port if port is not None else free_port()
        self.user = getpass.getuser()
        self.host_key_types: tuple[KeyKind, ...] = tuple(host_key_types)
        self.allow_tcp_forwarding = allow_tcp_forwarding
        self.permit_open = list(permit_open) if permit_open is not None else None
        self.log_level = log_level
        self.extra_config = list(extra_config)
        self.netns = netns
        self._own_dir = directory is None
        self.dir = Path(directory or tempfile.mkdtemp(prefix="tunnelman-sshd-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.dir / "sshd_config"
        self.log_path = self.dir / "sshd.log"
        self.pid_path = self.dir / "sshd.pid"
        self.authorized_keys_path = self.dir / "authorized_keys"
        self.authorized_keys_path.touch(mode=0o600, exist_ok=True)
        self.host_key_paths: dict[str, Path] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.key_path: Path | None = None
        """Private key of the user key made by ``add_user_key()`` (authorized, mode 0600)."""
        self.public_key: str | None = None
        self._orphans: set[int] = set()
        self._watchdog: procs.Watchdog | None = None
        self._make_host_keys()

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The listener (master) pid while running."""
        return self.proc.pid if self.running and self.proc is not None else None

    def start(self, timeout: float = 10.0) -> None:
        """Start sshd on ``self.port`` and wait until it accepts connections."""
        if self.running:
            return
        reason = sshd_missing()
        if reason:
            raise RuntimeError(reason)
        with contextlib.suppress(PermissionError):
            PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        self.config_path.write_text(self._config_text())
        self.pid_path.unlink(missing_ok=True)
        argv = [SSHD_BINARY, "-D", "-f", str(self.config_path), "-E", str(self.log_path)]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        stderr_path = self.dir / "sshd.stderr"
        with stderr_path.open("wb") as stderr:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                preexec_fn=procs.preexec_die_with_parent(),  # noqa: PLW1509
                start_new_session=True,
            )
        procs.on_exit(self.close)
        # If the test process is killed outright: stop sshd (and remove its dir if ours).
        cleanup = [["kill", "-TERM", str(self.proc.pid)]]
        if self._own_dir:
            cleanup.append(["rm", "-rf", str(self.dir)])
        self._watchdog = procs.Watchdog(cleanup)
        deadline = time.monotonic() + timeout
        # sshd writes the pid file after it has bound its listening socket.
        while not self.pid_path.exists():
            if self.proc.poll() is not None:
                err = stderr_path.read_text(errors="replace")
                self.stop()
                raise RuntimeError(
                    f"sshd exited at start: {err.strip()} {self._log_since(log_offset)}".strip()
                )
            if time.monotonic() >= deadline:
                self.stop()
                raise TimeoutError(f"sshd did not start within {timeout} s")
            time.sleep(0.01)
        if self.netns is None:
            wait_port(self.host, self.port, timeout=max(0.5, deadline - time.monotonic()))

    def stop(self, *, sessions: bool = True, timeout: float = 5.0) -> None:
        """Stop the listener.  ``sessions=False`` leaves established sessions running (like a
        real ``systemctl restart ssh``); they are killed by ``close()`` at the latest."""
        proc = self.proc
        if proc is None:
            return
        if sessions and proc.poll() is None:
            # Freeze the listener first: a client reconnecting at once (the OpenSSH engine does,
            # within milliseconds) must not get a fresh session between the kill and the exit.
            proc.send_signal(signal.SIGSTOP)
        session_pids = procs.descendants(proc.pid)
        if sessions:
            procs.kill_tree(session_pids, signal.SIGKILL, timeout=timeout)
            if proc.poll() is None:
                proc.kill()  # SIGKILL ends a stopped process; SIGTERM would wait for SIGCONT
        else:
            self._orphans.update(session_pids)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
        self.proc = None
        self.pid_path.unlink(missing_ok=True)
        if self._watchdog is not None:
            self._watchdog.disarm()
            self._watchdog = None

    def restart(self) -> None:
        """``stop()`` then ``start()``: same port, same host keys, sessions dropped."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop everything this sshd started (left-over sessions too) and remove its dir."""
        procs.on_exit_cancel(self.close)
        self.stop()
        if self._orphans:
            procs.kill_tree(self._orphans, signal.SIGKILL)
            self._orphans.clear()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- sessions ----------------------------------------------------------------------------

    def sessions(self) -> list[int]:
        """Pids of the per-connection sshd children of the listener."""
        return procs.children(self.proc.pid) if self.proc is not None and self.running else []

    def kill_sessions(self, sig: int = signal.SIGKILL, timeout: float = 5.0) -> int:
        """Kill every connection (each child of the listener and its subtree); the listener
        keeps running.  Returns how many connections were killed."""
        if self.proc is None:
            return 0
        kids = procs.children(self.proc.pid)
        tree = procs.descendants(self.proc.pid)
        procs.kill_tree(tree, sig, timeout=timeout)
        return len([k for k in kids if k in tree])

    # -- keys --------------------------------------------------------------------------------

    def authorize(self, pubkey_line: str, options: str | None = None) -> None:
        """Append a public key line to ``authorized_keys`` (``options`` e.g.
        ``'permitopen="127.0.0.1:5432"'``).  Takes effect for the next login."""
        line = pubkey_line.strip()
        if options:
            line = f"{options} {line}"
        with self.authorized_keys_path.open("a") as f:
            f.write(line + "\n")

    def add_user_key(
        self, kind: KeyKind = "ed25519", fmt: Literal["openssh", "pem"] = "openssh"
    ) -> Path:
        """Make a client key pair in this server's dir, authorize it, remember it as
        ``key_path``/``public_key``; return the private key path."""
        suffix = "_pem" if fmt == "pem" else ""
        self.key_path, self.public_key = make_key(
            self.dir, kind, fmt, name=f"user_{kind}{suffix}", comment="lab-user"
        )
        self.authorize(self.public_key)
        return self.key_path

    def clear_authorized(self) -> None:
        """Remove every authorized key."""
        self.authorized_keys_path.write_text("")

    def _make_host_keys(self) -> None:
        for kind in self.host_key_types:
            path, _ = make_key(self.dir, kind, name=f"ssh_host_{kind}_key", comment="lab-host")
            self.host_key_paths[kind] = path

    def rotate_host_key(self) -> str:
        """Replace every host key with a new one and restart if running; return the new
        fingerprint of the first key type."""
        was_running = self.running
        self.stop()
        self._make_host_keys()
        if was_running:
            self.start()
        return self.host_key_fingerprint()

    def host_public_key(self, kind: KeyKind | None = None) -> str:
        """``"<algorithm> <base64>"`` of the host key (first configured type by default)."""
        path = self.host_key_paths[kind or self.host_key_types[0]]
        alg, b64 = path.with_name(path.name + ".pub").read_text().split()[:2]
        return f"{alg} {b64}"

    def known_hosts_name(self) -> str:
        """The name OpenSSH looks up: ``[host]:port``, or ``host`` on port 22."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    def host_key_line(
        self,
        hostname_pattern: str | None = None,
        *,
        kind: KeyKind | None = None,
        hashed: bool = False,
    ) -> str:
        """A known_hosts line for this server, e.g. ``[127.0.0.1]:2201 ssh-ed25519 AAAA…``.

        ``hostname_pattern`` replaces the host field as-is (``"bastion.example"``, a pattern
        list, ``@cert-authority …`` is not supported); ``hashed=True`` writes the hashed form
        ``|1|salt|hmac`` of the (single) name.
        """
        name = hostname_pattern or self.known_hosts_name()
        if hashed:
            name = _hash_hostname(name)
        return f"{name} {self.host_public_key(kind)}"

    def write_known_hosts(self, path: str | os.PathLike[str], *, hashed: bool = False) -> Path:
        """Write a known_hosts file holding every host key of this server; return its path."""
        p = Path(path)
        lines = [self.host_key_line(kind=k, hashed=hashed) for k in self.host_key_types]
        p.write_text("\n".join(lines) + "\n")
        return p

    def host_key_fingerprint(self, kind: KeyKind | None = None) -> str:
        """``SHA256:…`` (unpadded base64) of the host key, as ``ssh`` and ``ssh-keygen -l`` print."""
        return fingerprint(self.host_public_key(kind))

    # -- clients -----------------------------------------------------------------------------

    @property
    def destination(self) -> str:
        """``user@host:port``, the profile's ``bastion`` value for this server."""
        return f"{self.user}@{self.host}:{self.port}"

    def ssh_argv(
        self,
        identity_file: str | os.PathLike[str],
        known_hosts: str | os.PathLike[str],
        *command: str,
        options: Sequence[str] = (),
    ) -> list[str]:
        """argv for the system ``ssh`` client: strict host key checking against
        ``known_hosts``, only ``identity_file`` offered, no user config, no agent, no prompt.
        ``options`` go before the destination (``["-N", "-L", "5433:127.0.0.1:5432"]``)."""
        return [
            "ssh",
            "-F", "/dev/null",
            "-p", str(self.port),
            "-i", str(identity_file),
            "-o", "IdentitiesOnly=yes",
            "-o", "IdentityAgent=none",
            "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "ConnectTimeout=10",
            "-o", "ExitOnForwardFailure=yes",
            *options,
            f"{self.user}@{self.host}",
            *command,
        ]  # fmt: skip

    # -- logs --------------------------------------------------------------------------------

    def log_text(self) -> str:
        """Everything sshd logged so far (``-E`` file, kept across restarts)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _log_since(self, offset: int) -> str:
        return self.log_text()[offset:].strip()[-2000:]

    # -- config ------------------------------------------------------------------------------

    def _permit_open_value(self) -> str:
        if self.permit_open is None:
            return "any"
        return " ".join(self.permit_open) or "none"

    def _config_text(self) -> str:
        fwd = self.allow_tcp_forwarding
        fwd_value = ("yes" if fwd else "no") if isinstance(fwd, bool) else fwd
        lines = [
            "# written by tests/lab/sshd.py",
            f"Port {self.port}",
            f"ListenAddress {self.host}",
            *(f"HostKey {self.host_key_paths[k]}" for k in self.host_key_types),
            f"PidFile {self.pid_path}",
            f"AuthorizedKeysFile {self.authorized_keys_path}",
            "AuthorizedKeysCommand none",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "HostbasedAuthentication no",
            "AuthenticationMethods publickey",
            "PermitRootLogin prohibit-password",
            "StrictModes no",
            "UsePAM no",
            "UseDNS no",
            f"AllowTcpForwarding {fwd_value}",
            f"PermitOpen {self._permit_open_value()}",
            "GatewayPorts no",
            "X11Forwarding no",
            "PrintMotd no",
            "PrintLastLog no",
            "MaxStartups 200",
            "MaxSessions 64",
            "LoginGraceTime 30",
            f"LogLevel {self.log_level}",
            "Subsystem sftp internal-sftp",
            # bash sources ~/.bashrc for commands run by sshd unless SHLVL says it is nested;
            # the login user's rc files (pyenv init, …) are slow, and a session killed in the
            # middle of them can leave lock files behind.
            "SetEnv SHLVL=1",
        ]
        if _openssh_version() >= (9, 8):
            # Killed sessions would otherwise count as crashes and get 127.0.0.1 refused.
            lines.append("PerSourcePenalties no")
        lines += self.extra_config
        return "\n".join(lines) + "\n"
