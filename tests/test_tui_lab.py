"""Pilot tests of every TUI action against the real lab: OpenSSH sshd, PostgreSQL+PostGIS, moto,
a Secret Service keyring. Each test drives the app by keys or clicks, as a person would."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import LabProfile
from tests.lab.keys import make_key
from tests.lab.ports import port_open
from tests.lab.postgres import Postgres
from tests.lab.sshd import Sshd
from tests.lab.toml_profile import write_profile
from tests.tui_support import (
    FakeAws,
    HangingBastion,
    host_fixtures,
    main_text,
    sync,
    wait_for,
    wait_for_screen,
)
from tunnelman.agent.client import AgentClient
from tunnelman.core import clients
from tunnelman.core import profiles as prof
from tunnelman.core.aws import Database
from tunnelman.tui.app import TunnelmanApp, make_app
from tunnelman.tui.hosts import AgentHost, InProcessHost, TunnelHost
from tunnelman.tui.screens.help import HelpScreen
from tunnelman.tui.screens.modals import (
    ConfirmScreen,
    HostKeyChangedScreen,
    HostKeyScreen,
    SecretScreen,
)
from tunnelman.tui.screens.profile_form import ProfileFormScreen

SIZE = (160, 45)


@pytest.fixture
def hanging() -> Iterator[HangingBastion]:
    with HangingBastion() as bastion:
        yield bastion


@pytest.fixture
def lab(lab_profile: LabProfile, tmp_home: Path, hanging: HangingBastion) -> LabProfile:
    """`lab` plus: `lab-new` (empty known_hosts), `lab-changed` (another key recorded for the
    bastion) and `hang` (a bastion that accepts TCP and never answers)."""
    sshd = lab_profile.sshd
    ssh_dir = tmp_home / ".ssh"
    empty = ssh_dir / "known_hosts_new"
    empty.write_text("")
    _, other_pub = make_key(tmp_home / "other", "ed25519")
    alg, b64 = other_pub.split()[:2]
    changed = ssh_dir / "known_hosts_changed"
    changed.write_text(f"# a comment line\n{sshd.known_hosts_name()} {alg} {b64}\n")
    base = dict(lab_profile.keys)
    write_profile(
        lab_profile.config,
        "lab-new",
        **{**base, "known_hosts": empty, "description": "unknown host key"},
    )
    write_profile(
        lab_profile.config,
        "lab-changed",
        **{**base, "known_hosts": changed, "description": "changed host key"},
    )
    write_profile(
        lab_profile.config,
        "hang",
        **{
            **base,
            "bastion": f"{sshd.user}@127.0.0.1:{hanging.port}",
            "description": "bastion that never answers",
            "connect_timeout": 60,
        },
    )
    return lab_profile


agent, host = host_fixtures()


def app_for(lab: LabProfile, name: str = "lab", **kwargs: Any) -> TunnelmanApp:
    kwargs.setdefault("host", InProcessHost())
    return make_app(lab.config, initial_profile=name, **kwargs)


def query_through(port: int, lab: LabProfile) -> str:
    with psycopg.connect(lab.postgres.dsn(host="127.0.0.1", port=port)) as conn:
        row = conn.execute("select postgis_version()").fetchone()
    assert row is not None
    return str(row[0])


@sync
async def test_enter_opens_the_tunnel_shows_the_port_and_a_query_works(
    lab: LabProfile, host: TunnelHost
) -> None:
    app = app_for(lab, host=host)
    async with app.run_test(size=SIZE) as pilot:
        assert app.main is not None
        assert app.main.current == "lab"
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.state_of("lab")[0] == "up", 30, "the tunnel to be up")
        port = app.state_of("lab")[1]
        assert port is not None
        await pilot.pause()
        detail = main_text(app, "#tunnel-info")
        assert f"127.0.0.1:{port}" in detail
        assert "● up" in detail
        assert "up since" in detail
        row = app.main.table.get_row("lab")
        assert str(row[1]) == "● up"
        assert str(row[2]) == str(port)
        version = await asyncio.to_thread(query_through, port, lab)
        assert version  # e.g. "3.3 USE_GEOS=1 USE_PROJ=1 USE_STATS=1"
        # enter again closes it, and the port with it
        await pilot.press("enter")
        await wait_for(
            pilot, lambda: app.state_of("lab")[0] == "stopped", 10, "the tunnel to close"
        )
        await wait_for(pilot, lambda: not port_open("127.0.0.1", port), 10, "the port to close")


@sync
async def test_unknown_host_key_accept_connects_and_records_it(
    lab: LabProfile, host: TunnelHost
) -> None:
    app = app_for(lab, "lab-new", host=host)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("enter")
        await wait_for_screen(pilot, app, HostKeyScreen, "#reject", 20, "the host-key modal")
        screen = app.screen
        assert isinstance(screen, HostKeyScreen)
        assert screen.question.fingerprint == lab.sshd.host_key_fingerprint()
        assert "connecting" in app.state_of("lab-new")[0]  # the worker waits for the answer
        await pilot.pause()
        await pilot.click("#accept")
        await wait_for(pilot, lambda: app.state_of("lab-new")[0] == "up", 30, "the tunnel")
        recorded = (lab.config.parent.parent.parent / ".ssh" / "known_hosts_new").read_text()
        assert lab.sshd.host_public_key().split()[1] in recorded


@sync
async def test_unknown_host_key_reject_refuses(lab: LabProfile, host: TunnelHost) -> None:
    app = app_for(lab, "lab-new", host=host)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("enter")
        await wait_for_screen(pilot, app, HostKeyScreen, "#reject", 20, "the host-key modal")
        await pilot.pause()
        await pilot.click("#reject")
        await wait_for(pilot, lambda: app.state_of("lab-new")[0] == "failed", 20, "a refusal")
        assert "host key" in app.last_errors["lab-new"].lower()
        assert "host key" in main_text(app, "#tunnel-info").lower()


@sync
async def test_changed_host_key_is_refused_with_both_fingerprints(
    lab: LabProfile, host: TunnelHost
) -> None:
    app = app_for(lab, "lab-changed", host=host)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("enter")
        await wait_for_screen(
            pilot, app, HostKeyChangedScreen, "#close", 20, "the changed-key modal"
        )
        screen = app.screen
        assert isinstance(screen, HostKeyChangedScreen)
        assert screen.question.fingerprint == lab.sshd.host_key_fingerprint()
        assert screen.expected.startswith("SHA256:")
        assert screen.expected != screen.question.fingerprint
        assert screen.line == 2
        assert str(screen.known_hosts).endswith("known_hosts_changed")
        body = str(screen.query_one(".dialog-body").render())
        assert screen.expected in body
        assert screen.question.fingerprint in body
        await pilot.press("escape")
        assert app.state_of("lab-changed")[0] == "failed"


@sync
async def test_passphrase_protected_key_is_asked_for_in_a_modal(
    make_sshd: Callable[..., Sshd], postgres: Postgres, tmp_home: Path, host: TunnelHost
) -> None:
    """The agent cannot ask for a passphrase: with it, the TUI holds that tunnel itself."""
    bastion = make_sshd()
    key, public = make_key(tmp_home / ".ssh" / "keys", "ed25519", passphrase="correct horse")
    bastion.authorize(public)
    known_hosts = tmp_home / ".ssh" / "known_hosts"
    known_hosts.write_text(bastion.host_key_line() + "\n")
    config = tmp_home / "profiles.toml"
    write_profile(
        config,
        "locked",
        bastion=bastion.destination,
        identity_file=key,
        known_hosts=known_hosts,
        endpoint=f"127.0.0.1:{postgres.port}",
        database=postgres.database,
    )
    app = make_app(config, initial_profile="locked", host=host)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("enter")
        await wait_for_screen(pilot, app, SecretScreen, "#secret", 30, "the passphrase prompt")
        await pilot.pause()
        await pilot.press(*"wrong pass", "enter")  # paramiko refuses it; asked again
        await wait_for_screen(pilot, app, SecretScreen, "#secret", 10, "the second prompt")
        await pilot.pause()
        await pilot.press(*"correct horse", "enter")
        await wait_for(pilot, lambda: app.state_of("locked")[0] == "up", 30, "the tunnel")
        port = app.state_of("locked")[1]
        assert port is not None
        with psycopg.connect(postgres.dsn(host="127.0.0.1", port=port)) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
        await pilot.press("q")
        await wait_for_screen(
            pilot,
            app,
            ConfirmScreen,
            "#no",
            5,
            "quit asks: this tunnel is held here, even with the agent",
        )
        await pilot.click("#yes")
        await wait_for(pilot, lambda: not app.is_running, 10, "exit")
    assert not port_open("127.0.0.1", port)


@sync
async def test_hanging_bastion_never_blocks_and_can_be_cancelled(
    lab: LabProfile, hanging: HangingBastion, host: TunnelHost
) -> None:
    app = app_for(lab, "hang", host=host)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("enter")
        await wait_for(pilot, lambda: hanging.accepted, 10, "the TCP connection to the bastion")
        assert app.state_of("hang")[0] == "connecting"
        assert "connecting…" in main_text(app, "#tunnel-info")
        started = time.monotonic()
        await pilot.press("question_mark")
        # At once: well under a second on an idle machine; the bound leaves room for a loaded CI
        # box while staying far below the 60 s the connect would block a careless UI.
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen), 3, "help")
        assert time.monotonic() - started < 3.0
        await pilot.press("escape")
        await pilot.press("c")  # other keys keep working too
        await wait_for(pilot, lambda: app.main is not None and app.main.detail.conn_shown, 1)
        await pilot.press("c")
        started = time.monotonic()
        await pilot.press("enter")  # cancel
        await wait_for(pilot, lambda: app.state_of("hang")[0] == "stopped", 3, "cancel")
        assert time.monotonic() - started < 3.0
        assert "hang" not in app.connecting
        # the worker itself ends promptly too (Tunnel honours the cancel event)
        await wait_for(
            pilot,
            lambda: not [w for w in app.workers if w.name == "tunnel:hang" and w.is_running],
            10,
        )
        assert "hang" not in app.last_errors


@sync
async def test_escape_cancels_connecting(lab: LabProfile, hanging: HangingBastion) -> None:
    app = app_for(lab, "hang")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("enter")
        await wait_for(pilot, lambda: hanging.accepted, 10, "the TCP connection")
        await pilot.click("#btn-toggle")  # the mouse way: the button says Cancel now
        await wait_for(pilot, lambda: app.state_of("hang")[0] == "stopped", 2, "cancel")


COMMENTED = """\
# my profiles — keep this comment
[defaults]
region = "us-east-2"  # trailing comment

# the lab
[profiles.lab]
description = "old"
bastion = "{bastion}"
endpoint = "{endpoint}"
identity_file = "{key}"
known_hosts = "{known_hosts}"
database = "geo"

# another one, untouched
[profiles.other]
endpoint = "db.example.com"
"""


def write_commented(lab: LabProfile) -> None:
    lab.config.write_text(
        COMMENTED.format(
            bastion=lab.sshd.destination,
            endpoint=f"127.0.0.1:{lab.postgres.port}",
            key=lab.identity_file,
            known_hosts=lab.known_hosts,
        )
    )


@sync
async def test_edit_profile_saves_with_comments_kept(lab: LabProfile) -> None:
    write_commented(lab)
    app = app_for(lab)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("e")
        await wait_for_screen(pilot, app, ProfileFormScreen, "#save", 2)
        form = app.screen
        form.query_one("#f-description").value = "new description"  # type: ignore[attr-defined]
        form.query_one("#f-local_port").value = "15433"  # type: ignore[attr-defined]
        await pilot.click("#save")
        await wait_for(pilot, lambda: not isinstance(app.screen, ProfileFormScreen), 2, "save")
        text = lab.config.read_text()
        assert "# my profiles — keep this comment" in text
        assert 'region = "us-east-2"  # trailing comment' in text
        assert "# another one, untouched" in text
        assert 'description = "new description"' in text
        assert "local_port = 15433" in text
        assert prof.load(lab.config).get("lab").local_port == 15433
        assert app.profiles["lab"].description == "new description"
        assert "new description" in main_text(app, "#profile-info")


@sync
async def test_new_profile_validation_names_the_field_then_saves(lab: LabProfile) -> None:
    write_commented(lab)
    app = app_for(lab)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("n")
        await wait_for_screen(pilot, app, ProfileFormScreen, "#save", 2)
        await pilot.press(*"fresh")
        form = app.screen
        form.query_one("#f-bastion").value = "user@"  # type: ignore[attr-defined]
        form.query_one("#f-endpoint").value = "db.internal:5432"  # type: ignore[attr-defined]
        await pilot.press("ctrl+s")
        await pilot.pause()
        error = form.query_one("#err-bastion")
        assert error.display
        assert "bastion" in str(error.render())
        assert "fresh" not in lab.config.read_text()
        form.query_one("#f-bastion").value = "ec2-user@bastion.example.com"  # type: ignore[attr-defined]
        form.query_one("#f-local_port").value = "port"  # type: ignore[attr-defined]
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert "local_port" in str(form.query_one("#err-local_port").render())
        form.query_one("#f-local_port").value = "6543"  # type: ignore[attr-defined]
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: not isinstance(app.screen, ProfileFormScreen), 2, "save")
        saved = prof.load(lab.config).get("fresh")
        assert saved.local_port == 6543
        assert str(saved.bastion) == "ec2-user@bastion.example.com"
        assert "# another one, untouched" in lab.config.read_text()
        assert app.main is not None
        assert app.main.current == "fresh"


@sync
async def test_delete_profile_asks_then_removes_it_keeping_comments(lab: LabProfile) -> None:
    write_commented(lab)
    app = app_for(lab, "other")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("x")
        await wait_for_screen(pilot, app, ConfirmScreen, "#no", 2)
        await pilot.click("#no")
        assert "other" in prof.load(lab.config).profiles
        await pilot.click("#btn-delete")  # the mouse way
        await wait_for_screen(pilot, app, ConfirmScreen, "#no", 2)
        await pilot.click("#yes")
        await wait_for(pilot, lambda: "other" not in app.profiles, 2)
        text = lab.config.read_text()
        assert "[profiles.other]" not in text
        assert "# my profiles — keep this comment" in text
        assert list(prof.load(lab.config).profiles) == ["lab"]


@sync
async def test_password_goes_into_the_keyring(lab: LabProfile, keyring_backend: Any) -> None:
    import keyring

    app = app_for(lab)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("p")
            await wait_for_screen(pilot, app, SecretScreen, "#secret", 2)
            await pilot.press(*"s3cret-pw", "enter")
            await pilot.press(*"s3cret-pX", "enter")  # a typo: refused
            await pilot.pause()
            assert isinstance(app.screen, SecretScreen)
            assert "differ" in str(app.screen.query_one("#secret-error").render())
            app.screen.query_one("#secret2").value = ""  # type: ignore[attr-defined]
            await pilot.click("#secret2")
            await pilot.press(*"s3cret-pw", "enter")
            await wait_for(
                pilot,
                lambda: keyring.get_password("tunnelman", "lab") == "s3cret-pw",
                10,
                "the keyring",
            )
    finally:
        keyring.delete_password("tunnelman", "lab")


@sync
async def test_connection_tabs_show_rendered_text_and_copy_works(lab: LabProfile) -> None:
    lab.write(local_port=15999)
    app = app_for(lab)
    profile = prof.load(lab.config).get("lab")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("c")
        await pilot.pause()
        assert app.main is not None
        assert app.main.detail.conn_shown
        psql = clients.render("psql", profile, 15999)
        assert main_text(app, "#conn-psql").startswith(psql.rstrip("\n"))
        assert "127.0.0.1" in psql
        assert "15999" in psql
        await pilot.press("y")
        assert app.clipboard == psql
        for fmt in ("uri", "pgadmin", "qgis", "arcgis", "jdbc", "sqlalchemy"):
            assert main_text(app, f"#conn-{fmt}").startswith(
                clients.render(fmt, profile, 15999).rstrip("\n")
            )
        await pilot.click("#--content-tab-tab-sqlalchemy")  # the tab in the tab bar
        await pilot.pause()
        assert app.main.detail.conn_format == "sqlalchemy"
        await pilot.click("#btn-copy")
        assert app.clipboard == clients.render("sqlalchemy", profile, 15999)
        assert app.clipboard.startswith("postgresql+psycopg://")


@sync
async def test_write_puts_the_service_entry_in_pg_service_conf(
    lab: LabProfile, tmp_home: Path
) -> None:
    lab.write(local_port=15998)
    app = app_for(lab)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("c")
        await pilot.press("w")
        service = tmp_home / ".pg_service.conf"
        await wait_for(pilot, service.exists, 5, "pg_service.conf")
        text = service.read_text()
        assert "[lab]" in text
        assert "port=15998" in text
        # the pgAdmin and QGIS tabs write their own import files next to the profiles
        assert app.main is not None
        await pilot.click("#--content-tab-tab-pgadmin")
        # The tab becomes active a message later: `w` writes whatever tab is active by then.
        main = app.main
        await wait_for(pilot, lambda: main.detail.conn_format == "pgadmin", 5, "the pgAdmin tab")
        await pilot.press("w")
        servers = lab.config.parent / "pgadmin-servers.json"
        await wait_for(pilot, servers.exists, 5, "servers.json")
        assert '"Port": 15998' in servers.read_text()
        await pilot.click("#--content-tab-tab-qgis")
        await wait_for(pilot, lambda: main.detail.conn_format == "qgis", 5, "the QGIS tab")
        await pilot.click("#btn-write")
        xml = lab.config.parent / "qgis-connections.xml"
        await wait_for(pilot, xml.exists, 5, "the QGIS XML")
        assert "<qgsPgConnections" in xml.read_text()
        assert 'port="15998"' in xml.read_text()


@sync
async def test_quit_with_an_open_tunnel_asks_and_closes_it(lab: LabProfile) -> None:
    app = app_for(lab)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.state_of("lab")[0] == "up", 30, "the tunnel")
        port = app.state_of("lab")[1]
        assert port is not None
        await pilot.press("q")
        await wait_for_screen(pilot, app, ConfirmScreen, "#no", 2, "the quit question")
        await pilot.press("escape")  # stay
        assert app.is_running
        assert port_open("127.0.0.1", port)
        await pilot.press("q")
        await wait_for_screen(pilot, app, ConfirmScreen, "#no", 2)
        await pilot.click("#yes")
        await wait_for(pilot, lambda: not app.is_running, 10, "the app to exit")
    assert not port_open("127.0.0.1", port)


@sync
async def test_agent_tunnels_survive_quit_and_show_up_in_the_next_session(
    lab: LabProfile, agent: AgentHost
) -> None:
    app = app_for(lab, host=agent)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.state_of("lab")[0] == "up", 30, "the tunnel")
        port = app.state_of("lab")[1]
        assert port is not None
        await pilot.press("q")  # no question: the agent keeps it
        await wait_for(pilot, lambda: not app.is_running, 5, "the app to exit")
    assert app.quit_message is not None
    assert "1 tunnel(s) keep running in the agent: lab" in app.quit_message
    assert port_open("127.0.0.1", port)
    assert await asyncio.to_thread(query_through, port, lab)
    # a new TUI session shows the tunnel the agent holds, and can close it
    again = app_for(lab, host=AgentHost(AgentClient()))
    async with again.run_test(size=SIZE) as pilot:
        await wait_for(
            pilot, lambda: again.state_of("lab") == ("up", port), 10, "the agent's tunnel"
        )
        await pilot.pause()
        assert f"127.0.0.1:{port}" in main_text(again, "#tunnel-info")
        await pilot.press("enter")
        await wait_for(pilot, lambda: again.state_of("lab")[0] == "stopped", 10, "closing")
        await wait_for(pilot, lambda: not port_open("127.0.0.1", port), 10, "the port to close")


@sync
async def test_unexpected_worker_error_becomes_a_short_notification(lab: LabProfile) -> None:
    app = app_for(lab)

    class Boom(FakeAws):
        def cluster_status(self, profile: Any) -> Database:
            raise ZeroDivisionError("kaboom")

    app._aws = Boom()
    lab.write(cluster="database-1", region="us-east-1")
    async with app.run_test(size=SIZE) as pilot:
        app.action_reload()
        await pilot.press("r")
        await wait_for(pilot, lambda: "lab" in app.cluster_errors, 5)
        assert "ZeroDivisionError: kaboom" in app.cluster_errors["lab"]
        assert any("kaboom" in str(n.message) for n in app._notifications)
        assert app.is_running
