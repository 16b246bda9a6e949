"""A cheap health check of the database behind an open tunnel: is it there, and does it answer?

`probe(profile, port, login)` goes through the tunnel's local port once, one of two ways:
1. Without a login: TCP plus PostgreSQL's SSLRequest (8 bytes, answered with one byte before any login): proves
   the bastion reached the database, with no password. A connection the tunnel closes before that
   byte means the bastion could not reach the endpoint. PostgreSQL logs nothing for a client that
   hangs up after that answer (or after a TLS handshake with no startup packet), so a check every
   30 s does not fill the server's log.
2. With a `Login` (a password found without asking anybody, or none needed): a psycopg login,
   `select 1` timed, the server version and, when the extension is installed, PostGIS's version.
   A connection libpq saw refused, timed out or closed unanswered is "unreachable"; anything the
   server said (a refused login, no TLS) is a failed login.

`check(profile, port)` finds the login itself (`usable_login`: keyring, pgpass through libpq,
IAM, Secrets Manager; never a prompt) and probes. Callers: the TUI's health worker (a thread).
Everything is caught into the `Health` it returns; the password is handed to psycopg as an
argument, never logged. psycopg is imported only for way 2.
"""

from __future__ import annotations

import contextlib
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from tunnelman.core.errors import TunnelmanError
from tunnelman.core.tunnel.probe import SSL_REQUEST, finish_tls

if TYPE_CHECKING:
    from tunnelman.core.credentials import Login
    from tunnelman.core.profiles import Profile

__all__ = ["Health", "check", "probe", "usable_login"]

TIMEOUT = 5.0
"""Seconds for each step: the check must stay cheap even when the database does not answer."""

Outcome = Literal["ok", "no-login", "login-failed", "unreachable", "error"]
"""ok: logged in and answered; no-login: reachable, no password usable without asking;
login-failed: reachable, the login was refused; unreachable: the tunnel did not reach it;
error: the check itself failed."""


@dataclass(frozen=True)
class Health:
    """What one check found."""

    outcome: Outcome
    reach_ms: float | None = None
    """TCP through the tunnel until the database's first answer."""
    round_trip_ms: float | None = None
    """`select 1` once logged in."""
    server_version: str | None = None
    """`server_version` as the server reports it, without the packager's suffix ("15.5")."""
    postgis: str | None = None
    """`postgis_lib_version()`; None when the extension is not installed (or not logged in)."""
    reason: str | None = None
    """Why it is unreachable, why the login failed, or why none was tried."""

    @property
    def level(self) -> Literal["ok", "warning", "error"]:
        """How a display should colour it."""
        if self.outcome in ("unreachable", "error"):
            return "error"
        return "warning" if self.outcome == "login-failed" else "ok"

    def summary(self) -> str:
        """One line: "database ✓ 3 ms · PostgreSQL 15.5 · PostGIS 3.3.2"."""
        if self.outcome == "unreachable":
            return f"database unreachable from the bastion: {self.reason}"
        if self.outcome == "error":
            return f"health check failed: {self.reason}"
        if self.outcome == "ok":
            parts = [f"database ✓ {_ms(self.round_trip_ms)}"]
            if self.server_version:
                parts.append(f"PostgreSQL {self.server_version}")
            if self.postgis:
                parts.append(f"PostGIS {self.postgis}")
            return " · ".join(parts)
        reached = f"database ✓ reachable ({_ms(self.reach_ms)})"
        if self.outcome == "login-failed":
            return f"{reached} · login failed: {self.reason}"
        return f"{reached} · not logged in: {self.reason}"


def _ms(value: float | None) -> str:
    if value is None:
        return "? ms"
    return f"{value:.0f} ms" if value >= 1 else "<1 ms"


# ----------------------------------------------------------------------------- the checks


def usable_login(profile: Profile) -> tuple[Login | None, str | None]:
    """The login for `profile` found without asking anybody, or (None, why there is none)."""
    from tunnelman.core.credentials import Login, resolve_login

    if profile.password == "prompt":
        return None, 'password = "prompt" (asked only when a client connects)'
    if profile.password == "none":
        return Login(user=profile.user, password=None, source="none"), None  # libpq: pgpass
    try:
        return resolve_login(profile, prompt=None), None
    except TunnelmanError as exc:
        return None, str(exc)


def reach(port: int, timeout: float = TIMEOUT) -> float:
    """Milliseconds until the database behind 127.0.0.1:`port` answers an SSLRequest.

    Raises `TunnelmanError` saying why it did not.
    """
    started = time.perf_counter()
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except OSError as exc:
        raise TunnelmanError(f"nothing listens on 127.0.0.1:{port} ({exc})") from None
    with sock:
        try:
            sock.sendall(SSL_REQUEST)
            answer = sock.recv(1)
        except TimeoutError:
            raise TunnelmanError(f"no answer within {timeout:.0f} s") from None
        except (ConnectionResetError, BrokenPipeError):
            answer = b""  # closed before reading our request: the same as closed after it
        except OSError as exc:
            raise TunnelmanError(f"the tunnel dropped the connection ({exc})") from None
        elapsed = (time.perf_counter() - started) * 1000
        if not answer:
            raise TunnelmanError("the tunnel closed the connection unanswered")
        if answer == b"S":
            finish_tls(sock, None, timeout)  # after the round trip was timed
        return elapsed


def probe(
    profile: Profile, port: int, login: Login | None, *, no_login: str | None = None
) -> Health:
    """Check the database behind the tunnel on 127.0.0.1:`port`; never raises for what it finds.

    `login` None: only whether it is reachable (`no_login` says why, shown as the reason).
    With a login, the login alone is the check: one connection through the tunnel, not two (each
    is a client in the tunnel's event log and a connection on the server).
    """
    if login is not None:
        return _log_in(profile, port, login)
    try:
        reach_ms = reach(port)
    except TunnelmanError as exc:
        return Health("unreachable", reason=str(exc))
    return Health("no-login", reach_ms=reach_ms, reason=no_login or "no usable password")


def _log_in(profile: Profile, port: int, login: Login) -> Health:
    import psycopg

    from tunnelman.core.clients import conn_settings

    settings = conn_settings(profile, port, user=login.user)
    params: dict[str, Any] = dict(settings.keywords())
    timeout = min(settings.connect_timeout, int(TIMEOUT) * 2)
    params["connect_timeout"] = str(timeout)
    params["application_name"] = "tunnelman health"
    if login.password is not None:
        params["password"] = login.password
    started = time.perf_counter()
    try:
        conn = psycopg.connect(autocommit=True, **params)
    except psycopg.Error as exc:
        unreachable = _unreachable_reason(exc, port, timeout)
        if unreachable is not None:
            return Health("unreachable", reason=unreachable)
        return Health("login-failed", reach_ms=_since(started), reason=_pg_reason(exc))
    reach_ms = _since(started)
    try:
        started = time.perf_counter()
        conn.execute("select 1").fetchone()
        round_trip = _since(started)
        version = conn.info.parameter_status("server_version") or ""
        row = conn.execute(
            "select extversion from pg_extension where extname = 'postgis'"
        ).fetchone()
        postgis = None
        if row is not None:
            lib = conn.execute("select postgis_lib_version()").fetchone()
            postgis = str(lib[0]) if lib else str(row[0])
    except psycopg.Error as exc:
        return Health("login-failed", reach_ms=reach_ms, reason=_pg_reason(exc))
    finally:
        with contextlib.suppress(Exception):
            conn.close()
    return Health(
        "ok",
        reach_ms=reach_ms,
        round_trip_ms=round_trip,
        server_version=version.split()[0] if version else None,
        postgis=postgis,
    )


def _since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def _unreachable_reason(exc: Exception, port: int, timeout: int) -> str | None:
    """Why no server answered, or None when one did (a refused login, a TLS mismatch…).

    libpq's connection errors carry no SQLSTATE: what it says is all there is to go by.
    """
    lower = _pg_reason(exc).lower()
    if "fatal:" in lower or "error:" in lower:
        return None  # the server's own words
    if "connection refused" in lower:
        return f"nothing listens on 127.0.0.1:{port} (connection refused)"
    if "timeout" in lower or "timed out" in lower:
        return f"no answer within {timeout} s"
    if any(w in lower for w in ("closed the connection", "eof", "reset", "could not receive")):
        return "the tunnel closed the connection unanswered"
    return None


def _pg_reason(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    text = text.removeprefix("connection failed: ")
    # libpq repeats "connection to server at … failed:"; keep the reason.
    marker = " failed: "
    if text.startswith("connection to server") and marker in text:
        text = text.split(marker, 1)[1]
    return text or type(exc).__name__


def check(profile: Profile, port: int) -> Health:
    """`probe` with the login `usable_login` finds (the TUI's default health check)."""
    try:
        login, why = usable_login(profile)
    except Exception as exc:  # keyring backends and boto3 raise assorted errors
        login, why = None, f"{type(exc).__name__}: {exc}"
    return probe(profile, port, login, no_login=why)
