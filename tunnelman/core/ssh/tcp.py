"""The TCP connection to the bastion: name resolution and connect, each failure in its own words.

Apart from `connection` (which re-exports `resolve` and `open_socket`) so that the cold one-shot
can start this connection (`preconnect`) before paramiko and the rest of the SSH code are loaded:
this module needs only the standard library's socket and threading and `core.errors`.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import threading
import time
from typing import TYPE_CHECKING

from tunnelman.core.errors import BastionUnreachable, Cancelled
from tunnelman.core.platform import net

if TYPE_CHECKING:
    from tunnelman.core.profiles import Bastion
    from tunnelman.core.ssh.connection import _Canceller

__all__ = ["open_socket", "resolve"]


def resolve(
    host: str, port: int, timeout: float, cancel: threading.Event | None = None
) -> list[tuple[int, tuple[str, int]]]:
    """(family, sockaddr) pairs for `host`; BastionUnreachable naming DNS when it fails."""
    result: list[tuple[int, tuple[str, int]]] = []
    failure: list[BaseException] = []
    done = threading.Event()

    def work() -> None:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            for family, _type, _proto, _name, addr in infos:
                if family in (socket.AF_INET, socket.AF_INET6):
                    result.append((int(family), (str(addr[0]), int(addr[1]))))
        except BaseException as exc:  # handed to the caller below
            failure.append(exc)
        finally:
            done.set()

    # getaddrinfo cannot be interrupted: a daemon thread lets us give up on it in time.
    threading.Thread(target=work, name="tunnelman-dns", daemon=True).start()
    deadline = time.monotonic() + timeout
    while not done.wait(0.05):
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        if time.monotonic() >= deadline:
            raise BastionUnreachable(
                f"bastion name {host} did not resolve within {timeout:g} s (DNS not answering)",
                hint="check your network connection and DNS, or use the bastion's IP address",
            )
    if failure:
        exc = failure[0]
        reason = exc.strerror if isinstance(exc, socket.gaierror) and exc.strerror else str(exc)
        raise BastionUnreachable(
            f"bastion name {host} does not resolve ({reason})",
            hint="check the bastion's host name in the profile; a stopped and restarted EC2 "
            "instance gets a new public DNS name",
        )
    if not result:
        raise BastionUnreachable(f"bastion name {host} has no IPv4/IPv6 address")
    return result


def _tune_socket(sock: socket.socket, keepalive: int) -> None:
    """Low latency, and let the kernel notice a dead bastion (TCP keepalive + user timeout)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    net.set_keepalive(sock, keepalive)


def open_socket(
    bastion: Bastion,
    timeout: float,
    keepalive: int,
    cancel: threading.Event | None = None,
    canceller: _Canceller | None = None,
) -> socket.socket:
    """A TCP connection to the bastion, or BastionUnreachable saying refused / timed out / DNS."""
    deadline = time.monotonic() + timeout
    addresses = resolve(bastion.host, bastion.port, timeout, cancel)
    last: OSError | None = None
    where = f"{bastion.host}:{bastion.port}"
    for family, addr in addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        sock = socket.socket(family, socket.SOCK_STREAM)
        if canceller is not None:
            canceller.register(sock.close)
        sock.settimeout(remaining)
        try:
            sock.connect(addr)
        except OSError as exc:
            sock.close()
            if cancel is not None and cancel.is_set():
                raise Cancelled() from None
            last = exc
            continue
        _tune_socket(sock, keepalive)
        return sock
    if last is None or isinstance(last, TimeoutError | socket.timeout):
        raise BastionUnreachable(
            f"bastion {where} did not answer within {timeout:g} s (connection timed out)",
            hint=(
                "check that the bastion is running and that its security group allows SSH "
                "from your IP address (it may have changed); raise connect_timeout if the link is slow"
            ),
        )
    if last.errno == errno.ECONNREFUSED:
        raise BastionUnreachable(
            f"bastion {where} refused the connection (nothing listens on port {bastion.port})",
            hint="check the bastion's address and SSH port in the profile, and that sshd runs there",
        )
    if last.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        raise BastionUnreachable(
            f"bastion {where} is unreachable ({last.strerror})",
            hint="check your network connection (VPN?) and the bastion's address",
        )
    raise BastionUnreachable(f"cannot connect to bastion {where}: {last.strerror or last}")
