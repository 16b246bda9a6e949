"""The agent's wire protocol: versioned JSON lines over a local stream socket.

Shared by `server` and `client`. One request per line, one reply per line, on a connection that
may carry several requests in turn::

    {"v": 1, "op": "ping"}                         -> {"v": 1, "ok": true, "pid": 123, "version": "0.1.0", ...}
    {"v": 1, "op": "status", "name": "prod"?, "history": true?}
                                                   -> {"ok": true, "tunnels": [TUNNEL, ...]}
                                                      (with "history": each TUNNEL also has
                                                      "history": [bytes/s both ways, one a second,
                                                      oldest first, up to five minutes])
    {"v": 1, "op": "up", "name": "prod", "config": "/abs/profiles.toml", "port": 5433 | null,
     "accept_new": false, "accept_fingerprint": "SHA256:..." | null, "linger": seconds?,
     "aws_env": {NAME: VALUE}?}                    (`aws_settings()`: no secret, see there)
                                                   -> {"ok": true, "tunnel": TUNNEL}   (once the port is ready)
    {"v": 1, "op": "down", "name": "prod"}         -> {"ok": true, "tunnel": TUNNEL}
    {"v": 1, "op": "down_all"}                     -> {"ok": true, "tunnels": [TUNNEL, ...]}
    {"v": 1, "op": "subscribe"}                    -> {"ok": true, "tunnels": [...]}, then one line per event:
                                                      {"event": "status", "tunnel": TUNNEL}
                                                      {"event": "removed", "name": "prod"}
                                                      {"event": "shutdown"}
    {"v": 1, "op": "shutdown"}                     -> {"ok": true}; the agent closes its tunnels and exits
    {"v": 1, "op": "oneshot", "name": "prod", "command": "psql"|"exec"|"env"|"conn", "format": F?,
     "config": PATH-as-typed | null, "cwd": "/abs", "environ": {NAME: VALUE}, "pg_env": {PG*: …}?,
     "secrets": true?}                             -> {"ok": true, "held": true, "port": n, "config": "/abs",
                                                      "env": {PG*: …}, "passfile": LINE | null}   (psql/exec)
                                                      {"ok": true, "held": true, "port": n, "text", "notes"} (env/conn)
                                                      {"ok": true, "held": false, "reason": "…"}
                                                   (the warm one-shot in one round trip: `warm`;
                                                   "passfile" holds the password and is sent only
                                                   over the Unix socket, never over TCP)

    TUNNEL = {"name", "state", "local_port", "since" (epoch s | null), "reconnects", "error", "connections",
              "bytes_sent", "bytes_received" (n | null), "rate_sent", "rate_received" (bytes/s | null),
              "linger_until" (epoch s | null)}
    failure = {"ok": false, "error": "one line", "kind": "HostKeyUnknown",
               "ancestry": ["HostKeyError", "TunnelmanError"], "message", "hint", "exit_code": n,
               ...the class's own fields (`wire_fields()`):
               "host_key": {"host", "port", "key_type", "fingerprint"}?, "known_hosts": path?,
               "expected": fp?, "line": n?, "known": [{"key_type", "fingerprint", "line"}]?,
               "port": n?, "pid": n?, "problems": [{"kind", "message", "hint"}]?, "total": n?}
    (`down`'s TUNNEL counts in "connections" the client connections it cut. The client rebuilds
    the error as the class named by "kind" (every TunnelmanError subclass is registered by name,
    `core.errors`), else as the first of "ancestry" it knows, else as an AgentError; "exit_code"
    keeps the CLI's exit status when it is not the same class. "port"/"pid" are a PortBusyError's
    port and holder, "problems" the first 20 of a ConfigProblems' list and "total" their number.)

Additions stay within version 1 and are optional both ways: an older client sends no "linger"
and ignores "linger_until"; a newer client reads their absence as "none". An older agent ignores
`"history"` on `status` and sends no history: the TUI's sparkline then starts empty, as before. `ping` lists what the
agent understands in `"features"` (["linger", "history", "oneshot"]): a client sends `"linger"`
only to an agent that names it, since an older one would ignore it and hold the tunnel until
`down`. `oneshot` is sent without asking first (a `ping` would cost the round trip it saves): an
older agent answers "unknown request" and the client does what it did before the request.
`"linger": seconds` (1 to a day) on `up` makes the tunnel a one-shot's: the agent closes it once
no client connection has been open through it for that long (each connection restarts the
count); `up` without it on a lingering tunnel makes it held until `down`, as `up --detach` says.

Over TCP (no AF_UNIX) every request also carries `"token"`, read from the agent's 0600 state file.

Limits (the agent must hold against another local user who can reach the TCP port, or a client of
its own user gone wrong):

- A request line is at most `MAX_REQUEST` bytes (64 KiB); a reply line at most `MAX_LINE` (1 MiB).
  A longer line, or one that is not a JSON object in UTF-8, ends the connection.
- The first request must arrive, whole, within `FIRST_LINE_TIMEOUT` seconds of the connect, and
  is the one that authenticates the connection (over TCP: its token; over the Unix socket the
  peer's uid was checked at accept). A first request with a bad or missing token gets the failure
  reply and the connection is closed. Later requests on an authenticated connection have no
  deadline.
- The agent holds at most `MAX_UNAUTHENTICATED` connections that have not sent their first line
  (when full, the oldest that has had at least `EVICT_GRACE` seconds is dropped for a new one) and
  at most `MAX_CONNECTIONS` in all (beyond that a new connection waits in the listen backlog).
  At most `MAX_WORKERS` connections run a long request (`up`, `down`, `down_all`, `subscribe`,
  `shutdown`) at once; one more gets `{"ok": false, "kind": "AgentError", ...}` ("busy").
  `ping` and `status` are answered without a thread of their own.

A client treats a reply with a field of the wrong type as a `ProtocolError` (one line, no
traceback). Importing this module is cheap (json only); `TunnelStatus` and the error classes are
imported when a reply needs them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import socket
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tunnelman.core import errors

if TYPE_CHECKING:
    from tunnelman.core.tunnel import TunnelStatus

VERSION = 1
MAX_LINE = 1 << 20  # a reply (a status of many tunnels with long errors stays far below)
MAX_REQUEST = 1 << 16  # a request: names, two paths and a token
FIRST_LINE_TIMEOUT = 5.0
MAX_UNAUTHENTICATED = 256
MAX_CONNECTIONS = 384  # below Windows' 512 sockets per select()
MAX_WORKERS = 64
EVICT_GRACE = 0.25
# Epoch seconds a datetime can hold (up to the year 9999): `since` and `started` are shown as dates.
_MAX_EPOCH = 253402300799.0
FEATURES = ("linger", "history", "oneshot")
MAX_LINGER = 86400  # as profiles.LINGER_MAX: a day
OPS = frozenset({"ping", "status", "up", "down", "down_all", "subscribe", "shutdown", "oneshot"})


class ProtocolError(errors.AgentError):
    """A line that is not a request/reply of this protocol."""


def encode(message: dict[str, Any]) -> bytes:
    """One JSON line; ProtocolError for a string that is not valid text (a lone surrogate, as
    `os.fsdecode` makes of bytes that are not UTF-8)."""
    text = json.dumps(message, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode("utf-8") + b"\n"
    except UnicodeEncodeError:
        raise ProtocolError("a request holds text that is not valid UTF-8") from None


def decode(line: bytes, limit: int = MAX_LINE) -> dict[str, Any]:
    """One JSON object from a line; ProtocolError otherwise."""
    if len(line) > limit:
        raise ProtocolError(f"message longer than {limit} bytes")
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
    """A stream socket read and written in JSON lines of at most `limit` bytes."""

    def __init__(
        self, sock: socket.socket, *, limit: int = MAX_LINE, buffered: bytes = b""
    ) -> None:
        self.sock = sock
        self.limit = limit
        self._buf = buffered

    def send(self, message: dict[str, Any]) -> None:
        self.sock.sendall(encode(message))

    def recv(self) -> dict[str, Any] | None:
        """The next message; None at end of stream. Socket timeouts propagate (TimeoutError)."""
        while b"\n" not in self._buf:
            if len(self._buf) > self.limit:
                raise ProtocolError(f"message longer than {self.limit} bytes")
            chunk = self.sock.recv(65536)
            if not chunk:
                if self._buf.strip():
                    raise ProtocolError("connection closed in the middle of a message")
                return None
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return decode(line, self.limit)

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
        "bytes_sent": status.bytes_sent,
        "bytes_received": status.bytes_received,
        "rate_sent": status.rate_sent,
        "rate_received": status.rate_received,
        "linger_until": status.linger_until,
    }


def status_from_wire(data: Any) -> TunnelStatus:
    """A TUNNEL object; ProtocolError naming the field when one has the wrong type."""
    from tunnelman.core.tunnel import TunnelState, TunnelStatus

    if not isinstance(data, dict):
        raise malformed("a tunnel", data, "an object")
    name = reply_str(data, "name", what="a tunnel's name")
    if not name:
        raise malformed("a tunnel's name", name, "a profile name")
    what = f"tunnel '{name}': "
    state = reply_str(data, "state", what=what + "state")
    try:
        state_ = TunnelState(state)
    except ValueError:
        raise malformed(what + "state", state, "a tunnel state") from None
    error = data.get("error")
    if error is not None and not isinstance(error, str):
        raise malformed(what + "error", error, "text or null")
    return TunnelStatus(
        name=name,
        state=state_,
        local_port=reply_int(
            data, "local_port", what=what + "local_port", maximum=65535, null=True
        ),
        since=reply_number(data, "since", what=what + "since", maximum=_MAX_EPOCH, null=True),
        reconnects=reply_int(data, "reconnects", what=what + "reconnects", null=True) or 0,
        error=error,
        connections=reply_int(data, "connections", what=what + "connections", null=True) or 0,
        # Missing (an older agent) or null (not counted there): None.
        bytes_sent=reply_int(data, "bytes_sent", what=what + "bytes_sent", null=True),
        bytes_received=reply_int(data, "bytes_received", what=what + "bytes_received", null=True),
        rate_sent=reply_number(data, "rate_sent", what=what + "rate_sent", null=True),
        rate_received=reply_number(data, "rate_received", what=what + "rate_received", null=True),
        linger_until=reply_number(data, "linger_until", what=what + "linger_until", null=True),
    )


def reply_tunnels(reply: dict[str, Any]) -> list[TunnelStatus]:
    """The `tunnels` list of a reply (missing: none)."""
    tunnels = reply.get("tunnels")
    if tunnels is None:
        return []
    if not isinstance(tunnels, list):
        raise malformed("'tunnels'", tunnels, "a list of tunnels")
    return [status_from_wire(t) for t in tunnels]


# ----------------------------------------------------------------------------- reading replies


def malformed(what: str, value: object, expected: str) -> ProtocolError:
    """The error for a reply field that is not what this client understands."""
    shown = repr(value)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return ProtocolError(
        f"the agent sent a malformed reply: {what} is {shown}, not {expected}",
        hint="it may be another tunnelman's agent: `tunnelman agent stop` stops it and the next "
        "command starts a matching one",
    )


def reply_int(
    data: dict[str, Any],
    key: str,
    *,
    what: str,
    default: int | None = None,
    maximum: int | None = None,
    null: bool = False,
) -> int | None:
    """`data[key]` as a non-negative integer (`default` when missing; None when null is allowed)."""
    if key not in data:
        return default
    value = data[key]
    if value is None and null:
        return None
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or value < 0
        or (maximum is not None and value > maximum)
    ):
        expected = f"from 0 to {maximum}" if maximum is not None else "0 or more"
        raise malformed(what, value, f"a whole number {expected}" + (" or null" if null else ""))
    return value


def reply_number(
    data: dict[str, Any],
    key: str,
    *,
    what: str,
    default: float | None = None,
    maximum: float = _MAX_EPOCH,
    null: bool = False,
) -> float | None:
    """`data[key]` as a finite number from 0 to `maximum` (`default` when missing)."""
    if key not in data:
        return default
    value = data[key]
    if value is None and null:
        return None
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or not 0 <= value <= maximum
    ):
        raise malformed(what, value, "a number of seconds" + (" or null" if null else ""))
    return float(value)


def reply_str(data: dict[str, Any], key: str, *, what: str, default: str | None = None) -> str:
    """`data[key]` as text (`default` when missing and one is given)."""
    if key not in data and default is not None:
        return default
    value = data.get(key)
    if not isinstance(value, str):
        raise malformed(what, value, "text")
    return value


# ----------------------------------------------------------------------------- AWS settings

_AWS_NAMES = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
)


def aws_settings(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment that chooses AWS credentials, region and endpoints, without a secret.

    The agent's AWS calls (StartSession, …) use the environment it was started with; the client
    sends this on `up` so an AWS failure can say when that differs from the caller's. Secrets are
    not sent: the access key id as a short digest (enough to tell two apart), the secret key and
    session token only as present or not.
    """
    env = os.environ if environ is None else environ
    found = {k: env[k] for k in _AWS_NAMES if env.get(k)}
    found.update({k: v for k, v in env.items() if k.startswith("AWS_ENDPOINT_URL") and v})
    key_id = env.get("AWS_ACCESS_KEY_ID")
    if key_id:
        found["AWS_ACCESS_KEY_ID"] = "sha256:" + hashlib.sha256(key_id.encode()).hexdigest()[:12]
    for secret in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        if env.get(secret):
            found[secret] = "set"
    return found


# ----------------------------------------------------------------------------- errors


def error_to_wire(exc: BaseException) -> dict[str, Any]:
    """A failure reply for `exc`: a TunnelmanError keeps its class name, its registered
    ancestors' names, message, hint, exit code and its own fields (`wire_fields()`)."""
    if not isinstance(exc, errors.TunnelmanError):
        return {"ok": False, "error": f"internal error in the agent: {exc!r}", "kind": "AgentError"}
    reply: dict[str, Any] = {
        "ok": False,
        "error": str(exc),
        "kind": type(exc).__name__,
        "ancestry": [c.__name__ for c in errors.lineage(type(exc)) if c is not type(exc)],
        "message": exc.message,
        "hint": exc.hint,
        "exit_code": exc.exit_code,
    }
    for key, value in exc.wire_fields().items():
        reply.setdefault(key, value)  # a class's field never hides one of the above
    return reply


def _import_senders() -> None:
    """Import the modules outside `errors` whose errors the agent sends, so their classes are
    registered here too. All light: no paramiko, no boto3 (tests/test_agent_errors.py checks)."""
    import importlib

    importlib.import_module("tunnelman.core.profiles")  # ConfigProblems
    importlib.import_module("tunnelman.core.ssh.known_hosts")  # HostKeyUnknown, HostKeyChanged, …


def error_class(name: str) -> type[errors.TunnelmanError] | None:
    """The error class the agent names `name`, if this tunnelman has one."""
    cls = errors.registered(name)
    if cls is None:
        _import_senders()
        cls = errors.registered(name)
    return cls


def error_from_wire(reply: dict[str, Any]) -> errors.TunnelmanError:
    """The exception a failure reply stands for: of the same class where we know it, else of its
    nearest ancestor we know (an agent newer than us), with the exit code the agent gave."""
    kind = str(reply.get("kind") or "AgentError")
    message = str(reply.get("message") or reply.get("error") or "the agent refused the request")
    hint = reply.get("hint")
    hint = str(hint) if hint is not None else None
    names = [kind]
    ancestry = reply.get("ancestry")
    if isinstance(ancestry, list):
        names += [name for name in ancestry if isinstance(name, str)]
    error = _rebuild(names, message, hint, reply)
    if type(error).__name__ != kind:
        # Not the agent's class: keep at least the exit status scripts rely on.
        code = _small_int(reply.get("exit_code"))
        if code is not None and 0 < code < 256:
            error.exit_code = code
    return error


def _rebuild(
    names: list[str], message: str, hint: str | None, reply: dict[str, Any]
) -> errors.TunnelmanError:
    """The first of `names` (and of their ancestors here) that rebuilds from the reply's fields;
    an AgentError when none does."""
    tried: set[type[errors.TunnelmanError]] = set()
    for name in names:
        cls = error_class(name)
        for candidate in errors.lineage(cls) if cls is not None else []:
            if candidate in tried:
                continue
            tried.add(candidate)
            try:
                return candidate.from_wire(message, hint=hint, fields=reply)
            except (TypeError, ValueError, KeyError, ArithmeticError):
                continue  # a field missing or of the wrong type: its ancestor needs fewer
    return errors.AgentError(message, hint=hint)


def _small_int(value: object) -> int | None:
    """A non-negative int field of a reply (a port, a pid, an exit code), else None."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31:
        return value
    return None


def reply_history(reply: dict[str, Any], limit: int = 300) -> dict[str, list[float]]:
    """`status` with `"history": true`: each tunnel's last rates (bytes/s both ways), by name.

    Lenient: a tunnel without a well-formed "history" (an older agent) is left out.
    """
    out: dict[str, list[float]] = {}
    tunnels = reply.get("tunnels")
    if not isinstance(tunnels, list):
        return out
    for item in tunnels:
        if not isinstance(item, dict):
            continue
        name, history = item.get("name"), item.get("history")
        if not isinstance(name, str) or not isinstance(history, list):
            continue
        rates = [
            float(x)
            for x in history[-limit:]
            if isinstance(x, int | float) and not isinstance(x, bool) and 0 <= x < 1e15
        ]
        out[name] = rates
    return out
