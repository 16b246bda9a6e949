"""The TUI's live figures against the real lab (OpenSSH sshd, PostgreSQL+PostGIS): the bytes and
rate of a COPY through the tunnel, the sparkline and the list's rate column, and the health check
(✓ with a round trip and the PostGIS version; "unreachable" once the database is stopped).

Both hosts: the agent (its tunnels' rates reach the TUI through the once-a-second `status` poll,
as `watch` reports state changes only) and this process. The health check finds the password
the way a person's setup would without being asked: a pgpass file (`password = "none"`).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from tests.conftest import LabProfile
from tests.lab.postgres import Postgres
from tests.tui_support import host_fixtures, main_text, sync, wait_for
from tunnelman.tui.app import TunnelmanApp, make_app
from tunnelman.tui.hosts import AgentHost, InProcessHost, TunnelHost
from tunnelman.tui.screens.modals import SecretScreen

SIZE = (160, 45)
ROWS = 5000
ROW_BYTES = 1000  # COPY of 5000 rows of 1000 characters: ~5 MB from the database


agent, host = host_fixtures()


def with_pgpass(lab: LabProfile, pg: Postgres, monkeypatch: pytest.MonkeyPatch) -> None:
    """`password = "none"` and a pgpass file (libpq's own way) holding the lab password."""
    passfile = lab.config.parent / "pgpass"
    passfile.write_text(f"*:*:*:*:{pg.password}\n")
    passfile.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    lab.write(password="none")


def copy_out(port: int, pg: Postgres) -> int:
    """COPY ~5 MB from the database through the tunnel; the bytes received."""
    sql = f"copy (select repeat('x', {ROW_BYTES}) from generate_series(1, {ROWS})) to stdout"
    total = 0
    with (
        psycopg.connect(pg.dsn(host="127.0.0.1", port=port)) as conn,
        conn.cursor() as cur,
        cur.copy(sql) as copy,
    ):
        for chunk in copy:
            total += len(chunk)
    return total


async def opened(app: TunnelmanApp, pilot: Any) -> int:
    await pilot.press("enter")
    await wait_for(pilot, lambda: app.state_of("lab")[0] == "up", 30, "the tunnel to be up")
    port = app.state_of("lab")[1]
    assert port is not None
    return port


def health_of(app: TunnelmanApp) -> str | None:
    state = app.state.get("lab")
    health = state.health_shown() if state is not None else None
    return health.outcome if health is not None else None


@sync
async def test_copy_through_the_tunnel_shows_bytes_rate_and_sparkline(
    lab_profile: LabProfile, host: TunnelHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_pgpass(lab_profile, lab_profile.postgres, monkeypatch)
    app = make_app(lab_profile.config, initial_profile="lab", host=host)
    async with app.run_test(size=SIZE) as pilot:
        port = await opened(app, pilot)
        assert app.main is not None
        copied = await asyncio.to_thread(copy_out, port, lab_profile.postgres)
        assert copied >= ROWS * ROW_BYTES
        # Then keep copying, as a client would, while the pane is read: the rate is an average
        # over the last 3 s and the sparkline a bar per 6 s.
        stop = threading.Event()

        def keep_copying() -> None:
            while not stop.is_set():
                copy_out(port, lab_profile.postgres)

        copier = threading.Thread(target=keep_copying, daemon=True)
        copier.start()
        seen: dict[str, str] = {}

        def live() -> bool:
            assert app.main is not None
            cell = str(app.main.table.get_row("lab")[3])
            if cell:
                seen["cell"] = cell
            detail = main_text(app, "#tunnel-info")
            rows = {line[:12].strip(): line[12:] for line in detail.splitlines()}
            received = rows.get("traffic", "").partition("↓ ")[2]
            down = rows.get("rate", "").partition("↓ ")[2]
            if (
                "MB received" in received  # the copy's megabytes, not a few kB
                and float(received.split()[0]) >= copied / 1024 / 1024 - 0.05
                and down.split("/s")[0].endswith(("kB", "MB", "GB"))
                and "peak" in down
                and any(c in rows.get("activity", "") for c in "▂▃▄▅▆▇█")
            ):
                seen["detail"] = detail
            return "detail" in seen and "cell" in seen

        try:
            await wait_for(pilot, live, 20, "the COPY's bytes, a non-zero rate and a sparkline")
        finally:
            stop.set()
            await asyncio.to_thread(copier.join, 30)
        assert seen["cell"][0].isdigit(), seen["cell"]  # e.g. "1.6 MB/s" in the list
        assert seen["cell"].endswith(("kB/s", "MB/s", "GB/s")), seen["cell"]
        activity = next(x for x in seen["detail"].splitlines() if x.startswith("activity"))
        assert activity.endswith("  5 min"), activity


@sync
async def test_health_shows_round_trip_server_and_postgis(
    lab_profile: LabProfile, host: TunnelHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_pgpass(lab_profile, lab_profile.postgres, monkeypatch)
    app = make_app(lab_profile.config, initial_profile="lab", host=host)
    async with app.run_test(size=SIZE) as pilot:
        await opened(app, pilot)
        await wait_for(pilot, lambda: health_of(app) is not None, 20, "the first health check")
        await pilot.pause()
        detail = main_text(app, "#tunnel-info")
        line = next(x for x in detail.splitlines() if x.startswith("health"))
        assert health_of(app) == "ok", line
        assert line.startswith("health      database ✓ "), line
        assert " ms · PostgreSQL " in line, line
        with psycopg.connect(lab_profile.postgres.dsn()) as conn:
            row = conn.execute("select postgis_lib_version()").fetchone()
        assert row is not None
        assert f"PostGIS {row[0]}" in line, line


@sync
async def test_health_says_unreachable_once_the_database_stops(
    lab_profile: LabProfile,
    make_postgres: Callable[..., Postgres],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pg = make_postgres()
    with_pgpass(lab_profile, pg, monkeypatch)
    lab_profile.write(endpoint=f"127.0.0.1:{pg.port}", database=pg.database, user=pg.user)
    app = make_app(lab_profile.config, initial_profile="lab", host=InProcessHost())
    async with app.run_test(size=SIZE) as pilot:
        await opened(app, pilot)
        await wait_for(pilot, lambda: health_of(app) == "ok", 20, "a healthy first check")
        app.health_interval = 1.0
        await asyncio.to_thread(pg.stop)
        await wait_for(pilot, lambda: health_of(app) == "unreachable", 20, "the next check")
        await pilot.pause()
        assert app.state_of("lab")[0] == "up"  # the tunnel itself is fine: the database is not
        line = next(
            x for x in main_text(app, "#tunnel-info").splitlines() if x.startswith("health")
        )
        assert "database unreachable from the bastion: " in line, line
        assert "the tunnel closed the connection unanswered" in line, line


@sync
async def test_health_never_asks_for_a_password(lab_profile: LabProfile) -> None:
    """`password = "prompt"`: the check only says the database is reachable; no modal asks."""
    lab_profile.write(password="prompt")
    app = make_app(lab_profile.config, initial_profile="lab", host=InProcessHost())
    async with app.run_test(size=SIZE) as pilot:
        await opened(app, pilot)
        await wait_for(pilot, lambda: health_of(app) is not None, 20, "the first health check")
        await pilot.pause()
        assert health_of(app) == "no-login"
        assert not any(isinstance(s, SecretScreen) for s in app.screen_stack)
        line = next(
            x for x in main_text(app, "#tunnel-info").splitlines() if x.startswith("health")
        )
        assert "database ✓ reachable (" in line, line
        assert 'not logged in: password = "prompt"' in line, line


@sync
async def test_health_logs_in_with_the_keyring_password_once_it_is_stored(
    lab_profile: LabProfile, keyring_backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`password = "keyring"` with nothing stored: reachable, not logged in, the fix named; once
    the password is stored, a later check logs in with it (never a prompt in between)."""
    import keyring

    from tunnelman.tui.actions import health

    monkeypatch.setattr(health, "NO_LOGIN_TTL", 0.0)
    lab_profile.write(password="keyring")
    app = make_app(lab_profile.config, initial_profile="lab", host=InProcessHost())
    try:
        async with app.run_test(size=SIZE) as pilot:
            await opened(app, pilot)
            await wait_for(pilot, lambda: health_of(app) is not None, 20, "the first check")
            await pilot.pause()
            line = next(
                x for x in main_text(app, "#tunnel-info").splitlines() if x.startswith("health")
            )
            assert health_of(app) == "no-login", line
            assert "no password for 'lab' in the keyring" in line, line
            keyring.set_password("tunnelman", "lab", lab_profile.password)
            app.health_interval = 1.0
            await wait_for(pilot, lambda: health_of(app) == "ok", 20, "a check with the password")
            assert not any(isinstance(s, SecretScreen) for s in app.screen_stack)
    finally:
        with contextlib.suppress(Exception):
            keyring.delete_password("tunnelman", "lab")


@sync
async def test_a_tui_opened_later_shows_the_agent_s_rate_history(
    lab_profile: LabProfile, agent: AgentHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent samples its tunnels once a second whether a TUI runs or not: a TUI opened after
    a COPY shows that COPY in the sparkline at once (not only what it sampled itself)."""
    import time

    with_pgpass(lab_profile, lab_profile.postgres, monkeypatch)
    status = await asyncio.to_thread(agent.client.up, "lab", lab_profile.config, None)
    assert status.local_port is not None
    started = time.monotonic()
    while time.monotonic() - started < 3.0:  # three seconds of traffic, with no TUI running
        await asyncio.to_thread(copy_out, status.local_port, lab_profile.postgres)
    await asyncio.sleep(4.5)  # past the current rate's 3-second window: "now" is idle
    assert (agent.client.find("lab") or status).rate_received == 0
    history = agent.rate_history()["lab"]
    assert sum(1 for r in history if r > 100_000) >= 2, history  # the agent kept the COPY's rates
    app = make_app(lab_profile.config, initial_profile="lab", host=agent)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.state_of("lab")[0] == "up", 10, "the agent's tunnel")
        state = app.state["lab"]
        await wait_for(pilot, lambda: sum(1 for r in state.rates if r > 100_000) >= 2, 3,
                       "the agent's history in the sparkline")  # fmt: skip
        activity = next(
            line
            for line in main_text(app, "#tunnel-info").splitlines()
            if line.startswith("activity")
        )
        assert any(c in activity for c in "▂▃▄▅▆▇█"), activity
