"""The eice transport: the bastion's port 22 through an EC2 Instance Connect Endpoint's websocket.

Called by `tunnelman.core.ssh.connection.open_route` (through `tunnelman.core.transport`) for a
profile with `transport = "eice"`, and by the doctor's eice steps. `open_socket` finds the
endpoint and signs the URL (`tunnelman.core.aws.eice`, as `aws ec2-instance-connect open-tunnel`
does), opens the websocket (the `websockets` library's sync client, TLS to the endpoint's DNS name)
and hands back one end of a `socket.socketpair()`; two pump threads move bytes between the other
end and the websocket's binary frames. SSH then runs over that socket as over TCP (host key checked,
Instance Connect key pushed when `instance_connect = true`).

End of life: EOF on either side closes both. The endpoint ends every tunnel after
`maxTunnelDuration` (at most an hour); the socket then closes and the engine's reconnect loop
opens a new tunnel, as after a dropped bastion.

`TUNNELMAN_EICE_CONNECT` (HOST:PORT) is for tests only: it redirects the TCP connection (as an
/etc/hosts line would), while the URL, the Host header, the signature and the TLS name stay the
endpoint's. Tests point it at a stand-in server on loopback; nothing else should set it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from tunnelman.core import aws
from tunnelman.core.errors import AWSError, BastionUnreachable, Cancelled
from tunnelman.core.logs import get_logger

if TYPE_CHECKING:
    from websockets.sync.client import ClientConnection

    from tunnelman.core.aws.eice import Target
    from tunnelman.core.profiles import Profile

_log = get_logger("eice")

CONNECT_ENV = "TUNNELMAN_EICE_CONNECT"
REMOTE_PORT = 22
_CHUNK = 65000  # the AWS CLI's largest frame
# A reconnect (the hourly cap, a drop) reuses the endpoint found in the last few minutes: only the
# URL is signed again, which needs no EC2 call (DescribeInstances + the EC2 model cost ~1 s).
TARGET_TTL = 600.0
_targets: dict[tuple[str | None, ...], tuple[Target, float]] = {}
_lock = threading.Lock()


def open_socket(
    profile: Profile, *, timeout: float, cancel: threading.Event | None = None
) -> socket.socket:
    """A socket whose bytes go to the profile's instance's port 22 through its VPC's endpoint."""
    key = (profile.name, profile.bastion_instance_id, profile.region, profile.aws_profile)
    with _lock:
        cached = _targets.get(key)
    if cached is not None and time.monotonic() - cached[1] < TARGET_TTL:
        target = cached[0]
    else:
        target = aws.eice.find_target(profile)

    def forget() -> None:
        with _lock:
            _targets.pop(key, None)  # the next attempt looks the endpoint up again

    ws = open_websocket(profile, target, timeout=timeout, cancel=cancel, on_stale=forget)
    with _lock:
        _targets[key] = (target, time.monotonic() if cached is None else cached[1])
    return bridge(ws, label=f"{target.endpoint.id} → {target.instance_id}")


def open_websocket(
    profile: Profile,
    target: Target,
    *,
    timeout: float,
    cancel: threading.Event | None = None,
    remote_port: int = REMOTE_PORT,
    on_stale: Callable[[], None] | None = None,
) -> ClientConnection:
    """The opened websocket (HTTP 101), or one clear error (refused, denied, unreachable).

    `on_stale` is called when the failure suggests the endpoint itself changed (its name does not
    resolve, or it refused the request): the caller then looks it up again next time. A refused
    or timed-out connection keeps it (the endpoint or the network is briefly away).
    """
    url = aws.eice.signed_url(profile, target, remote_port=remote_port)
    result: list[ClientConnection] = []
    failure: list[BaseException] = []
    done = threading.Event()
    abandoned = threading.Event()

    def work() -> None:
        try:
            ws = _connect(url, target, timeout)
            if abandoned.is_set():
                ws.close()
            else:
                result.append(ws)
        except BaseException as exc:  # handed to the caller below
            failure.append(exc)
        finally:
            done.set()

    # The handshake blocks in the library: a daemon thread lets a cancel give up on it at once.
    threading.Thread(target=work, name="tunnelman-eice-open", daemon=True).start()
    deadline = time.monotonic() + timeout + 1
    while not done.wait(0.05):
        if (cancel is not None and cancel.is_set()) or time.monotonic() >= deadline:
            abandoned.set()
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            raise _timed_out(target, timeout)
    if failure:
        if on_stale is not None and _endpoint_changed(failure[0]):
            on_stale()
        raise _handshake_error(failure[0], target, timeout) from None
    _log.info("eice: tunnel open through %s to %s", target.endpoint.id, target.instance_id)
    return result[0]


def _connect(url: str, target: Target, timeout: float) -> ClientConnection:
    from websockets.sync.client import connect

    sock: socket.socket | None = None
    redirect = os.environ.get(CONNECT_ENV)
    if redirect:
        host, _, port = redirect.rpartition(":")
        sock = socket.create_connection((host, int(port)), timeout=timeout)
    try:
        return connect(
            url,
            sock=sock,
            server_hostname=target.endpoint.dns_name if sock is not None else None,
            open_timeout=timeout,
            compression=None,  # binary SSH traffic: deflate would only cost CPU
            user_agent_header=_user_agent(),
            max_size=None,
            close_timeout=2,
            # No websocket pings, as the AWS CLI sends none: SSH's keepalives watch the link.
            ping_interval=None,
            legacy=True,  # the connection itself, kept open past this call (17.1+)
        )
    except BaseException:
        if sock is not None:
            sock.close()
        raise


def _endpoint_changed(exc: BaseException) -> bool:
    from websockets.exceptions import InvalidStatus

    return isinstance(exc, InvalidStatus | socket.gaierror)


def _user_agent() -> str:
    from tunnelman import __version__

    return f"tunnelman/{__version__}"


def _timed_out(target: Target, timeout: float) -> BastionUnreachable:
    return BastionUnreachable(
        f"EC2 Instance Connect Endpoint {target.endpoint.id} did not open a tunnel to "
        f"{target.instance_id} within {timeout:g} s (timed out)",
        hint="check your network (a proxy?) and the endpoint's state in the EC2 console; "
        "raise connect_timeout if the link is slow",
    )


def _handshake_error(exc: BaseException, target: Target, timeout: float) -> Exception:
    from websockets.exceptions import InvalidHandshake, InvalidStatus

    where = f"EC2 Instance Connect Endpoint {target.endpoint.id} ({target.endpoint.dns_name})"
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        body = bytes(exc.response.body or b"").decode("utf-8", "replace").strip()
        said = f": {' '.join(body.split())[:200]}" if body else ""
        if status == 403:
            return AWSError(
                f"AWS denied {aws.eice.OPEN_TUNNEL} on {target.endpoint.id} to "
                f"{target.private_ip}:{REMOTE_PORT} (HTTP 403{said})",
                hint=f"your IAM policy needs {aws.eice.OPEN_TUNNEL} for the endpoint "
                "(and its maxTunnelDuration / remotePort conditions must allow port 22, 3600 s)",
            )
        return BastionUnreachable(
            f"{where} refused the tunnel to {target.instance_id}: HTTP {status}{said}",
            hint="check the endpoint's state in the EC2 console and that the instance's "
            "security group allows port 22 from the endpoint",
        )
    if isinstance(exc, TimeoutError | socket.timeout):
        return _timed_out(target, timeout)
    if isinstance(exc, InvalidHandshake):
        return BastionUnreachable(f"{where}: the websocket handshake failed ({exc})")
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc) or type(exc).__name__
        return BastionUnreachable(
            f"cannot connect to {where}: {reason}",
            hint="check your network connection (a proxy? HTTPS_PROXY is honoured) and DNS",
        )
    if isinstance(exc, Exception):
        return exc
    return BastionUnreachable(f"{where}: {exc!r}")


def bridge(ws: ClientConnection, *, label: str = "eice") -> socket.socket:
    """One end of a socketpair wired to `ws`: bytes in, binary frames out, and back.

    EOF on either side ends both: the websocket closing shuts the pair (the caller reads EOF),
    the caller closing its end closes the websocket.
    """
    ours, theirs = socket.socketpair()
    closed = threading.Event()

    def close_all() -> None:
        if closed.is_set():
            return
        closed.set()
        with contextlib.suppress(OSError):
            theirs.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(Exception):
            ws.close()

    def up() -> None:
        try:
            while True:
                data = theirs.recv(_CHUNK)
                if not data:
                    break
                ws.send(data)
        except Exception as exc:
            if not closed.is_set():
                _log.info("eice %s: sending ended: %s", label, exc)
        finally:
            close_all()

    def down() -> None:
        try:
            while True:
                message = ws.recv()
                if isinstance(message, str):
                    # The endpoint speaks binary only; text means something else answered.
                    _log.warning("eice %s: a text frame from the endpoint; closing", label)
                    break
                theirs.sendall(message)
        except Exception as exc:
            if not closed.is_set():
                _log.info("eice %s: tunnel ended: %s", label, _closing_reason(ws, exc))
        finally:
            close_all()
            # The sender's recv() has returned by now (shutdown wakes it): close the fd once.
            sender.join(timeout=5)
            theirs.close()

    sender = threading.Thread(target=up, name="tunnelman-eice-up", daemon=True)
    receiver = threading.Thread(target=down, name="tunnelman-eice-down", daemon=True)
    sender.start()
    receiver.start()
    return ours


def _closing_reason(ws: ClientConnection, exc: BaseException) -> str:
    code = getattr(ws, "close_code", None)
    reason = getattr(ws, "close_reason", None)
    if code is None:
        return str(exc) or type(exc).__name__
    return f"close code {code}" + (f": {reason}" if reason else "")
