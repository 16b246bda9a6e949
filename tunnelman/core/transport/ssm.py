"""AWS Systems Manager Session Manager: StartSession, AWS's `session-manager-plugin`, and SSH over it.

Two ways in through the instance's SSM agent (`bastion_instance_id`), no inbound port needed:
- SSH over SSM (the profile has a `bastion`): `open_socket` starts an `AWS-StartSSHSession`
  session to the bastion's SSH port and returns a socket whose bytes are the plugin's stdin and
  stdout; the SSH session (host key checked under the bastion's usual name, key login, the
  forward) runs over it end to end, as over TCP.
- Port forwarding (no `bastion`): `open_forward` starts an
  `AWS-StartPortForwardingSessionToRemoteHost` session to the endpoint; the plugin listens on a
  private loopback port, behind the tunnel's own listener (`tunnel/ssm_engine.py`).

StartSession is called with boto3 and the profile's credentials (`tunnelman.core.aws.session`);
the plugin then opens the session's websocket. The plugin is started as the AWS CLI v2 starts it:
`session-manager-plugin AWS_SSM_START_SESSION_RESPONSE REGION StartSession AWS_PROFILE
REQUEST_JSON SSM_ENDPOINT_URL`, with the StartSession response (which holds the session token) in
the environment variable named by the first argument, never in argv (the plugin reads it from
there and unsets it). The request JSON in argv holds no secret (target, document, parameters).
Nothing here logs the response.

The plugin is found on PATH, then in AWS's standard install places (`plugin_places`); a missing
plugin is one `ConfigError` with the install link. AWS ends a session after its idle timeout
(20 minutes by default) or its maximum duration: the plugin exits, and the tunnel reconnects
through its normal reconnect loop with a fresh session.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from tunnelman.core.errors import AWSError, BastionUnreachable, Cancelled, ConfigError, TunnelError
from tunnelman.core.logs import get_logger
from tunnelman.core.platform import process

if TYPE_CHECKING:
    from tunnelman.core.profiles import Profile
    from tunnelman.core.ssh.connection import _Canceller

__all__ = [
    "FORWARD_DOCUMENT",
    "INSTALL_URL",
    "PLUGIN",
    "RESPONSE_ENV",
    "SSH_DOCUMENT",
    "PluginProcess",
    "Session",
    "check_credentials",
    "check_instance",
    "check_plugin",
    "find_plugin",
    "open_forward",
    "open_socket",
    "plugin_places",
    "plugin_version",
    "start_session",
]

PLUGIN = "session-manager-plugin"
INSTALL_URL = (
    "https://docs.aws.amazon.com/systems-manager/latest/userguide/"
    "session-manager-working-with-install-plugin.html"
)
RESPONSE_ENV = "AWS_SSM_START_SESSION_RESPONSE"
SSH_DOCUMENT = "AWS-StartSSHSession"
FORWARD_DOCUMENT = "AWS-StartPortForwardingSessionToRemoteHost"
CHUNK = 64 * 1024
POLL = 0.05

_log = get_logger("ssm")


# ----------------------------------------------------------------------------- the plugin


def plugin_places(
    platform: str = sys.platform, environ: Mapping[str, str] | None = None
) -> list[str]:
    """Where AWS's installers put the plugin, looked at after PATH."""
    env = os.environ if environ is None else environ
    if platform == "win32":
        places = []
        for key in ("ProgramFiles", "ProgramW6432", "ProgramFiles(x86)"):
            root = env.get(key)
            if root:
                places.append(
                    root.rstrip("\\/")
                    + r"\Amazon\SessionManagerPlugin\bin\session-manager-plugin.exe"
                )
        return list(dict.fromkeys(places)) or [
            r"C:\Program Files\Amazon\SessionManagerPlugin\bin\session-manager-plugin.exe"
        ]
    # Linux (rpm/deb) and macOS (bundled installer) share the first two; Homebrew the rest.
    return [
        "/usr/local/sessionmanagerplugin/bin/session-manager-plugin",
        "/usr/local/bin/session-manager-plugin",
        "/opt/homebrew/bin/session-manager-plugin",
    ]


def find_plugin(
    path: str | None = None, platform: str = sys.platform, environ: Mapping[str, str] | None = None
) -> str:
    """The plugin's path (PATH first, then `plugin_places`), or a ConfigError with the install link."""
    found = shutil.which(PLUGIN, path=path)
    if found:
        return found
    for place in plugin_places(platform, environ):
        if os.path.isfile(place) and (platform == "win32" or os.access(place, os.X_OK)):
            return place
    raise ConfigError(
        f"AWS's {PLUGIN} was not found (looked on PATH and in its standard install places)",
        hint=f"install the Session Manager plugin: {INSTALL_URL}",
    )


def plugin_version(plugin: str, timeout: float = 10.0) -> str:
    """What `session-manager-plugin --version` prints (one line)."""
    try:
        done = subprocess.run(
            [plugin, "--version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **process.ssh_child_plan().popen,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TunnelError(f"{plugin} --version failed: {exc}") from None
    text = (done.stdout.strip() or done.stderr.strip()).splitlines()
    if done.returncode != 0 or not text:
        raise TunnelError(
            f"{plugin} --version failed (exit {done.returncode})",
            hint=f"reinstall the Session Manager plugin: {INSTALL_URL}",
        )
    return str(text[0]).strip()


# ----------------------------------------------------------------------------- StartSession


@dataclass(frozen=True)
class Session:
    """One StartSession's answer and what the plugin needs besides it."""

    session_id: str
    target: str
    region: str
    endpoint_url: str
    request_json: str  # no secret: target, document, parameters (the plugin's argv)
    aws_profile: str
    # Holds the session token: only ever in the plugin's environment.
    response_json: str = field(repr=False)


def start_session(profile: Profile, document: str, parameters: dict[str, list[str]]) -> Session:
    """StartSession on the profile's `bastion_instance_id` with `document`; AWSError when refused."""
    from tunnelman.core.aws.session import (
        calling,
        error_code,
        error_message,
        resolve_region,
        session_for,
        ssm_client,
    )

    target = profile.bastion_instance_id
    if not target:
        raise ConfigError(
            f"profile '{profile.name}': transport = \"ssm\" needs bastion_instance_id",
            hint='add bastion_instance_id = "i-…" (the SSM-managed instance)',
        )
    session = session_for(profile)
    region = resolve_region(session, profile)
    client = ssm_client(session, region)
    request: dict[str, Any] = {"Target": target, "DocumentName": document, "Parameters": parameters}
    import botocore.exceptions

    with calling("ssm:StartSession", region=region, session=session):
        try:
            response = client.start_session(**request)
        except botocore.exceptions.ClientError as exc:
            code = error_code(exc)
            if code == "TargetNotConnected":
                raise AWSError(
                    f"instance {target} is not connected to Systems Manager in {region} "
                    f"({error_message(exc) or code})",
                    hint="check that it runs, that its SSM agent is online (`tunnelman check`) "
                    "and that its role allows AmazonSSMManagedInstanceCore",
                ) from None
            raise
    keep = {k: response[k] for k in ("SessionId", "TokenValue", "StreamUrl") if k in response}
    session_id = str(keep.get("SessionId", ""))
    _log.info("SSM session %s started on %s (%s)", session_id, target, document)
    return Session(
        session_id=session_id,
        target=target,
        region=region,
        endpoint_url=str(client.meta.endpoint_url),
        request_json=json.dumps(request),
        aws_profile=profile.aws_profile or "",
        response_json=json.dumps(keep),
    )


class PluginProcess:
    """One `session-manager-plugin` for one session; its stderr kept (last lines) by a thread."""

    def __init__(self, plugin: str, session: Session, *, stdio: bool) -> None:
        self.session = session
        argv = [
            plugin,
            RESPONSE_ENV,
            session.region,
            "StartSession",
            session.aws_profile,
            session.request_json,
            session.endpoint_url,
        ]
        env = dict(os.environ)
        env[RESPONSE_ENV] = session.response_json
        plan = process.ssh_child_plan()
        # No orphan if we die (even by SIGKILL): port forwarding runs under the pipe watchdog
        # (POSIX); SSH over SSM has our pipes as its stdin/stdout, which close with us; on Windows
        # a kill-on-close Job object holds either.
        self._watchdog = plan.watchdog and not stdio
        try:
            self.proc: subprocess.Popen[bytes] = subprocess.Popen(
                ["sh", "-c", process.PIPE_WATCHDOG, "tunnelman-ssm", *argv]
                if self._watchdog
                else argv,
                stdin=subprocess.PIPE if stdio or self._watchdog else subprocess.DEVNULL,
                stdout=subprocess.PIPE if stdio else subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=env,
                **plan.popen,  # no terminal, no console window
            )
        except OSError as exc:
            raise TunnelError(
                f"cannot run {plugin}: {exc.strerror or exc}",
                hint=f"reinstall the Session Manager plugin: {INSTALL_URL}",
            ) from None
        if plan.job:
            process.adopt_child(self.proc)
        self._lines: collections.deque[str] = collections.deque(maxlen=20)
        self._reader = threading.Thread(target=self._read, name="tunnelman-ssm-stderr", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        stream = self.proc.stderr
        assert stream is not None
        with contextlib.suppress(OSError, ValueError):
            for raw in stream:
                line = raw.decode("utf-8", "replace").strip()
                if line:
                    self._lines.append(line)
                    _log.info("session-manager-plugin: %s", line)

    def exited(self) -> int | None:
        return self.proc.poll()

    def wait(self) -> int:
        return self.proc.wait()

    def stderr_text(self) -> str:
        self._reader.join(timeout=0.5)
        return "\n".join(self._lines)

    def last_words(self) -> str:
        text = self.stderr_text()
        return text.splitlines()[-1] if text else ""

    def stop(self) -> None:
        proc = self.proc
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                if self._watchdog:
                    assert proc.stdin is not None
                    proc.stdin.close()  # the watchdog ends the plugin (SIGTERM)
                else:
                    proc.terminate()
            try:
                proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                process.kill_hard(proc)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=2.0)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def ended_error(self, what: str) -> BastionUnreachable:
        code = self.exited()
        said = self.last_words()
        return BastionUnreachable(
            f"the Session Manager session to {self.session.target} ended {what} "
            f"(session-manager-plugin exit {code}" + (f": {said})" if said else ")"),
            hint="check the instance with `tunnelman check`; its SSM agent must be online",
        )


# ----------------------------------------------------------------------------- SSH over SSM


def open_socket(
    profile: Profile,
    *,
    timeout: float,
    cancel: threading.Event | None = None,
    canceller: _Canceller | None = None,
) -> socket.socket:
    """A socket to the bastion's SSH port through an `AWS-StartSSHSession` session.

    Returns once the session has sent its first bytes (the plugin's "Starting session with
    SessionId" line, which SSH skips as any line before the server's banner, or sshd's banner), so
    a plugin that cannot start the session fails here with its own words. Closing the socket ends
    the plugin; the plugin ending closes the socket (the SSH transport then sees EOF).
    """
    assert profile.bastion is not None
    plugin = find_plugin()  # before any AWS call: a missing plugin is the cheapest thing to fix
    session = start_session(profile, SSH_DOCUMENT, {"portNumber": [str(profile.bastion.port)]})
    proc = PluginProcess(plugin, session, stdio=True)
    if canceller is not None:
        canceller.register(proc.stop)
    pair, theirs = socket.socketpair()
    ours = _SessionSocket(pair.family, pair.type, pair.proto, pair.detach())
    ours.on_close = proc.stop
    first = threading.Event()
    try:
        _start_pumps(proc, theirs, first)
        deadline = time.monotonic() + timeout
        while not first.wait(POLL):
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            if proc.exited() is not None:
                raise proc.ended_error("before the session started")
            if time.monotonic() >= deadline:
                raise BastionUnreachable(
                    f"the bastion's SSH server did not answer through Session Manager "
                    f"({session.target}, port {profile.bastion.port}) within {timeout:g} s",
                    hint="check that sshd listens on that port on the instance; raise "
                    "connect_timeout if the link is slow",
                )
    except BaseException:
        proc.stop()
        ours.close()
        theirs.close()
        raise
    return ours


class _SessionSocket(socket.socket):
    """Our end of the pair: closing it also ends the plugin, there and then.

    The pumps would end it too once they see the close, but a process that exits right after
    closing its tunnel (`check`, a one-shot `psql`) kills those daemon threads first: the plugin
    then only sees its stdin close and gets no SIGTERM, on which AWS's plugin ends the session
    on AWS's side (TerminateSession) instead of leaving it to the idle timeout.
    """

    on_close: Callable[[], None] | None = None

    def close(self) -> None:
        super().close()
        stop, self.on_close = self.on_close, None
        if stop is not None:
            stop()


def _start_pumps(proc: PluginProcess, theirs: socket.socket, first: threading.Event) -> None:
    stdin, stdout = proc.proc.stdin, proc.proc.stdout
    assert stdin is not None
    assert stdout is not None

    def down() -> None:  # plugin → SSH
        fd = stdout.fileno()
        try:
            while True:
                data = os.read(fd, CHUNK)
                if not data:
                    break
                first.set()
                theirs.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                theirs.shutdown(socket.SHUT_WR)
            proc.stop()

    def up() -> None:  # SSH → plugin
        try:
            while True:
                data = theirs.recv(CHUNK)
                if not data:
                    break
                _write(stdin, data)
        except (OSError, ValueError):
            pass
        finally:
            proc.stop()  # our side closed (the SSH transport ended): so does the session
            with contextlib.suppress(OSError):
                theirs.close()

    for target, name in ((down, "down"), (up, "up")):
        threading.Thread(target=target, name=f"tunnelman-ssm-{name}", daemon=True).start()


def _write(stream: IO[bytes], data: bytes) -> None:
    stream.write(data)
    stream.flush()


# ----------------------------------------------------------------------------- port forwarding


def open_forward(
    profile: Profile, local_port: int, *, cancel: threading.Event | None = None
) -> PluginProcess:
    """A port-forwarding session to the endpoint, the plugin listening on 127.0.0.1:`local_port`.

    Returns once the plugin listens there; the plugin's exit before that is a BastionUnreachable
    with its last line.
    """
    from tunnelman.core.tunnel import ports

    assert profile.endpoint is not None
    plugin = find_plugin()
    endpoint = profile.endpoint
    session = start_session(
        profile,
        FORWARD_DOCUMENT,
        {
            "host": [endpoint.host],
            "portNumber": [str(endpoint.port)],
            "localPortNumber": [str(local_port)],
        },
    )
    proc = PluginProcess(plugin, session, stdio=False)
    limit = 2 * profile.connect_timeout + 5
    deadline = time.monotonic() + limit
    try:
        while True:
            up = ports.listening_on_loopback(local_port)
            if up or (up is None and _accepts(local_port)):
                return proc
            if proc.exited() is not None:
                raise proc.ended_error("before its local port opened")
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            if time.monotonic() >= deadline:
                raise BastionUnreachable(
                    f"session-manager-plugin did not open its local port within {limit} s "
                    f"(session to {session.target})",
                    hint="check the instance with `tunnelman check`; raise connect_timeout if "
                    "the link is slow",
                )
            time.sleep(POLL)
    except BaseException:
        proc.stop()
        raise


def _accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


# ----------------------------------------------------------------------------- the doctor's steps


SESSION_PREFERENCES = "SSM-SessionManagerRunShell"
"""The document holding the account's Session Manager preferences (maxSessionDuration, …)."""


def max_session_seconds(profile: Profile) -> float | None:
    """The account's maximum Session Manager session length in this region, in seconds (its
    preferences document's `maxSessionDuration`, in minutes); None when none is set or it cannot
    be read (no ssm:GetDocument: the session is then simply reconnected when AWS ends it)."""
    from tunnelman.core.aws.session import resolve_region, session_for, ssm_client

    try:
        session = session_for(profile)
        region = resolve_region(session, profile)
        answer = ssm_client(session, region).get_document(
            Name=SESSION_PREFERENCES, DocumentFormat="JSON"
        )
        inputs = json.loads(str(answer.get("Content") or "{}")).get("inputs") or {}
        minutes = str(inputs.get("maxSessionDuration") or "").strip()
        return float(int(minutes)) * 60 if minutes.isdigit() and int(minutes) > 0 else None
    except Exception as exc:  # not allowed, not set up, not reachable: no known cap
        _log.info("no Session Manager maximum session length known: %s", exc)
        return None


def check_credentials(profile: Profile) -> str:
    """Credentials found on the standard chain (no network call), and the region to use."""
    from tunnelman.core.aws.session import calling, resolve_region, session_for

    session = session_for(profile)
    region = resolve_region(session, profile)
    with calling("load credentials", region=region, session=session):
        found = session.get_credentials()
    if found is None:
        raise AWSError(
            "no AWS credentials found (environment, ~/.aws/credentials, SSO, instance role)",
            hint="run `aws configure` or `aws sso login`, or set aws_profile in the profile",
        )
    named = f", AWS profile {session.profile_name}" if profile.aws_profile else ""
    return f"from {found.method}{named}; region {region}"


def check_instance(profile: Profile) -> str:
    """The instance is managed by Systems Manager and its agent is online
    (DescribeInstanceInformation); AWSError naming what is wrong otherwise."""
    from tunnelman.core.aws.session import calling, resolve_region, session_for, ssm_client

    target = profile.bastion_instance_id or ""
    session = session_for(profile)
    region = resolve_region(session, profile)
    client = ssm_client(session, region)
    with calling("ssm:DescribeInstanceInformation", region=region, session=session):
        answer = client.describe_instance_information(
            Filters=[{"Key": "InstanceIds", "Values": [target]}]
        )
    infos = answer.get("InstanceInformationList") or []
    if not infos:
        raise AWSError(
            f"instance {target} is not managed by Systems Manager in {region} "
            "(no SSM agent has registered it)",
            hint="check the instance id and region, that the SSM agent runs on it and that its "
            "instance profile allows AmazonSSMManagedInstanceCore",
        )
    info = infos[0]
    ping = str(info.get("PingStatus") or "unknown")
    if ping != "Online":
        last = info.get("LastPingDateTime")
        when = f", last ping {last:%Y-%m-%d %H:%M} UTC" if last is not None else ""
        raise AWSError(
            f"the SSM agent of {target} is {ping}{when}",
            hint="start the instance, or check that it reaches the SSM endpoints (a NAT gateway "
            "or VPC endpoints for ssm, ssmmessages and ec2messages)",
        )
    agent = info.get("AgentVersion")
    platform = " ".join(
        str(x) for x in (info.get("PlatformName"), info.get("PlatformVersion")) if x
    )
    extra = ", ".join(x for x in (f"agent {agent}" if agent else "", platform) if x)
    return f"{target} is SSM-managed and online" + (f" ({extra})" if extra else "")


def check_plugin() -> str:
    """Where the plugin is and its version."""
    plugin = find_plugin()
    return f"{plugin} (version {plugin_version(plugin)})"
