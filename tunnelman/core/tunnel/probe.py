"""PostgreSQL's SSLRequest as a probe: the cheapest proof that a database answers through a port.

Eight bytes a server answers before any login with one byte: `S` (it offers TLS), `N` (it does
not), or nothing when whatever is in between (ssh, a Session Manager session) could not reach it
and closed the connection. Used by the OpenSSH and SSM engines' test connection before "up" and by
the TUI's health check (`core/health.py`).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct

__all__ = ["SSL_REQUEST", "finish_tls", "ssl_answer"]

SSL_REQUEST = struct.pack("!ii", 8, 80877103)


def ssl_answer(sock: socket.socket, server_name: str | None, timeout: float) -> bytes:
    """Send the SSLRequest on connected `sock`; the server's one-byte answer, b"" when the far
    side closed unanswered. TimeoutError when nothing came within the socket's timeout; after
    b"S" the TLS handshake is finished and closed (`finish_tls`)."""
    sock.sendall(SSL_REQUEST)
    answer = sock.recv(1)
    if answer == b"S":
        finish_tls(sock, server_name, timeout)
    return answer


def finish_tls(sock: socket.socket, server_name: str | None, timeout: float) -> None:
    """The server said yes to TLS: finish the handshake and close it cleanly, so the server sees
    a client that went away (no log line), not a broken negotiation. Nothing is verified: nothing
    is sent over it either."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # only proving the path
    with contextlib.suppress(OSError, ssl.SSLError):
        sock.settimeout(timeout)
        tls = context.wrap_socket(sock, server_hostname=server_name or None)
        with contextlib.suppress(OSError, ssl.SSLError):
            tls.unwrap()
