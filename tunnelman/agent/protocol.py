"""The agent's wire protocol: versioned JSON lines over a local stream socket.

Shared by `server` and `client`. One request per line, one reply per line, on a connection that
may carry several requests in turn::

    {"v": 1, "op": "ping"}                         -> {"v": 1, "ok": true, "pid": 123, "version": "0.1.0", ...}
    {"v": 1, "op": "status", "name": "prod"?}      -> {"ok": true, "tunnels": [TUNNEL, ...]}
    {"v": 1, "op": "up", "name": "prod", "config": "/abs/profiles.toml", "port": 5433 | null,
     "accept_new": false, "accept_fingerprint": "SHA256:..." | null}
                                                   -> {"ok": true, "tunnel": TUNNEL}   (once the port is ready)
    {"v": 1, "op": "down", "name": "prod"}         -> {"ok": true, "tunnel": TUNNEL}
    {"v": 1, "op": "down_all"}                     -> {"ok": true, "tunnels": [TUNNEL, ...]}
    {"v": 1, "op": "subscribe"}                    -> {"ok": true, "tunnels": [...]}, then one line per event:
                                                      {"event": "status", "tunnel": TUNNEL}
                                                      {"event": "removed", "name": "prod"}
                                                      {"event": "shutdown"}
    {"v": 1, "op": "shutdown"}                     -> {"ok": true}; the agent closes its tunnels and exits

    TUNNEL = {"name", "state", "local_port", "since" (epoch s | null), "reconnects", "error", "connections"}
    failure = {"ok": false, "error": "one line", "kind": "HostKeyUnknown", "message", "hint",
               "host_key": {"host", "port", "key_type", "fingerprint"}?, "known_hosts": path?,
               "expected": fp?, "line": n?, "known": [{"key_type", "fingerprint", "line"}]?}

Over TCP (no AF_UNIX) every request also carries `"token"`, read from the agent's 0600 state file.
Importing this module is cheap (json only); `TunnelStatus` and the error classes are imported when a
reply needs them.
"""

from __future__ import annotations

import contextlib
import json
import socket
from typing import TYPE_CHECKING, Any

from tunnelman.core import errors

if TYPE_CHECKING:
    from tunnelman.core.tunnel import TunnelStatus

VERSION = 1
MAX_LINE = 1 << 20
OPS = frozenset({"ping", "status", "up", "down", "down_all", "subscribe", "shutdown"})


class ProtocolError(errors.AgentError):
    """A line that is not a request/reply of this protocol."""


def encode(message: dict[str, Any]) -> bytes:
    """One JSON line."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """One JSON object from a line; ProtocolError otherwise."""
    if len(line) > MAX_LINE:
        raise ProtocolError(f"message longer than {MAX_LINE} bytes")
    try:
        data = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"not a JSON line: {exc}") from None
    except RecursionError:  # `[[[[…` a few thousand deep: json recurses once per level
        raise ProtocolError("not a JSON line: nested too deeply") from None
    if not isinstance(data, dict):
        raise ProtocolError("not a JSON object")
    return data


class LineSocket:
    """A stream socket read and written in JSON lines."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = b""

    def send(self, message: dict[str, Any]) -> None:
        self.sock.sendall(encode(message))

    def recv(self) -> dict[str, Any] | None:
        """The next message; None at end of stream. Socket timeouts propagate (TimeoutError)."""
        while b"\n" not in self._buf:
            if len(self._buf) > MAX_LINE:
                raise ProtocolError(f"message longer than {MAX_LINE} bytes")
            chunk = self.sock.recv(65536)
            if not chunk:
                if self._buf.strip():
                    raise ProtocolError("connection closed in the middle of a message")
                return None
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return decode(line)

    @property
    def buffered(self) -> bool:
        """Whether a complete message is already waiting in the buffer."""
        return b"\n" in self._buf

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


# ----------------------------------------------------------------------------- tunnels


def status_to_wire(status: TunnelStatus) -> dict[str, Any]:
    return {
        "name": status.name,
        "state": str(status.state),
        "local_port": status.local_port,
        "since": status.since,
        "reconnects": status.reconnects,
        "error": status.error,
        "connections": status.connections,
    }


def status_from_wire(data: Any) -> TunnelStatus:
    from tunnelman.core.tunnel import TunnelState, TunnelStatus

    if not isinstance(data, dict):
        raise ProtocolError("a tunnel must be an object")
    try:
        since = data.get("since")
        port = data.get("local_port")
        return TunnelStatus(
            name=str(data["name"]),
            state=TunnelState(str(data["state"])),
            local_port=int(port) if port is not None else None,
            since=float(since) if since is not None else None,
            reconnects=int(data.get("reconnects") or 0),
            error=None if data.get("error") is None else str(data["error"]),
            connections=int(data.get("connections") or 0),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"bad tunnel in reply: {exc!r}") from None


# ----------------------------------------------------------------------------- errors


def error_to_wire(exc: BaseException) -> dict[str, Any]:
    """A failure reply for `exc` (a TunnelmanError keeps its class name, message and hint)."""
    if not isinstance(exc, errors.TunnelmanError):
        return {"ok": False, "error": f"internal error in the agent: {exc!r}", "kind": "AgentError"}
    reply: dict[str, Any] = {
        "ok": False,
        "error": str(exc),
        "kind": type(exc).__name__,
        "message": exc.message,
        "hint": exc.hint,
    }
    info = getattr(exc, "info", None)
    if info is not None and hasattr(info, "fingerprint"):
        reply["host_key"] = {
            "host": info.host,
            "port": info.port,
            "key_type": info.key_type,
            "fingerprint": info.fingerprint,
        }
    known_hosts = getattr(exc, "known_hosts", None)
    if known_hosts is not None:
        reply["known_hosts"] = str(known_hosts)
    for key in ("expected", "line"):
        value = getattr(exc, key, None)
        if isinstance(value, str | int):
            reply[key] = value
    known = getattr(exc, "known", None)
    if isinstance(known, tuple):
        reply["known"] = [
            {"key_type": k.key_type, "fingerprint": k.fingerprint, "line": k.line} for k in known
        ]
    return reply


_HOST_KEY_KINDS = ("HostKeyUnknown", "HostKeyChanged", "HostKeyTypeMismatch")


def _known_from_wire(value: object) -> tuple[Any, ...]:
    """The known keys of a HostKeyTypeMismatch reply; entries of the wrong shape are dropped."""
    from tunnelman.core import known_hosts as kh

    known: list[kh.KnownKey] = []
    for item in value if isinstance(value, list) else []:
        if not isinstance(item, dict):
            continue
        key_type, fp, line = item.get("key_type"), item.get("fingerprint"), item.get("line")
        if isinstance(key_type, str) and isinstance(fp, str) and isinstance(line, int):
            known.append(kh.KnownKey(key_type, fp, line))
    return tuple(known)


def error_from_wire(reply: dict[str, Any]) -> errors.TunnelmanError:
    """The exception a failure reply stands for, of the same class where we know it."""
    kind = str(reply.get("kind") or "AgentError")
    message = str(reply.get("message") or reply.get("error") or "the agent refused the request")
    hint = reply.get("hint")
    hint = str(hint) if hint is not None else None
    host_key = reply.get("host_key")
    if kind in _HOST_KEY_KINDS and isinstance(host_key, dict):
        from pathlib import Path

        from tunnelman.core import known_hosts as kh

        try:
            info = kh.HostKeyInfo(
                host=str(host_key["host"]),
                port=int(host_key["port"]),
                key_type=str(host_key["key_type"]),
                fingerprint=str(host_key["fingerprint"]),
            )
        except (KeyError, TypeError, ValueError):
            return errors.HostKeyError(message, hint=hint)
        path = Path(str(reply.get("known_hosts") or "known_hosts"))
        if kind == "HostKeyUnknown":
            return kh.HostKeyUnknown(message, info=info, known_hosts=path, hint=hint)
        if kind == "HostKeyTypeMismatch":
            return kh.HostKeyTypeMismatch(
                message,
                info=info,
                known=_known_from_wire(reply.get("known")),
                known_hosts=path,
                hint=hint,
            )
        line = reply.get("line")
        return kh.HostKeyChanged(
            message,
            info=info,
            expected=str(reply.get("expected") or ""),
            known_hosts=path,
            line=line if isinstance(line, int) else 0,
            hint=hint,
        )
    cls = getattr(errors, kind, None)
    if isinstance(cls, type) and issubclass(cls, errors.TunnelmanError):
        return cls(message, hint=hint)
    # A subclass we do not know by name (e.g. from a newer agent): keep the message.
    return errors.AgentError(message, hint=hint)
