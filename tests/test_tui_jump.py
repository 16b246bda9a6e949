"""The TUI through a jump host: a bastion reachable only via a hop (network namespaces, from
tests/test_ssh_config.py's `hidden_bastion`), opened and closed from the TUI by keys as a person
would, held by the real agent (the TUI's default), with a real psycopg query through the port.
Once with `jump = "user@hop:port"` in the profile (default engine), once with ProxyJump from
~/.ssh/config and `bastion = "ALIAS"` as the only SSH key in the profile.

Without network namespaces these fail in CI and skip locally (`tests.lab.need`, via the
`netns_pair` fixture)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import psycopg

from tests.lab.ports import port_open
from tests.lab.postgres import Postgres
from tests.lab.sshd import Sshd
from tests.lab.toml_profile import write_profile
from tests.test_ssh_config import _db_keys, hidden_bastion, write_config  # noqa: F401 - fixture
from tests.test_tui_lab import SIZE, agent  # noqa: F401 - fixture
from tests.tui_support import main_text, sync, wait_for
from tunnelman.tui.app import make_app
from tunnelman.tui.hosts import AgentHost


def server_address(port: int, pg: Postgres) -> str:
    """The database's own address as it sees the connection: proof the forward reached it."""
    with psycopg.connect(pg.dsn(host="127.0.0.1", port=port, connect_timeout=10)) as conn:
        row = conn.execute("select inet_server_addr()::text").fetchone()
    assert row is not None
    return str(row[0])


async def open_query_close(name: str, host: AgentHost, hop: Sshd, pg: Postgres) -> None:
    """Enter opens `name`; it is `up` with its port in the list and the detail pane; a query
    through it reaches the hidden database; enter closes it, the port and the hop's session."""
    app = make_app(Path(os.environ["TUNNELMAN_CONFIG"]), initial_profile=name, host=host)
    async with app.run_test(size=SIZE) as pilot:
        assert app.main is not None
        assert app.main.current == name
        assert not hop.sessions()
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.state_of(name)[0] == "up", 45, "the tunnel to be up")
        port = app.state_of(name)[1]
        assert port is not None
        await pilot.pause()
        detail = main_text(app, "#tunnel-info")
        assert f"127.0.0.1:{port}" in detail, detail
        assert "● up" in detail
        row = app.main.table.get_row(name)
        assert (str(row[1]), str(row[2])) == ("● up", str(port))
        assert await asyncio.to_thread(server_address, port, pg) == f"{pg.host}/32"
        assert hop.sessions(), "the tunnel does not go through the jump host"
        held = await asyncio.to_thread(host.statuses)
        assert (list(held), host.local_names()) == ([name], [])  # the agent holds it
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.state_of(name)[0] == "stopped", 15, "the tunnel to close")
        await wait_for(pilot, lambda: not port_open("127.0.0.1", port), 10, "the port to close")
        await wait_for(pilot, lambda: not hop.sessions(), 10, "the hop's session to end")
        assert name not in await asyncio.to_thread(host.statuses)


@sync
async def test_tui_opens_and_closes_a_tunnel_through_a_jump_key(
    hidden_bastion: tuple[Sshd, Sshd, Postgres],  # noqa: F811 - the imported fixture
    tmp_home: Path,
    agent: AgentHost,  # noqa: F811 - the imported fixture
) -> None:
    hop, bastion, pg = hidden_bastion
    write_profile(
        os.environ["TUNNELMAN_CONFIG"],
        "vpc",
        bastion=bastion.destination,
        jump=f"{hop.user}@{hop.host}:{hop.port}",
        identity_file=str(tmp_home / ".ssh" / "id_lab"),
        **_db_keys(pg),
    )
    await open_query_close("vpc", agent, hop, pg)
    assert bastion.log_text().count("Accepted publickey") == 1


@sync
async def test_tui_opens_and_closes_a_tunnel_through_proxyjump_in_ssh_config(
    hidden_bastion: tuple[Sshd, Sshd, Postgres],  # noqa: F811 - the imported fixture
    tmp_home: Path,
    agent: AgentHost,  # noqa: F811 - the imported fixture
) -> None:
    hop, bastion, pg = hidden_bastion
    key = tmp_home / ".ssh" / "id_lab"
    write_config(
        tmp_home,
        f"Host db-bastion\n  HostName {bastion.host}\n  User {bastion.user}\n"
        f"  ProxyJump the-hop\n  IdentityFile {key}\n"
        f"Host the-hop\n  HostName {hop.host}\n  User {hop.user}\n  IdentityFile {key}\n",
    )
    write_profile(os.environ["TUNNELMAN_CONFIG"], "pj", bastion="db-bastion", **_db_keys(pg))
    await open_query_close("pj", agent, hop, pg)
    assert bastion.log_text().count("Accepted publickey") == 1
