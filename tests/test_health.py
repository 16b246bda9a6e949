"""core/health.py: the one-line summaries (unit), and `probe` against real PostgreSQL servers: a
login with a round trip and PostGIS, a refused login, a server with TLS, a listener that hangs up
at once (what the tunnel does when the bastion cannot reach the endpoint) and nothing listening.

The probe goes straight to the lab database's port here (no tunnel: it only needs a port); the
TUI's Pilot tests in test_tui_traffic.py run it through real tunnels.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.postgres import Postgres
from tunnelman.core.credentials import Login
from tunnelman.core.health import Health, check, probe, usable_login
from tunnelman.core.profiles import Endpoint, Profile


def profile_for(pg: Postgres, **changes: object) -> Profile:
    keys: dict[str, object] = {
        "name": "geo",
        "endpoint": Endpoint("127.0.0.1", pg.port),
        "database": pg.database,
        "user": pg.user,
        "password": "keyring",
        **changes,
    }
    return Profile(**keys)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- summaries


def test_a_healthy_database_in_one_line() -> None:
    health = Health("ok", reach_ms=4.2, round_trip_ms=2.6, server_version="15.5", postgis="3.3.2")
    assert health.summary() == "database ✓ 3 ms · PostgreSQL 15.5 · PostGIS 3.3.2"
    assert health.level == "ok"


def test_without_postgis_and_under_a_millisecond() -> None:
    health = Health("ok", reach_ms=0.3, round_trip_ms=0.4, server_version="16.2")
    assert health.summary() == "database ✓ <1 ms · PostgreSQL 16.2"


def test_unreachable_names_the_reason_in_the_error_level() -> None:
    health = Health("unreachable", reason="no answer within 5 s")
    assert health.summary() == "database unreachable from the bastion: no answer within 5 s"
    assert health.level == "error"


def test_reachable_without_a_login_says_why() -> None:
    health = Health("no-login", reach_ms=12.4, reason='password = "prompt"')
    assert health.summary() == 'database ✓ reachable (12 ms) · not logged in: password = "prompt"'
    assert health.level == "ok"


def test_a_refused_login_is_a_warning() -> None:
    health = Health("login-failed", reach_ms=7, reason="password authentication failed")
    assert health.summary() == (
        "database ✓ reachable (7 ms) · login failed: password authentication failed"
    )
    assert health.level == "warning"
    assert Health("error", reason="boom").summary() == "health check failed: boom"


def test_usable_login_never_prompts() -> None:
    prompt = Profile(name="p", password="prompt", user="u")
    assert usable_login(prompt) == (None, 'password = "prompt" (asked only when a client connects)')
    login, why = usable_login(Profile(name="n", password="none", user="u"))
    assert why is None
    assert login == Login(user="u", password=None, source="none")


# ----------------------------------------------------------------------------- against servers


def test_probe_logs_in_and_reads_versions(postgres: Postgres) -> None:
    before = postgres.log_text()
    login = Login(user=postgres.user, password=postgres.password, source="keyring")
    health = probe(profile_for(postgres), postgres.port, login)
    assert health.outcome == "ok", health
    assert health.round_trip_ms is not None
    assert 0 < health.round_trip_ms < 1000
    assert health.server_version is not None
    assert health.server_version[0].isdigit()
    assert health.postgis is not None
    assert health.postgis.startswith("3.")
    new = postgres.log_text()[len(before) :]
    assert "incomplete startup packet" not in new, new  # the SSLRequest probe leaves no trace


def test_probe_with_a_wrong_password_reports_the_login(postgres: Postgres) -> None:
    login = Login(user=postgres.user, password="wrong", source="keyring")
    health = probe(profile_for(postgres), postgres.port, login)
    assert health.outcome == "login-failed", health
    assert health.reason is not None
    assert "password authentication failed" in health.reason
    assert health.reach_ms is not None


def test_probe_of_a_tls_server_finishes_the_handshake_quietly(postgres_tls: Postgres) -> None:
    before = postgres_tls.log_text()
    health = probe(profile_for(postgres_tls), postgres_tls.port, None, no_login="why not")
    assert health == Health("no-login", reach_ms=health.reach_ms, reason="why not")
    new = postgres_tls.log_text()[len(before) :]
    assert "could not accept SSL connection" not in new, new
    assert "incomplete startup packet" not in new, new


@pytest.fixture
def hangs_up() -> Iterator[int]:
    """A listener that closes each connection at once: a tunnel whose channel open failed."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4)
    stop = threading.Event()

    def serve() -> None:
        sock.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield sock.getsockname()[1]
    stop.set()
    thread.join(2)
    sock.close()


def test_probe_through_a_tunnel_that_hangs_up(hangs_up: int) -> None:
    health = probe(Profile(name="geo"), hangs_up, None)
    assert health.outcome == "unreachable"
    assert health.summary() == (
        "database unreachable from the bastion: the tunnel closed the connection unanswered"
    )


def test_a_login_through_a_tunnel_that_hangs_up_is_unreachable(hangs_up: int) -> None:
    login = Login(user="postgres", password="pw", source="keyring")
    health = probe(Profile(name="geo", sslmode="disable"), hangs_up, login)
    assert health.summary() == (
        "database unreachable from the bastion: the tunnel closed the connection unanswered"
    )
    prefer = probe(Profile(name="geo"), hangs_up, login)  # sslmode prefer: SSL, then plain
    assert prefer.outcome == "unreachable", prefer


def test_probe_with_nothing_listening(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    health = probe(Profile(name="geo"), port, None)
    assert health.outcome == "unreachable"
    assert health.reason is not None
    assert health.reason.startswith(f"nothing listens on 127.0.0.1:{port}")


def test_check_finds_no_login_for_prompt_and_still_reaches(postgres: Postgres) -> None:
    health = check(profile_for(postgres, password="prompt"), postgres.port)
    assert health.outcome == "no-login", health
    assert health.reason == 'password = "prompt" (asked only when a client connects)'
