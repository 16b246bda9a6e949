"""The TUI's database operations (issue 14 item 6): the palette's "Database: …" commands, their
form, dry run, typed-name confirmation and result screen.

Against the lab's RDS-like PostgreSQL (tests/lab/rds_like.py: a master with CREATEDB CREATEROLE,
no superuser, pgextwlist) through the lab bastion, driven by keys and clicks in a Pilot; what the
TUI did is checked from the lab's side (the bootstrap superuser over the socket). The form's SVG
snapshot uses the fixed world of tests/test_tui_snapshots.py.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from textual.command import CommandPalette
from textual.pilot import Pilot
from textual.screen import Screen
from textual.widgets import Button, Input, Static

from tests.conftest import LabProfile
from tests.lab.rds_like import RdsLike
from tests.test_db_ops import as_role, databases, master, ok, one, rds, roles, tm  # noqa: F401
from tests.test_tui_snapshots import PROFILES, SIZE, SnapCompare, app_with, fixed_world, settle  # noqa: F401
from tests.tui_support import sync, wait_for
from tunnelman.core import profiles as prof
from tunnelman.tui.actions.db import BY_KEY, OPS, DbRequest, check_request
from tunnelman.tui.app import TunnelmanApp, make_app
from tunnelman.tui.hosts import InProcessHost
from tunnelman.tui.screens.db import DbFormScreen, DbResultScreen, TypedConfirmScreen

TITLES = [
    "Database: create user…",
    "Database: create database…",
    "Database: grant read…",
    "Database: dump…",
    "Database: restore…",
    "Database: drop database…",
    "Database: drop user…",
]


def on_top(app: TunnelmanApp, kind: type[Screen[Any]]) -> Callable[[], bool]:
    return lambda: isinstance(app.screen, kind)


async def palette(app: TunnelmanApp, pilot: Pilot[Any], title: str) -> DbFormScreen:
    """Choose `title` in the command palette (typed as a person would); returns its form."""
    await pilot.press("ctrl+p")
    await wait_for(pilot, on_top(app, CommandPalette), 3, "the palette")
    await pilot.press(*title.replace(":", "").rstrip("…"))
    await pilot.pause(0.4)
    await pilot.press("enter")
    await wait_for(pilot, on_top(app, DbFormScreen), 3, f"the form of {title}")
    form = app.screen
    assert isinstance(form, DbFormScreen)
    assert form.op.title == title
    return form


async def fill(pilot: Pilot[Any], form: DbFormScreen, **values: str) -> None:
    for name, value in values.items():
        form.query_one(f"#db-{name}", Input).value = value
    await pilot.pause()


async def dry_run(pilot: Pilot[Any], form: DbFormScreen) -> str:
    await pilot.press("ctrl+t")
    assert form.busy or form.query_one("#db-plan-box").display, "ctrl+t started no dry run"
    await wait_for(pilot, lambda: not form.busy, 30, "the dry run")
    plan = str(form.query_one("#db-plan", Static).render())
    assert plan, str(form.query_one("#db-error", Static).render())
    return plan


async def run(app: TunnelmanApp, pilot: Pilot[Any]) -> DbResultScreen:
    await pilot.click("#run")
    return await finished(app, pilot)


async def finished(app: TunnelmanApp, pilot: Pilot[Any]) -> DbResultScreen:
    """The result screen, once its operation has ended."""
    await wait_for(pilot, on_top(app, DbResultScreen), 3, "the result screen")
    result = app.screen
    assert isinstance(result, DbResultScreen)
    await wait_for(pilot, lambda: result.finished, 60, "the operation")
    return result


def screen_text(screen: Screen[Any]) -> str:
    return "\n".join(str(s.render()) for s in screen.query(Static))


# ----------------------------------------------------------------------------- without a server


def test_palette_offers_the_seven_operations(tmp_path: Path) -> None:
    config = tmp_path / "profiles.toml"
    config.write_text('[profiles.p]\nbastion = "b"\nendpoint = "e"\ndatabase = "geo"\n')
    app = make_app(config, host=InProcessHost())
    titles = [title for title, _help, _cb in app.db_commands()]
    assert titles == TITLES
    assert [op.title for op in OPS] == TITLES


def test_the_form_refuses_what_the_cli_refuses(tmp_path: Path) -> None:
    config = tmp_path / "profiles.toml"
    config.write_text('[profiles.p]\nbastion = "b"\nendpoint = "e"\ndatabase = "geo"\n')
    profile = prof.load(config).get("p")
    drop = BY_KEY["drop-database"]
    assert check_request(DbRequest(drop, "p", db="geo"), profile) == (
        "db",
        "refusing to drop 'geo': profile 'p' connects to it "
        "(drop it through a profile that connects to another database)",
    )
    assert check_request(DbRequest(drop, "p", db="other"), profile) is None
    bad = check_request(DbRequest(BY_KEY["create-user"], "p", role="x" * 64), profile)
    assert bad is not None
    assert bad[0] == "role"
    assert "longer than 63 bytes" in bad[1]
    missing = check_request(DbRequest(BY_KEY["create-database"], "p", db="d"), profile)
    assert missing == ("owner", "type the role name")
    # A hostile name is a name: quoted by dbops, never refused or executed.
    hostile = 'x"; drop table t; --'
    assert check_request(DbRequest(BY_KEY["drop-user"], "p", role=hostile), profile) is None
    assert "password='" not in repr(DbRequest(BY_KEY["create-user"], "p", password="s3cret"))


# ----------------------------------------------------------------------------- against the lab


@sync
async def test_palette_db_operations_against_rds_like(master: LabProfile, rds: RdsLike) -> None:  # noqa: F811
    app = make_app(master.config, initial_profile="lab", host=InProcessHost(), poll_interval=3600)
    pw = "app1-Secret-pw-4711"
    async with app.run_test(size=(160, 45)) as pilot:
        # create user: a dry run changes nothing, then Run creates it with the typed password.
        form = await palette(app, pilot, "Database: create user…")
        await fill(pilot, form, role="app1", password=pw, password2=pw)
        plan = await dry_run(pilot, form)
        assert 'CREATE ROLE "app1" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE' in plan, plan
        assert "app1" not in roles(rds)
        assert pw not in plan
        result = await run(app, pilot)
        assert result.ok, result.error
        assert "Created role app1" in (result.summary or "")
        assert any("opening a tunnel to 'lab'" in line for line in result.lines)
        with rds.superuser() as conn:
            row = conn.execute(
                "SELECT rolcanlogin, rolsuper, rolcreatedb, rolcreaterole FROM pg_roles"
                " WHERE rolname = 'app1'"
            ).fetchone()
        assert row == (True, False, False, False)
        assert pw not in screen_text(result)
        assert pw not in rds.log_text()
        await pilot.press("escape")

        # An empty password: one is generated and shown once, on the result screen only.
        form = await palette(app, pilot, "Database: create user…")
        await fill(pilot, form, role="gen1")
        result = await run(app, pilot)
        assert result.ok, result.error
        secret = [str(s.render()) for s in result.query(".db-secret")]
        assert len(secret) == 1, secret
        assert "shown only now" in secret[0]
        generated = secret[0].rsplit(": ", 1)[1]
        assert generated not in " ".join(result.lines) + (result.summary or "")
        with as_role(rds, "gen1", generated, "postgres") as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("gen1",)
        await pilot.press("escape")
        assert all(generated not in screen_text(s) for s in app.screen_stack)
        assert all(generated not in str(n.message) for n in app._notifications)

        # create database with postgis, owned by app1: dry run first, then the routine.
        form = await palette(app, pilot, "Database: create database…")
        await fill(pilot, form, db="appdb", owner="app1", extensions="postgis")
        plan = await dry_run(pilot, form)
        assert 'CREATE DATABASE "appdb" TEMPLATE template0;' in plan, plan
        assert 'ALTER TABLE "public"."spatial_ref_sys" OWNER TO "app1";' in plan
        assert "appdb" not in databases(rds)
        result = await run(app, pilot)
        assert result.ok, result.error
        owner = "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'appdb'"
        assert one(rds, owner) == "app1"
        assert one(rds, "SELECT has_database_privilege('public', 'appdb', 'CONNECT')") is False
        srs = (
            "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'spatial_ref_sys'::regclass"
        )
        assert one(rds, srs, db="appdb") == "app1"
        with as_role(rds, "app1", pw, "appdb") as conn:
            assert conn.execute("SELECT postgis_version()").fetchone() is not None
        await pilot.press("escape")

        # A failure shows the TunnelmanError's message and hint on the result screen.
        form = await palette(app, pilot, "Database: create database…")
        await fill(pilot, form, db="appdb", owner="app1")
        result = await run(app, pilot)
        assert not result.ok
        assert result.error is not None
        assert "already exists" in str(result.query_one("#db-status", Static).render())
        await pilot.press("escape")

        # drop database: the profile's own database is refused before any question ...
        form = await palette(app, pilot, "Database: drop database…")
        await fill(pilot, form, db="postgres")
        await pilot.click("#run")
        await pilot.pause()
        assert app.screen is form
        assert "profile 'lab' connects to it" in str(form.query_one("#db-error", Static).render())
        # ... another one needs its name typed: a wrong name keeps it.
        await fill(pilot, form, db="appdb")
        await pilot.click("#run")
        await wait_for(pilot, on_top(app, TypedConfirmScreen), 3, "the typed confirmation")
        confirm = app.screen
        await pilot.press(*"appdb2")
        await pilot.pause()
        assert confirm.query_one("#yes", Button).disabled
        await pilot.press("enter")
        await pilot.pause()
        assert app.screen is confirm
        assert "nothing is dropped" in str(confirm.query_one("#typed-error", Static).render())
        await pilot.click("#yes")  # disabled: nothing happens
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is form, 3, "back to the form")
        assert "appdb" in databases(rds)
        # The right name drops it.
        await pilot.click("#run")
        await wait_for(pilot, on_top(app, TypedConfirmScreen), 3, "the typed confirmation")
        await pilot.press(*"appdb")
        await pilot.pause()
        assert not app.screen.query_one("#yes", Button).disabled
        await pilot.press("enter")
        result = await finished(app, pilot)
        assert result.ok, result.error
        assert "appdb" not in databases(rds)
        await pilot.press("escape")

        # drop user, typed too.
        for role in ("app1", "gen1"):
            form = await palette(app, pilot, "Database: drop user…")
            await fill(pilot, form, role=role)
            await pilot.click("#run")
            await wait_for(pilot, on_top(app, TypedConfirmScreen), 3, "the typed confirmation")
            await pilot.press(*role, "enter")
            result = await finished(app, pilot)
            assert result.ok, result.error
            await pilot.press("escape")
        assert not {"app1", "gen1"} & roles(rds)
    # Neither password reached a log (tunnelman's, under XDG_STATE_HOME) nor the server's.
    logs = [p for p in Path(os.environ["XDG_STATE_HOME"]).rglob("*") if p.is_file()]
    for secret_text in (pw, generated):
        assert all(secret_text not in p.read_text(errors="replace") for p in logs)
        assert secret_text not in rds.log_text()
    try:
        psycopg.connect(rds.dsn(user="app1", password=pw, dbname="postgres")).close()
    except psycopg.OperationalError:
        pass
    else:
        raise AssertionError("app1 can still log in")


@sync
async def test_a_prompt_password_is_asked_once_for_a_dry_run_and_its_run(
    master: LabProfile,  # noqa: F811
    rds: RdsLike,  # noqa: F811
) -> None:
    from tunnelman.tui.screens.modals import SecretScreen

    master.write(password="prompt")
    app = make_app(master.config, initial_profile="lab", host=InProcessHost(), poll_interval=3600)
    asked = 0
    async with app.run_test(size=(160, 45)) as pilot:
        form = await palette(app, pilot, "Database: create user…")
        await fill(
            pilot, form, role="asked1", password="asked1-pw-1234", password2="asked1-pw-1234"
        )
        await pilot.press("ctrl+t")
        await wait_for(pilot, on_top(app, SecretScreen), 30, "the password prompt")
        asked += 1
        app.screen.query_one("#secret", Input).value = rds.master_password
        await pilot.press("enter")
        await wait_for(pilot, lambda: not form.busy and on_top(app, DbFormScreen)(), 30, "dry run")
        assert "CREATE ROLE" in str(form.query_one("#db-plan", Static).render())
        await pilot.click("#run")
        for _ in range(60):  # the run: a second prompt would show here
            await pilot.pause(0.1)
            if isinstance(app.screen, SecretScreen):
                asked += 1
                break
            if isinstance(app.screen, DbResultScreen) and app.screen.finished:
                break
        assert asked == 1, "the run asked for the password the dry run had"
        result = await finished(app, pilot)
        assert result.ok, result.error
    assert "asked1" in roles(rds)


@sync
async def test_grant_read_dump_restore_through_the_open_tunnel(
    master: LabProfile,  # noqa: F811
    rds: RdsLike,  # noqa: F811
    tmp_path: Path,
) -> None:
    pw = "app2-pw-1234"
    for args in (
        ("create-user", "lab", "app2", "--password-stdin"),
        ("create-user", "lab", "reader2", "--password-stdin"),
        ("create-database", "lab", "src", "--owner", "app2", "--extension", "postgis"),
        ("create-database", "lab", "dst", "--owner", "app2", "--extension", "postgis"),
    ):
        ok(tm("db", *args, input=pw + "\n"))
    with as_role(rds, "app2", pw, "src") as conn:
        conn.execute("CREATE TABLE pts (id int, geom geometry(Point, 4326))")
        conn.execute("INSERT INTO pts SELECT i, ST_MakePoint(i, i) FROM generate_series(1, 9) i")
    archive = tmp_path / "src.dump"
    app = make_app(master.config, initial_profile="lab", host=InProcessHost(), poll_interval=3600)
    async with app.run_test(size=(160, 45)) as pilot:
        # The tunnel the TUI holds open is the one the operations use.
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.state_of("lab")[0] == "up", 30, "the tunnel")

        form = await palette(app, pilot, "Database: grant read…")
        await fill(pilot, form, db="src", role="reader2")
        plan = await dry_run(pilot, form)
        assert 'GRANT SELECT ON ALL TABLES IN SCHEMA "public" TO "reader2";' in plan
        assert one(rds, "SELECT has_table_privilege('reader2', 'pts', 'SELECT')", db="src") is False
        result = await run(app, pilot)
        assert result.ok, result.error
        assert not any("opening a tunnel" in line for line in result.lines)
        assert "✓ reader2 reads public.pts (existing table)" in result.lines, result.lines
        assert any(line.startswith("✓ reader2 cannot write") for line in result.lines)
        assert not any(line.startswith("✗") for line in result.lines)
        assert one(rds, "SELECT has_table_privilege('reader2', 'pts', 'SELECT')", db="src") is True
        await pilot.press("escape")

        form = await palette(app, pilot, "Database: dump…")
        await fill(pilot, form, db="src", file=str(archive))
        plan = await dry_run(pilot, form)
        assert "pg_dump --format=custom --verbose" in plan
        assert not archive.exists()
        result = await run(app, pilot)
        assert result.ok, result.error
        assert "dumping public.pts (table 1)" in result.lines[0], result.lines
        assert archive.read_bytes()[:5] == b"PGDMP"
        await pilot.press("escape")

        form = await palette(app, pilot, "Database: restore…")
        await fill(pilot, form, db="dst", file=str(archive))
        plan = await dry_run(pilot, form)
        assert "--no-owner --no-acl --verbose --role=app2" in plan
        result = await run(app, pilot)
        assert result.ok, result.error
        assert any("restoring public.pts" in line for line in result.lines), result.lines
        assert "Restored" in (result.summary or "")
        assert one(rds, "SELECT count(*) FROM pts", db="dst") == 9
        await pilot.press("escape")

        # A file that is no archive: the error's message and hint, nothing restored.
        bogus = tmp_path / "bogus.dump"
        bogus.write_text("not a dump")
        form = await palette(app, pilot, "Database: restore…")
        await fill(pilot, form, db="dst", file=str(bogus))
        result = await run(app, pilot)
        status = str(result.query_one("#db-status", Static).render())
        assert "is not a pg_dump custom-format archive" in status
        assert "fix: make one with `tunnelman db dump" in status
        await pilot.press("escape")
    for args in (
        ("drop-database", "lab", "src", "--yes"),
        ("drop-database", "lab", "dst", "--yes"),
        ("drop-user", "lab", "reader2", "--yes"),
        ("drop-user", "lab", "app2", "--yes"),
    ):
        ok(tm("db", *args))


# ----------------------------------------------------------------------------- snapshot


def test_snapshot_db_form(fixed_world: Path, snap_compare: SnapCompare) -> None:  # noqa: F811
    app = app_with(PROFILES, profile="staging")

    async def form(pilot: Pilot[Any]) -> None:
        await settle(app, pilot)
        app.db_operation("create-database")
        await wait_for(pilot, on_top(app, DbFormScreen), 3, "the form")
        screen = app.screen
        assert isinstance(screen, DbFormScreen)
        await wait_for(pilot, lambda: bool(screen.query("#db-extensions")), 3, "the fields")
        await fill(pilot, screen, db="appdb", owner="app1", extensions="postgis")
        for field in screen.query(Input):
            field.cursor_blink = False
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=form)


def test_snapshot_drop_confirmation(fixed_world: Path, snap_compare: SnapCompare) -> None:  # noqa: F811
    app = app_with(PROFILES, profile="staging")

    async def confirm(pilot: Pilot[Any]) -> None:
        await settle(app, pilot)
        app.db_operation("drop-database")
        await wait_for(pilot, on_top(app, DbFormScreen), 3, "the form")
        screen = app.screen
        assert isinstance(screen, DbFormScreen)
        await wait_for(pilot, lambda: bool(screen.query("#db-db")), 3, "the fields")
        await fill(pilot, screen, db="appdb")
        await pilot.click("#run")
        await wait_for(pilot, on_top(app, TypedConfirmScreen), 3, "the confirmation")
        await pilot.press(*"appd")
        for field in app.screen.query(Input):
            field.cursor_blink = False
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=confirm)
