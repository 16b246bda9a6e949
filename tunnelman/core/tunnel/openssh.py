"""The OpenSSH engine: `engine = "openssh"` runs the system `ssh -N -L` instead of paramiko.

Built by `tunnelman.core.tunnel.open_tunnel`; states, reconnects and status are the base's
(`base.Tunnel`), so `up`, the one-shot commands, the agent and the TUI all get it. For people who
want OpenSSH's own crypto, its ssh_config (ProxyJump, certificates, Match) or its client.

Two ways to hold the port, as the default engine does (a client that connects while ssh
reconnects waits, and its arrival cuts the backoff short; nothing is refused for long):
- direct (POSIX): ssh runs as a ControlMaster with no forward; once it is logged in, tunnelman
  asks it through the control socket (`ssh -O forward`) to listen on 127.0.0.1:PORT, so the bytes
  take exactly `ssh -L`'s path. When ssh dies, tunnelman binds the port itself at once and holds
  the clients that arrive; when the new ssh is logged in it hands the port back (a ~10 ms gap in
  which a connect is refused) and relays the held clients into it. Connections are counted from
  the kernel's table (Linux).
- relay (Windows' ssh.exe has no ControlMaster): tunnelman listens on the port all the time and
  relays each client to ssh's private inner port (`-L 127.0.0.1:INNER:endpoint`) through
  `listener.LoopbackListener` (the SSM engine's listener too).

Before "up", one forwarded test connection goes through ssh to the endpoint and sends
PostgreSQL's SSLRequest (8 bytes: every PostgreSQL answers it with one byte, before any login): an
answer proves the whole path, and a closed connection comes with ssh's "open failed" line, which
becomes the same error the default engine raises (endpoint does not resolve / cannot be reached
from the bastion / forwarding refused). When the server answers "S" the TLS handshake is
completed and closed cleanly, so the server logs nothing.

The same rules as the paramiko engine:
- Host keys: the profile's known_hosts with tunnelman's policy. When the file holds no key for the
  bastion, a paramiko handshake (no authentication) fetches the key first and the policy asks /
  accepts / refuses it, and records it; ssh then runs with `StrictHostKeyChecking=yes` against that
  same file. When ssh refuses the key, the same probe produces tunnelman's own HostKeyChanged (both
  fingerprints, the line to remove).
- Keys: only the profile's key (`-i KEY -o IdentitiesOnly=yes`, permissions checked first) or
  ssh-agent when the profile names none (`IdentityFile=none`: never the default ~/.ssh/id_*).
- Never a prompt: `BatchMode=yes`, stdin is /dev/null and ssh runs in its own session (no
  controlling terminal). A passphrase-protected key must be in ssh-agent: checked before ssh runs
  (the agent must hold that very key, matched by KEY.pub or the OpenSSH file's public header).
- A silent link: ServerAliveInterval is a third of `keepalive` and three probes may go
  unanswered, so a dead link is noticed within ~15 s by default, as in the default engine.
- Readiness: ssh's LocalCommand (run once the -L listener is bound) prints a line on a pipe, and
  the inner port is polled as well (the kernel's listening sockets on Linux, else a connect)
  until a deadline; ssh's exit and its stderr become tunnelman's errors.

ssh runs under a small `sh` watchdog reading a pipe from us: if tunnelman dies, even by SIGKILL, the
pipe closes and the watchdog ends ssh, so no orphan keeps the port. On Windows (ssh.exe, found in
%SystemRoot%\\System32\\OpenSSH too) a kill-on-close Job object does that instead, and ssh gets no
console window (tunnelman/core/platform/process.py).
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunnelman.core.errors import (
    AuthenticationFailed,
    BastionUnreachable,
    Cancelled,
    ConfigError,
    ForwardingFailed,
    HostKeyError,
    OpenSSHMissing,
    PortBusyError,
    SSHKeyError,
    TunnelError,
    TunnelmanError,
)
from tunnelman.core.platform import process
from tunnelman.core.ssh import known_hosts
from tunnelman.core.ssh.known_hosts import HostKeyPolicy
from tunnelman.core.tunnel import ports, probe
from tunnelman.core.tunnel.base import FINAL_ERRORS, Capabilities, Tunnel, TunnelState, TunnelStatus
from tunnelman.core.tunnel.listener import Lease, LoopbackListener
from tunnelman.core.tunnel.traffic import KernelCounts, Traffic

if TYPE_CHECKING:
    import paramiko

    from tunnelman.core.profiles import Bastion, Profile
    from tunnelman.core.ssh import Identity

__all__ = ["OpenSSHMissing", "OpenSSHTunnel", "find_ssh", "ssh_argv"]

POLL = 0.05  # readiness poll of the port, in case the LocalCommand signal never comes
READY = "tunnelman-ready"
STDERR_LINES = 40

# Runs ssh ("$@"), ends it when our pipe on stdin closes (tunnelman exited or stop()), exits
# with ssh's status; ssh itself gets /dev/null as stdin (see `process.PIPE_WATCHDOG`).
_WATCHDOG = process.PIPE_WATCHDOG


def find_ssh(path: str | None = None) -> str:
    """The ssh client on PATH, or OpenSSHMissing saying how to get one or go without."""
    found = shutil.which("ssh", path=process.ssh_search_path(path))
    if found:
        return found
    raise OpenSSHMissing(
        'engine = "openssh" needs the OpenSSH client (ssh), and it is not on PATH',
        hint=(
            "install it (Debian/Ubuntu `sudo apt install openssh-client`, Fedora `sudo dnf "
            "install openssh-clients`, Windows: the OpenSSH Client optional feature), or remove "
            'engine = "openssh" from the profile to use the built-in engine'
        ),
    )


def _forward_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _config_args(given: Profile) -> list[str]:
    """`-F FILE` when ssh would otherwise read another file than tunnelman resolved.

    ssh finds `~` from the passwd entry, tunnelman from $HOME; `ssh_config = false` means none.
    Without a -F, ssh also reads /etc/ssh/ssh_config, as it always did here.
    """
    from tunnelman.core.ssh import config as ssh_config

    setting = given.ssh_config
    if setting is False:
        return ["-F", os.devnull]
    if setting is not True:
        return ["-F", str(setting)]
    ours = ssh_config.config_file(True)
    if ssh_config.passwd_config() == ssh_config.user_config():
        return []
    return ["-F", str(ours) if ours is not None else os.devnull]


def forward_spec(profile: Profile, port: int) -> str:
    """`127.0.0.1:PORT:endpoint-host:endpoint-port`, as -L takes it (loopback only)."""
    assert profile.endpoint is not None
    endpoint = profile.endpoint
    return f"127.0.0.1:{port}:{_forward_host(endpoint.host)}:{endpoint.port}"


def ssh_argv(
    ssh: str,
    profile: Profile,
    port: int,
    *,
    strict: str = "yes",
    given: Profile | None = None,
    control: Path | None = None,
) -> list[str]:
    """The `ssh -N -L 127.0.0.1:PORT:endpoint` command line for a profile (no secrets in it).

    `profile` has ssh_config applied (`ssh_config.effective`); `given` is the profile as the file
    says (default: the same). ssh resolves the bastion's alias itself, so -p, -l and -J are
    passed only for what the profile states, and ssh_config's Port, User and ProxyJump stay in
    force otherwise. With `control` (a socket path), ssh is a ControlMaster with no forward of
    its own: the forward is added afterwards through the socket (`mux_forward_argv`).
    """
    given = given or profile
    assert given.bastion is not None
    assert profile.bastion is not None
    assert profile.endpoint is not None
    argv = [ssh, "-N", *_config_args(given)]
    if control is None:
        argv += ["-L", forward_spec(profile, port)]
    if given.bastion.port_given:
        argv += ["-p", str(given.bastion.port)]
    if given.bastion.user:
        argv += ["-l", given.bastion.user]
    if given.jump:
        argv += ["-J", ",".join(str(hop) for hop in given.jump)]
    argv += [
        "-o", "ExitOnForwardFailure=yes",
        "-o", "BatchMode=yes",
        "-o", f"StrictHostKeyChecking={strict}",
        "-o", f"UserKnownHostsFile={profile.known_hosts}",
        "-o", f"GlobalKnownHostsFile={os.devnull}",
        "-o", "UpdateHostKeys=no",
        "-o", "CheckHostIP=no",
        # As the default engine: a probe every keepalive/3 s, dead after three unanswered.
        "-o", f"ServerAliveInterval={max(1, round(profile.keepalive / 3))}",
        "-o", "ServerAliveCountMax=3",
        "-o", f"ConnectTimeout={profile.connect_timeout}",
        *(
            ["-o", "ControlMaster=yes", "-o", f"ControlPath={control}", "-o", "ControlPersist=no"]
            if control is not None
            else ["-o", "ControlMaster=no", "-o", "ControlPath=none"]
        ),
        "-o", "ForwardAgent=no",
        "-o", "ForwardX11=no",
        # ssh runs LocalCommand once logged in and its -L listener is bound (and, with
        # ExitOnForwardFailure, only if it could be): the moment it is ready, without polling.
        "-o", "PermitLocalCommand=yes",
        "-o", f"LocalCommand=echo {READY}",
        "-o", "PasswordAuthentication=no",
        "-o", "KbdInteractiveAuthentication=no",
    ]  # fmt: skip
    # The key is the profile's or ssh_config's, resolved by tunnelman (`~` from $HOME) and
    # permission-checked: named outright, and only it.
    if profile.identity_file is not None:
        argv += ["-i", str(profile.identity_file), "-o", "IdentitiesOnly=yes"]
    else:
        argv += ["-o", "IdentityFile=none"]  # the agent's keys only, never ~/.ssh/id_*
    argv += ["--", given.bastion.host]
    return argv


def mux_forward_argv(ssh: str, control: Path, spec: str) -> list[str]:
    """Ask the ControlMaster on `control` to listen on and forward `spec` (-L syntax)."""
    return [
        ssh, "-F", os.devnull, "-S", str(control), "-o", "BatchMode=yes",
        "-O", "forward", "-L", spec, "--", "tunnelman",
    ]  # fmt: skip


def _key_encrypted(path: Path) -> bool:
    """Whether a private key file needs a passphrase (ssh would need the agent for it)."""
    import base64
    import binascii

    try:
        text = path.read_text("ascii", errors="replace")
    except OSError:
        return False
    if "-----BEGIN OPENSSH PRIVATE KEY-----" in text:
        body = text.split("-----BEGIN OPENSSH PRIVATE KEY-----", 1)[1].split("-----END", 1)[0]
        try:
            raw = base64.b64decode("".join(body.split()))
        except (binascii.Error, ValueError):
            return False
        magic = b"openssh-key-v1\x00"
        size = int.from_bytes(raw[len(magic) : len(magic) + 4], "big")
        return raw[len(magic) + 4 : len(magic) + 4 + size] != b"none"
    return "ENCRYPTED" in text


def _accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class _SSHProcess:
    """One `ssh -N -L` under the watchdog, with its stderr collected by a thread."""

    def __init__(self, argv: list[str], on_line: Any) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=STDERR_LINES)
        self._on_line = on_line
        env = dict(os.environ)
        env.pop("SSH_ASKPASS", None)  # BatchMode already forbids asking; belt and braces
        env["SSH_ASKPASS_REQUIRE"] = "never"
        plan = process.ssh_child_plan()
        self._watchdog = plan.watchdog
        self.proc = subprocess.Popen(
            ["sh", "-c", _WATCHDOG, "tunnelman-ssh", *argv] if plan.watchdog else argv,
            stdin=subprocess.PIPE if plan.watchdog else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            **plan.popen,
        )
        if plan.job:
            process.adopt_child(self.proc)  # ends with us, however we end (Windows)
        self.ready = threading.Event()
        self._reader = threading.Thread(target=self._read, name="tunnelman-ssh-stderr", daemon=True)
        self._reader.start()
        self._ready_reader = threading.Thread(
            target=self._read_ready, name="tunnelman-ssh-ready", daemon=True
        )
        self._ready_reader.start()

    def _read_ready(self) -> None:
        stream = self.proc.stdout
        assert stream is not None
        for raw in stream:
            if raw.strip() == READY.encode():
                self.ready.set()

    def _read(self) -> None:
        stream = self.proc.stderr
        assert stream is not None
        for raw in stream:
            line = raw.decode("utf-8", errors="replace").rstrip()
            if line:
                self.lines.append(line)
                self._on_line(line)

    def exited(self) -> int | None:
        return self.proc.poll()

    def stderr_text(self) -> str:
        self._reader.join(timeout=2.0)  # ssh has exited: the pipe ends soon
        return "\n".join(self.lines)

    def stop(self) -> None:
        proc = self.proc
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                if self._watchdog and sys.platform != "win32":
                    # The whole group (the watchdog's own session, not reaped yet, so the id is
                    # still ours): ssh ended while it connects leaves its ProxyJump child `ssh -W`
                    # running, which holds our stderr pipe open (and the reader below with it).
                    os.killpg(proc.pid, signal.SIGTERM)
                else:
                    proc.terminate()
            try:
                proc.wait(timeout=3.0)
            except subprocess.TimeoutExpired:
                process.kill_hard(proc)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=2.0)
        with contextlib.suppress(OSError):
            if proc.stdin is not None:
                proc.stdin.close()
        self._reader.join(timeout=2.0)
        self._ready_reader.join(timeout=2.0)
        for stream, reader in ((proc.stderr, self._reader), (proc.stdout, self._ready_reader)):
            # Closing a pipe another thread still reads waits for that read: leave it to the
            # reader, which ends when the last holder of the pipe's other end exits.
            if stream is not None and not reader.is_alive():
                with contextlib.suppress(OSError):
                    stream.close()


class OpenSSHTunnel(Tunnel):
    """The system ssh behind our own listener. See the module docstring."""

    capabilities = Capabilities(
        engine="openssh",
        instance_connect=False,
        decrypts_keys=False,
        serves_checked_transport=False,
        counts_connections=True,
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ssh = "ssh"
        self._ssh_proc: _SSHProcess | None = None
        self._inner: int | None = None  # ssh's own -L port, on 127.0.0.1
        self._bound: int | None = None  # our listener's port
        self._open_failed: collections.deque[str] = collections.deque(maxlen=8)
        self._open_failed_seen = threading.Event()
        # Direct: ssh is a ControlMaster and listens on the user's port itself (exactly
        # `ssh -L`); our listener holds the port only while ssh reconnects. Relay (no mux:
        # Windows): our listener always, each client relayed to ssh's inner port.
        self._direct = process.ssh_multiplexing()
        self._kernel: KernelCounts | None = None
        if self._direct:
            # ssh moves the bytes itself: count them from the kernel's sockets (Linux only).
            self._traffic = None
            if sys.platform.startswith("linux"):
                self._kernel = KernelCounts(self._kernel_sockets)
                self._traffic = Traffic(self._kernel)
                self._traffic.on_sample = self._kernel_clients
        self._mux_dir: Path | None = None
        # Direct: what we relay into ssh's listener is counted there, by the kernel (and its
        # relays are counted twice by /proc: `relaying` is taken off).
        self._listener = LoopbackListener(
            self._admit,
            traffic=None if self._direct else self._traffic,
            log=self._log,
            refused="ssh's port %d refused a client (%s): ssh is ending?",
        )

    def adopt(self, transport: paramiko.Transport, identity: Identity) -> int:
        """`tunnelman check` connected with paramiko: close that, and start ssh as usual."""
        with contextlib.suppress(Exception):
            transport.close()
        return self.start()

    def _start(self) -> int:
        self._require_route()
        self._apply_ssh_config()
        self._ssh = find_ssh()
        wanted = self._local_port_wanted()
        if self._direct:
            ports.ensure_port_free(wanted)  # a busy port fails here, in ms
        else:
            self._listen(wanted)
        self._check_identity()
        self._check_cancel()
        strict = self._host_key_first()
        self._check_cancel()
        self._launch(strict)
        self._check_cancel()
        if self._direct:
            self._open_forward(wanted)
        assert self._bound is not None
        assert self._inner is not None
        bound = self._bound
        self._test_forward(self._inner)
        self._check_cancel()
        if not self._direct:
            self._start_accepting()
        self._came_up(bound, " (openssh)")
        return bound

    def _control_path(self) -> Path:
        if self._mux_dir is None:
            import tempfile

            # Private (0700) and short: a Unix socket path has ~100 bytes at most.
            self._mux_dir = Path(tempfile.mkdtemp(prefix="tunnelman-"))
        return self._mux_dir / "ssh"

    def _open_forward(self, port: int) -> None:
        """Direct: ask the ControlMaster to listen on 127.0.0.1:`port` (0: a free one)."""
        attempts = 3 if port == 0 else 1
        while True:
            chosen = port or ports.free_local_port()
            try:
                self._mux_forward(chosen)
            except PortBusyError:
                attempts -= 1
                if attempts <= 0:
                    raise
                continue  # someone took the free port we picked: pick another
            with self._lock:
                self._bound = chosen
                self._inner = chosen
                self._changed.notify_all()
            return

    def _mux_forward(self, port: int) -> None:
        control = self._control_path()
        argv = mux_forward_argv(self._ssh, control, forward_spec(self.profile, port))
        deadline = time.monotonic() + float(self.profile.connect_timeout)
        while True:
            try:
                done = subprocess.run(
                    argv,
                    check=False,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=float(self.profile.connect_timeout),
                    **process.ssh_child_plan().popen,
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise TunnelError(f"ssh -O forward failed: {exc}") from None
            if done.returncode == 0:
                return
            text = done.stderr.decode("utf-8", errors="replace")
            # ssh may run LocalCommand a moment before its control socket listens.
            if not control.exists() and time.monotonic() < deadline and self._ssh_alive():
                time.sleep(POLL)
                continue
            ports.ensure_port_free(port)  # PortBusyError naming the holder, if that is why
            raise TunnelError(
                f"ssh did not open the forward on 127.0.0.1:{port}: "
                f"{_last_line(text) or f'exit status {done.returncode}'}"
            )

    def _ssh_alive(self) -> bool:
        proc = self._ssh_proc
        return proc is not None and proc.exited() is None

    # ------------------------------------------------------------------------- our listener

    def _listen(self, port: int) -> int:
        bound = self._listener.listen(port)
        self._bound = bound  # local_port says it only once up (`_came_up`), as the default engine
        return bound

    def _start_accepting(self) -> None:
        self._listener.start(f"tunnelman-listen-{self._bound}")

    def _hold(self) -> None:
        """Direct: ssh is gone; listen on the port ourselves until it is back."""
        if self._listener.listening or self._bound is None:
            return
        self._listen(self._bound)
        self._start_accepting()

    def _admit(self) -> Lease | None:
        """A client of our listener (on its own thread): wait until ssh can take it."""
        if not self._await_up(self._ssh_running):
            return None
        return Lease(self._inner, float(self.profile.connect_timeout), self._client_left)

    def _kernel_sockets(self) -> dict[int, tuple[int, int]] | None:
        port = self._bound
        return ports.loopback_traffic(port) if port else {}

    def _kernel_clients(self) -> None:
        """Direct mode, after each traffic sample: the clients ssh accepted (or lost) since the
        last one, for `on_client` (the event log). Clients our listener took while ssh
        reconnected (relayed into ssh's listener) were told by `_await_up` already."""
        if self._kernel is None:
            return
        arrived, left = self._kernel.changes()
        if self.on_client is None or self._state != TunnelState.UP or self._listener.relaying:
            return
        snapshot = self._snapshot()
        for _ in range(arrived):
            self._tell_client(snapshot, arrived=True)
        for _ in range(left):
            self._tell_client(snapshot, arrived=False)

    def _ssh_running(self) -> bool:
        proc = self._ssh_proc
        return proc is not None and proc.exited() is None and self._inner is not None

    def _close_listener(self, *, clients: bool = True) -> None:
        """Stop listening; with `clients`, also cut every connection we relay or hold."""
        self._listener.close(clients=clients)
        with self._lock:
            self._changed.notify_all()

    # ------------------------------------------------------------------------- the test forward

    def _test_forward(self, port: int) -> None:
        """One connection through ssh to the endpoint before "up" (see the module docstring)."""
        profile = self.profile
        assert profile.endpoint is not None
        timeout = float(profile.connect_timeout)
        self._open_failed_seen.clear()
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        except OSError as exc:
            raise TunnelError(f"ssh's forward did not accept a connection: {exc}") from None
        answer = b""
        try:
            answer = probe.ssl_answer(sock, profile.endpoint.host, timeout)
        except TimeoutError:
            sock.close()
            raise ForwardingFailed(
                f"the bastion did not reach the database endpoint {profile.endpoint} within "
                f"{timeout:g} s",
                hint="a security group probably drops the bastion's traffic to the database, "
                "or the cluster is stopped",
            ) from None
        except OSError:
            answer = b""
        finally:
            with contextlib.suppress(OSError):
                sock.close()
        if answer:
            return
        # ssh closed it: its "open failed" line says why (it comes on stderr moments later).
        self._open_failed_seen.wait(2.0)
        line = self._open_failed[-1] if self._open_failed else ""
        from tunnelman.core import ssh

        raise ssh.forward_error(profile.endpoint, line)

    # ------------------------------------------------------------------------- before ssh

    def _check_identity(self) -> None:
        from tunnelman.core import ssh

        path = self.profile.identity_file
        if path is None:
            if not ssh.agent_available():
                raise ssh.no_agent_error()
            return
        ssh.check_key_permissions(path)
        if not _key_encrypted(path):
            return
        if not ssh.agent_available():
            raise SSHKeyError(
                f'key {path} is passphrase-protected: with engine = "openssh" it must be in '
                f"ssh-agent (tunnelman never lets ssh prompt)",
                hint=f"run `ssh-add {path}`",
            )
        blob = ssh.public_key_blob(path)
        if blob is None:
            # ssh finds the agent's copy by the public key; an encrypted PEM file has none.
            raise SSHKeyError(
                f"key {path} is passphrase-protected and has no public key beside it "
                f'({path.name}.pub): with engine = "openssh", ssh cannot match it to ssh-agent',
                hint=f"write it with `ssh-keygen -y -f {path} > {path}.pub`, then `ssh-add {path}`",
            )
        if not ssh.agent_has_key(blob):
            raise SSHKeyError(
                f"key {path} is passphrase-protected and ssh-agent does not hold it: "
                f'with engine = "openssh" it must be in ssh-agent (tunnelman never lets ssh prompt)',
                hint=f"run `ssh-add {path}`",
            )
        self._log.info("key %s: ssh-agent holds it, ssh will sign through the agent", path)

    def _host_key_first(self) -> str:
        """Make sure known_hosts holds the bastion's key (asking as the policy says).

        Returns ssh's StrictHostKeyChecking value: "yes", or "accept-new" when the bastion cannot
        be reached directly (ProxyJump in ~/.ssh/config) and the policy accepts new keys.
        """
        profile = self.profile
        assert profile.bastion is not None
        entries = known_hosts.entries_for(
            profile.known_hosts, profile.bastion.host, profile.bastion.port
        )
        if profile.jump:
            # The first jump host is reachable: its key gets tunnelman's policy (ssh's -J child
            # would only refuse it). The others are checked by ssh against known_hosts.
            from tunnelman.core import ssh

            try:
                self._probe_host_key(self._host_keys, profile.jump[0])
            except TunnelmanError as exc:
                ssh.name_hop(exc, profile.jump[0], 1, len(profile.jump), profile.bastion)
                raise
        if any(e.marker is None for e in entries):
            return "yes"  # ssh checks it against the same file; a refusal is explained below
        try:
            self._probe_host_key(self._host_keys)
        except BastionUnreachable as exc:
            if self._host_keys.accept_new:
                self._log.info("host key probe failed (%s): letting ssh accept-new", exc)
                return "accept-new"
            raise BastionUnreachable(
                f"{exc.message}; cannot check the bastion's host key before starting ssh",
                hint="record it first: connect once with `ssh` (e.g. through your ProxyJump), "
                "or use --accept-new-host-key",
            ) from None
        return "yes"

    def _probe_host_key(self, policy: HostKeyPolicy, hop: Bastion | None = None) -> None:
        """A paramiko handshake (no login) to check / record the key with tunnelman's policy.

        `hop`: the first jump host instead of the bastion. A bastion behind jump hosts cannot be
        reached directly: BastionUnreachable saying so.
        """
        from dataclasses import replace

        from tunnelman.core import ssh

        profile = self.profile
        bastion = profile.bastion
        assert bastion is not None
        if hop is not None:
            profile = replace(profile, bastion=hop, jump=())
        elif profile.jump:
            raise BastionUnreachable(
                f"bastion {bastion.host}:{bastion.port} is reached through "
                f"jump host {profile.jump[0]}"
            )
        assert profile.bastion is not None
        timeout = float(profile.connect_timeout)
        sock = ssh.open_socket(profile.bastion, timeout, profile.keepalive, self._cancel)
        try:
            transport = ssh.start_transport(sock, profile, timeout)
        except BaseException:
            sock.close()
            raise
        try:
            ssh.check_host_key(transport, profile, policy)
        finally:
            transport.close()

    # ------------------------------------------------------------------------- running ssh

    def _on_stderr(self, line: str) -> None:
        low = line.lower()
        if "open failed" in low or "connect_to" in low:
            # A client connected and the bastion refused or could not reach the endpoint.
            self._open_failed.append(line)
            self._open_failed_seen.set()
            message = _forward_message(self.profile, line)
            self._log.warning("tunnel %s: %s", self.profile.name, message)
            with self._lock:
                if self._state != TunnelState.STARTING:
                    self._error = message
        else:
            self._log.info("ssh (%s): %s", self.profile.name, line)

    def _spawn(self, port: int, strict: str) -> _SSHProcess:
        control = self._control_path() if self._direct else None
        if control is not None:
            with contextlib.suppress(OSError):
                control.unlink()  # a dead master's socket would refuse the new one
        argv = ssh_argv(
            self._ssh, self.profile, port, strict=strict, given=self._given, control=control
        )
        try:
            return _SSHProcess(argv, self._on_stderr)
        except OSError as exc:
            raise TunnelError(f"cannot run {self._ssh}: {exc.strerror or exc}") from None

    def _launch(self, strict: str) -> None:
        """Start ssh and wait until it is logged in (direct) or listens on its inner port."""
        attempts = 3
        probed = False
        while True:
            chosen = 0 if self._direct else ports.free_local_port()
            proc = self._spawn(chosen, strict)
            with self._lock:
                self._ssh_proc = proc
            try:
                self._wait_ready(proc, chosen)
            except _SSHExited as exited:
                error = self._exit_error(exited.text, chosen, exited.code)
            else:
                if not self._direct:
                    with self._lock:
                        self._inner = chosen
                        self._changed.notify_all()
                return
            if isinstance(error, _HostKeyRefused) and not probed:
                probed = True
                # Raises tunnelman's precise HostKeyChanged / HostKeyUnknown, or accepts and
                # records a new key (the policy asked), after which ssh runs once more.
                self._probe_host_key(self._host_keys)
                continue
            if isinstance(error, _HostKeyRefused):
                raise HostKeyError(error.message, hint=error.hint)
            if isinstance(error, PortBusyError) and attempts > 1:
                attempts -= 1  # someone took the free port we picked: pick another
                continue
            raise error

    def _wait_ready(self, proc: _SSHProcess, port: int) -> None:
        """Until ssh says it listens (LocalCommand), or the port answers, or ssh exits."""
        profile = self.profile
        # ConnectTimeout covers TCP only; the handshake and login get as long again.
        limit = 2 * profile.connect_timeout + 5
        deadline = time.monotonic() + limit
        while True:
            if proc.ready.wait(POLL):
                return
            code = proc.exited()
            if code is not None:
                raise _SSHExited(code, proc.stderr_text())
            if self._cancel is not None and self._cancel.is_set():
                proc.stop()
                raise Cancelled()
            if self._stopping.is_set():
                proc.stop()
                raise TunnelError("stopped")
            if port:  # relay: ssh's own -L listener answers (direct: only LocalCommand says)
                up = ports.listening_on_loopback(port)
                if up or (up is None and _accepts(port)):
                    return
            if time.monotonic() >= deadline:
                proc.stop()
                assert profile.bastion is not None
                raise BastionUnreachable(
                    f"ssh to bastion {profile.bastion.host}:{profile.bastion.port} did not set up "
                    f"the forward within {limit} s",
                    hint="check the bastion with `tunnelman check`; raise connect_timeout if the "
                    "link is slow",
                )

    def _exit_error(self, text: str, port: int, code: int) -> TunnelmanError:
        error = _map_stderr(self.profile, text, port, code)
        if isinstance(error, PortBusyError) and port != self._bound:
            # ssh's inner port, not the user's: say so if it ever reaches the user.
            return TunnelError(f"ssh could not listen on its inner port {port}: {_last_line(text)}")
        return error

    # ------------------------------------------------------------------------- supervision

    def _watch(self) -> None:
        while not self._stopping.is_set():
            proc = self._current()
            if proc is None:
                return
            code = proc.proc.wait()  # returns when ssh ends (stop() ends it too)
            if self._stopping.is_set():
                return
            with self._lock:
                inner, self._inner = self._inner, None
            if self._direct and self._supervise:
                try:
                    self._hold()  # at once: a client arriving now waits instead of a refusal
                except TunnelmanError as exc:
                    self._log.warning(
                        "cannot hold port %s while ssh reconnects: %s", self._bound, exc
                    )
            error = self._exit_error(proc.stderr_text(), inner or 0, code)
            reason = str(error) if code != 0 else "ssh exited"
            if not self._supervise or isinstance(error, FINAL_ERRORS):
                self._fail(reason)
                return
            if not self._reconnect_loop(reason):
                return

    def _current(self) -> _SSHProcess | None:
        with self._lock:
            return self._ssh_proc

    def _reconnect_once(self) -> bool:
        """ssh died: start it again (our port stayed bound meanwhile)."""
        if not self._direct:
            self._launch("yes")
            return not self._stopping.is_set()
        assert self._bound is not None
        self._hold()  # again, if the last attempt had handed the port back and then failed
        self._launch("yes")
        if self._stopping.is_set():
            return False
        # Hand the port back to ssh: clients we accepted meanwhile are relayed to it.
        self._close_listener(clients=False)
        try:
            self._mux_forward(self._bound)
        except TunnelmanError:
            self._stop_ssh()
            raise
        with self._lock:
            self._inner = self._bound
            self._changed.notify_all()
        return not self._stopping.is_set()

    def _stop_ssh(self) -> None:
        proc = self._current()
        with self._lock:
            self._inner = None
        if proc is not None:
            proc.stop()

    def _close_for_failure(self) -> None:
        # Port first, then ssh: whoever reacts to FAILED finds nothing listening.
        self._close_listener()
        self._stop_ssh()

    def _teardown(self) -> None:
        self._stopping.set()
        self._backoff.wake()
        self._close_listener()
        self._stop_ssh()
        with self._lock:
            watcher = self._watcher
        self._listener.join([watcher])
        if self._mux_dir is not None:
            import shutil as _shutil

            _shutil.rmtree(self._mux_dir, ignore_errors=True)

    def _snapshot(self) -> TunnelStatus:
        snapshot = super()._snapshot()
        if not self._direct or self._bound is None or self._state != TunnelState.UP:
            return snapshot
        # ssh accepts the clients itself: count its connections from the kernel's table.
        found = ports.established_on_loopback(self._bound)
        if found is None:
            return snapshot
        return replace(snapshot, connections=max(0, found - self._listener.relaying))


class _SSHExited(Exception):
    def __init__(self, code: int, text: str) -> None:
        super().__init__(code, text)
        self.code = code
        self.text = text


class _HostKeyRefused(HostKeyError):
    """ssh refused the host key; the paramiko probe then says precisely why."""


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _forward_message(profile: Profile, line: str) -> str:
    target = str(profile.endpoint)
    low = line.lower()
    if "administratively prohibited" in low:
        return (
            f"the bastion refuses to forward to {target}: administratively prohibited (TCP "
            "forwarding disabled for this user, or PermitOpen does not allow this target)"
        )
    return f"the bastion could not reach the database endpoint {target} ({line.strip()})"


def _map_stderr(profile: Profile, text: str, port: int, code: int) -> TunnelmanError:
    """ssh's last words as tunnelman's error classes."""
    assert profile.bastion is not None
    bastion = profile.bastion
    where = f"{bastion.host}:{bastion.port}"
    low = text.lower()
    last = _last_line(text) or f"ssh exited with status {code}"
    if "could not resolve hostname" in low:
        return BastionUnreachable(
            f"bastion name {bastion.host} does not resolve ({last.rpartition(':')[2].strip()})",
            hint="check the bastion's host name in the profile (and Host entries in "
            "~/.ssh/config); a stopped and restarted EC2 instance gets a new public DNS name",
        )
    if "connection refused" in low:
        return BastionUnreachable(
            f"bastion {where} refused the connection (nothing listens on port {bastion.port})",
            hint="check the bastion's address and SSH port in the profile, and that sshd runs there",
        )
    if "timed out" in low:
        return BastionUnreachable(
            f"bastion {where} did not answer within {profile.connect_timeout} s (connection timed out)",
            hint="check that the bastion is running and that its security group allows SSH from "
            "your IP address; raise connect_timeout if the link is slow",
        )
    if "no route to host" in low or "network is unreachable" in low:
        return BastionUnreachable(
            f"bastion {where} is unreachable ({last})",
            hint="check your network connection (VPN?) and the bastion's address",
        )
    if (
        "host key verification failed" in low
        or "remote host identification has changed" in low
        or "host key is known for" in low
    ):
        return _HostKeyRefused(
            f"ssh refused the host key of bastion {where} ({last})",
            hint=f"compare it with {profile.known_hosts}; `tunnelman check {profile.name}` shows both keys",
        )
    if (
        "address already in use" in low
        or "cannot listen to port" in low
        or ("could not request local forwarding" in low)
    ):
        return ports.port_busy_error(port)
    if "permission denied" in low or "too many authentication failures" in low:
        what = f"key {profile.identity_file}" if profile.identity_file else "the keys in ssh-agent"
        return AuthenticationFailed(
            f"bastion {where} refused {what} for user {bastion.login}: authentication failed",
            hint="check the user name, ec2-user on Amazon Linux or ubuntu on Ubuntu, and that "
            "the matching public key is in ~/.ssh/authorized_keys on the bastion",
        )
    if "administratively prohibited" in low or "open failed" in low:
        return ForwardingFailed(_forward_message(profile, last))
    if "bad configuration option" in low or "garbage at end of line" in low or "bad port" in low:
        return ConfigError(
            f"ssh rejected its settings: {last}",
            hint='check ~/.ssh/config (engine = "openssh" reads it)',
        )
    if (
        "connection closed" in low
        or "connection reset" in low
        or "kex_exchange_identification" in low
    ):
        return BastionUnreachable(
            f"bastion {where} closed the connection during the SSH handshake ({last})",
            hint="is it an SSH server on that port? is your IP allowed (fail2ban, security group)?",
        )
    return TunnelError(f"ssh to bastion {where} failed: {last}")
