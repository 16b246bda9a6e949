"""ssh_config and jump hosts: `bastion = "ALIAS"` from ~/.ssh/config in both engines, with the
origin of each value in `check` and `profile show`; a bastion reachable only through a jump host
(network namespaces: the hop in one, the bastion and PostgreSQL in the other), in the default
engine with `jump = …` and with ProxyJump in ssh_config in both engines; a changed host key on the
hop is refused, naming the hop. Real sshds, a real PostgreSQL, the real `ssh -G`."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.cli import RunCli
from tests.conftest import LabProfile
from tests.lab.netns import NetnsPair
from tests.lab.postgres import Postgres
from tests.lab.profiles import query
from tests.lab.sshd import Sshd
from tests.lab.toml_profile import write_profile
from tests.test_agent_support import (
    agent_home,  # noqa: F401 - fixture
    ok,
    status_json,
    up_detached,
)
from tunnelman.core import profiles as prof
from tunnelman.core.errors import ConfigError
from tunnelman.core.ssh import config as ssh_config

HAVE_SSH = shutil.which("ssh") is not None


def write_config(home: Path, text: str) -> Path:
    path = home / ".ssh" / "config"
    path.write_text(text)
    path.chmod(0o600)
    return path


def no_ssh_on_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """PATH without ssh: the built-in reader resolves."""
    empty = tmp_path / "no-ssh-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


GEO = """\
Host other
  Port 1
Host geo-bastion
  HostName 127.0.0.1
  Port {port}
  User {user}
  IdentityFile ~/.ssh/id_geo
  IdentitiesOnly yes
Host *
  ServerAliveInterval 7
  Port 9
"""


# ----------------------------------------------------------------------------- resolving


@pytest.mark.parametrize("resolver", ["ssh -G", "built-in reader"])
def test_a_host_alias_resolves_with_the_line_of_each_value(
    tmp_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, resolver: str
) -> None:
    if resolver == "ssh -G" and not HAVE_SSH:
        pytest.skip("no ssh client")
    if resolver == "built-in reader":
        no_ssh_on_path(monkeypatch, tmp_path)
    path = write_config(tmp_home, GEO.format(port=2222, user="ec2-user"))
    found = ssh_config.resolve("geo-bastion", path)
    assert found.resolver == resolver
    got = {k: (s.value, s.origin) for k, s in found.settings.items()}
    assert got["hostname"] == ("127.0.0.1", "~/.ssh/config line 4")
    assert got["port"] == ("2222", "~/.ssh/config line 5")
    assert got["user"] == ("ec2-user", "~/.ssh/config line 6")
    assert got["identityfile"][1] == "~/.ssh/config line 7"
    assert got["identityfile"][0].endswith(".ssh/id_geo")
    assert got["serveraliveinterval"] == ("7", "~/.ssh/config line 10")
    # An alias the file does not name gets only what `Host *` says.
    other = ssh_config.resolve("db.example.com", path).settings
    assert set(other) == {"port", "serveraliveinterval"}
    assert other["port"].value == "9"
    assert found.named
    assert not ssh_config.resolve("db.example.com", path).named


def test_include_is_followed(tmp_home: Path) -> None:
    extra = tmp_home / ".ssh" / "conf.d"
    extra.mkdir()
    (extra / "geo.conf").write_text("Host geo\n  HostName 10.1.2.3\n  Port 2200\n")
    path = write_config(tmp_home, f"Include {extra}/*.conf\n")
    settings = ssh_config.resolve("geo", path).settings
    assert settings["hostname"].value == "10.1.2.3"
    assert settings["port"].origin == "~/.ssh/conf.d/geo.conf line 3"


def test_match_exec_without_ssh_says_it_cannot_be_evaluated(
    tmp_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_ssh_on_path(monkeypatch, tmp_path)
    path = write_config(
        tmp_home, 'Match exec "test -e /x"\n  Port 2300\nHost geo\n  HostName 10.0.0.9\n'
    )
    found = ssh_config.resolve("geo", path)
    assert "port" not in found.settings
    assert found.settings["hostname"].value == "10.0.0.9"
    assert found.notes == (
        "~/.ssh/config line 1: `Match exec test -e /x` cannot be evaluated without OpenSSH's "
        "ssh (not on PATH); its settings are ignored",
    )


def test_the_profile_wins_and_ssh_config_false_turns_it_off(tmp_home: Path) -> None:
    write_config(tmp_home, GEO.format(port=2222, user="ec2-user"))
    path = tmp_home / "p.toml"
    path.write_text(
        '[profiles.own]\nbastion = "admin@geo-bastion:2022"\nidentity_file = "~/k"\n'
        "keepalive = 30\n"
        '[profiles.bare]\nbastion = "geo-bastion"\n'
        '[profiles.off]\nbastion = "geo-bastion"\nssh_config = false\n'
    )
    sets = prof.load(path)
    own, lines = ssh_config.effective(sets.get("own"))
    assert own.bastion == prof.Bastion("127.0.0.1", "admin", 2022)
    assert own.identity_file == tmp_home / "k"
    assert own.keepalive == 30
    assert "port 2222 in ~/.ssh/config line 5 is overridden by the profile's 2022" in lines
    bare, lines = ssh_config.effective(sets.get("bare"))
    assert bare.bastion == prof.Bastion("127.0.0.1", "ec2-user", 2222)
    assert bare.identity_file == tmp_home / ".ssh" / "id_geo"
    assert "identityfile ~/.ssh/id_geo (from ~/.ssh/config line 7)" in lines
    assert bare.keepalive == 7
    assert "port 2222 (from ~/.ssh/config line 5)" in lines
    # A bastion the file does not name keeps its own values: `Host *` alone changes nothing.
    plain = prof.Profile(name="p", bastion=prof.parse_bastion("db.example.com"))
    unchanged, lines = ssh_config.effective(plain)
    assert (unchanged.bastion, unchanged.keepalive, lines) == (plain.bastion, 15, [])
    off, lines = ssh_config.effective(sets.get("off"))
    assert off.bastion == prof.Bastion("geo-bastion", None, 22)
    assert lines == []


def test_profile_keys_ssh_config_and_jump_are_validated(tmp_home: Path) -> None:
    path = tmp_home / "p.toml"
    path.write_text(
        '[profiles.a]\njump = ["u@hop1:2201", "hop2"]\nssh_config = "~/other_config"\n'
        '[profiles.b]\njump = "hop"\nssh_config = true\n'
    )
    sets = prof.load(path)
    a = sets.get("a")
    assert a.jump == (prof.Bastion("hop1", "u", 2201), prof.Bastion("hop2"))
    assert a.ssh_config == tmp_home / "other_config"
    assert a.to_public_dict()["jump"] == ["u@hop1:2201", "hop2"]
    assert sets.get("b").jump == (prof.Bastion("hop"),)
    path.write_text(
        '[profiles.a]\njump = ["hop1", 3, "bad host:99999"]\n'
        "[profiles.b]\nssh_config = 1\njump = []\n"
    )
    with pytest.raises(prof.ConfigProblems) as caught:
        prof.load(path)
    text = str(caught.value)
    assert "profiles.a.jump[1]: must be a string [user@]host[:port], not an integer" in text
    assert "profiles.b.ssh_config: must be true, false or the path of an ssh_config file" in text
    assert "profiles.b.jump: must name at least one hop" in text
    # A missing ssh_config file is one clear line at use.
    path.write_text('[profiles.c]\nbastion = "x"\nssh_config = "~/nope"\n')
    with pytest.raises(ConfigError, match=r"ssh_config file .*nope does not exist"):
        ssh_config.effective(prof.load(path).get("c"))


# ----------------------------------------------------------------------------- ssh -G runs


def logging_ssh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Put a wrapper first on PATH: the real ssh, behind a script that logs each argv line."""
    real = shutil.which("ssh")
    assert real is not None
    log = tmp_path / "ssh-argv.log"
    log.write_text("")
    shim = tmp_path / "ssh-shim"
    shim.mkdir()
    (shim / "ssh").write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{log}"\nexec "{real}" "$@"\n')
    (shim / "ssh").chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim}{os.pathsep}{os.environ['PATH']}")
    return log


@pytest.mark.skipif(not HAVE_SSH, reason="no ssh client")
@pytest.mark.parametrize(
    ("config", "runs"),
    [
        # A file that names no bastion applies to none: no ssh at all (it used to run twice).
        ("Host *\n  ServerAliveInterval 30\n", 0),
        # `named` comes from the Host lines alone, so a Match block does not make the file apply
        # either: ssh -G's answer would be thrown away, as it was before.
        ("Match all\n  Port 9\nHost *\n  User nobody\n", 0),
        # The bastion's own entry: ssh -G for the file, and once with `-F /dev/null` for ssh's
        # defaults (to tell the file's values from them). Nothing else.
        ("Host lab-bastion\n  HostName 127.0.0.1\n  Port {port}\n  User {user}\n"
         "  IdentityFile {key}\nHost *\n  ServerAliveInterval 30\n", 2),
    ],
    ids=["host-star-only", "match-only", "names-the-bastion"],
)  # fmt: skip
def test_one_tunnel_start_runs_ssh_g_only_for_a_bastion_the_file_names(
    run_cli: RunCli,
    lab_profile: LabProfile,
    agent_home: Path,  # noqa: F811 - the imported fixture
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    config: str,
    runs: int,
) -> None:
    server = lab_profile.sshd
    key = lab_profile.identity_file
    path = write_config(agent_home, config.format(port=server.port, user=server.user, key=key))
    if runs:  # `bastion = "lab-bastion"` and nothing else about SSH
        lab_profile.write(bastion="lab-bastion", identity_file=None, password="none")
    else:
        lab_profile.write(password="none")
    log = logging_ssh(tmp_path, monkeypatch)  # the agent `up` starts inherits this PATH
    port = up_detached("lab")
    assert query(port, lab_profile.postgres) == 1
    ok(run_cli("down", "lab"))
    g_runs = [argv for argv in log.read_text().splitlines() if argv.startswith("-G")]
    expected = [f"-G -F {path} -- lab-bastion", f"-G -F {os.devnull} -- lab-bastion"]
    assert g_runs == (expected if runs else []), log.read_text()


# ----------------------------------------------------------------------------- the lab


def alias_profile(home: Path, server: Sshd, pg: Postgres, name: str, **extra: Any) -> None:
    """`bastion = "geo-bastion"` and nothing else about SSH; the rest is in ~/.ssh/config."""
    assert server.key_path is not None
    key = home / ".ssh" / "id_geo"
    shutil.copyfile(server.key_path, key)
    key.chmod(0o600)
    known = home / ".ssh" / "known_hosts"
    with known.open("a") as fh:
        fh.write(server.host_key_line() + "\n")
    write_config(home, GEO.format(port=server.port, user=server.user))
    write_profile(
        os.environ["TUNNELMAN_CONFIG"],
        name,
        bastion="geo-bastion",
        endpoint=f"{pg.host}:{pg.port}",
        database=pg.database,
        user=pg.user,
        password="none",
        **extra,
    )


@pytest.mark.usefixtures("agent_home")
@pytest.mark.parametrize("engine", ["sshtunnel", "openssh"])
def test_up_and_check_with_only_an_alias_in_both_engines(
    run_cli: RunCli, tmp_home: Path, make_sshd: Callable[..., Sshd], postgres: Postgres, engine: str
) -> None:
    if engine == "openssh" and not HAVE_SSH:
        pytest.skip("no ssh client")
    server = make_sshd()
    assert server.port != 22
    alias_profile(tmp_home, server, postgres, "geo", engine=engine)
    port = up_detached("geo")
    assert query(port, postgres, "select 7") == 7
    assert [t["state"] for t in status_json()] == ["up"]
    ok(run_cli("down", "geo"))
    check = run_cli("check", "geo")
    text = check.stdout
    assert f"port {server.port} (from ~/.ssh/config line 5)" in text, text
    assert f"user {server.user} (from ~/.ssh/config line 6)" in text
    assert "hostname 127.0.0.1 (from ~/.ssh/config line 4)" in text
    assert "identityfile ~/.ssh/id_geo (from ~/.ssh/config line 7)" in text
    assert f"127.0.0.1:{server.port} answers" in text
    assert "✓ log in to bastion" in text
    assert "✓ open forward" in text
    show = ok(run_cli("profile", "show", "geo")).stdout
    assert f"port {server.port} (from ~/.ssh/config line 5)" in show


@pytest.fixture
def hidden_bastion(
    netns_pair: NetnsPair,
    make_sshd: Callable[..., Sshd],
    make_postgres: Callable[..., Postgres],
    tmp_home: Path,
) -> tuple[Sshd, Sshd, Postgres]:
    """(hop, bastion, db): the hop reachable from here, the bastion and db only from the hop."""
    net = netns_pair
    hop = make_sshd(host=net.bastion_addr, port=22, netns=net.bastion.name)
    bastion = make_sshd(host=net.db_addr, port=22, netns=net.db.name)
    pg = make_postgres(host=net.db_addr, port=5432, netns=net.db.name)
    assert hop.key_path is not None
    assert hop.public_key is not None
    bastion.authorize(hop.public_key)  # one key for both, as the profile has one identity
    key = tmp_home / ".ssh" / "id_lab"
    shutil.copyfile(hop.key_path, key)
    key.chmod(0o600)
    known = tmp_home / ".ssh" / "known_hosts"
    known.write_text(hop.host_key_line() + "\n" + bastion.host_key_line() + "\n")
    return hop, bastion, pg


def _db_keys(pg: Postgres) -> dict[str, Any]:
    return {
        "endpoint": f"{pg.host}:{pg.port}",
        "database": pg.database,
        "user": pg.user,
        "password": "none",
    }


@pytest.mark.usefixtures("agent_home")
def test_jump_key_reaches_a_bastion_only_the_hop_can_reach(
    run_cli: RunCli, hidden_bastion: tuple[Sshd, Sshd, Postgres], tmp_home: Path
) -> None:
    hop, bastion, pg = hidden_bastion
    # Without the hop: the bastion cannot be reached from here at all.
    write_profile(
        os.environ["TUNNELMAN_CONFIG"],
        "direct",
        bastion=bastion.destination,
        identity_file=str(tmp_home / ".ssh" / "id_lab"),
        connect_timeout=2,
        **_db_keys(pg),
    )
    direct = run_cli("up", "direct", "--detach")
    assert direct.returncode != 0
    ok(
        run_cli(
            "profile", "add", "vpc", "--endpoint", f"{pg.host}:{pg.port}",
            "--bastion", bastion.destination, "--jump", hop.destination,
            "--identity-file", str(tmp_home / ".ssh" / "id_lab"),
            "--database", pg.database, "--user", pg.user, "--password", "none",
        )
    )  # fmt: skip
    show = ok(run_cli("profile", "show", "vpc")).stdout
    assert f"\njump                 {hop.user}@{hop.host}\n" in show, show
    if shutil.which("psql"):
        pgpass = tmp_home / ".pgpass"
        pgpass.write_text(f"*:*:*:{pg.user}:{pg.password}\n")
        pgpass.chmod(0o600)
        # One-shot: an in-process tunnel through the hop, closed when psql exits.
        psql = ok(run_cli("psql", "vpc", "-Atc", "select inet_server_addr()::text"))
        assert psql.stdout.strip() == f"{pg.host}/32"
    port = up_detached("vpc")
    assert query(port, pg, "select inet_server_addr()::text") == f"{pg.host}/32"
    check = run_cli("check", "vpc").stdout
    assert f"through {hop.user}@{hop.host}" in check, check
    assert "✓ log in to bastion" in check


def test_reconnect_goes_through_the_jump_host(
    hidden_bastion: tuple[Sshd, Sshd, Postgres], tmp_home: Path
) -> None:
    from tunnelman.core.tunnel import TunnelState, open_tunnel

    hop, bastion, pg = hidden_bastion
    path = write_profile(
        os.environ["TUNNELMAN_CONFIG"],
        "vpc",
        bastion=bastion.destination,
        jump=[hop.destination],
        identity_file=str(tmp_home / ".ssh" / "id_lab"),
        **_db_keys(pg),
    )
    profile = prof.load(path).get("vpc")
    with open_tunnel(profile, local_port=0, supervise=True) as tunnel:  # started by `with`
        port = tunnel.local_port
        assert port is not None
        assert query(port, pg) == 1
        hop.kill_sessions()  # the hop drops: the bastion's session under it goes too
        deadline = 30.0
        start = time.monotonic()
        while tunnel.status.reconnects < 1:
            assert time.monotonic() - start < deadline, tunnel.status
            time.sleep(0.1)
        assert tunnel.status.state == TunnelState.UP
        assert query(port, pg) == 1
        assert hop.sessions()
    # Closing the tunnel closes the hop's connection under it too.
    start = time.monotonic()
    while hop.sessions():
        assert time.monotonic() - start < 10, "the jump host's session outlived the tunnel"
        time.sleep(0.1)


@pytest.mark.usefixtures("agent_home")
@pytest.mark.parametrize("engine", ["sshtunnel", "openssh"])
def test_proxyjump_from_ssh_config_in_both_engines(
    run_cli: RunCli, hidden_bastion: tuple[Sshd, Sshd, Postgres], tmp_home: Path, engine: str
) -> None:
    if engine == "openssh" and not HAVE_SSH:
        pytest.skip("no ssh client")
    hop, bastion, pg = hidden_bastion
    known = tmp_home / ".ssh" / "known_hosts"
    key = tmp_home / ".ssh" / "id_lab"
    # ssh's -J child finds `~` from the passwd entry, not this test's HOME: full paths.
    write_config(
        tmp_home,
        f"Host db-bastion\n  HostName {bastion.host}\n  User {bastion.user}\n"
        f"  ProxyJump the-hop\n  IdentityFile {key}\n"
        f"Host the-hop\n  HostName {hop.host}\n  User {hop.user}\n"
        f"  IdentityFile {key}\n  IdentitiesOnly yes\n"
        f"Host *\n  UserKnownHostsFile {known}\n  BatchMode yes\n  IdentityAgent none\n",
    )
    write_profile(
        os.environ["TUNNELMAN_CONFIG"], "pj", bastion="db-bastion", engine=engine, **_db_keys(pg)
    )
    port = up_detached("pj")
    assert query(port, pg, "select inet_server_addr()::text") == f"{pg.host}/32"
    check = run_cli("check", "pj").stdout
    assert "proxyjump the-hop (from ~/.ssh/config line 4)" in check, check


@pytest.mark.parametrize("engine", ["sshtunnel", "openssh"])
def test_a_changed_host_key_on_the_jump_host_is_refused(
    run_cli: RunCli, hidden_bastion: tuple[Sshd, Sshd, Postgres], tmp_home: Path, engine: str
) -> None:
    if engine == "openssh" and not HAVE_SSH:
        pytest.skip("no ssh client")
    hop, bastion, pg = hidden_bastion
    hop.rotate_host_key()
    write_profile(
        os.environ["TUNNELMAN_CONFIG"],
        "vpc",
        bastion=bastion.destination,
        jump=hop.destination,
        engine=engine,
        identity_file=str(tmp_home / ".ssh" / "id_lab"),
        **_db_keys(pg),
    )
    result = run_cli("up", "vpc", "--accept-new-host-key")
    assert result.returncode != 0
    line = result.stderr.strip().splitlines()[-1]
    assert f"the host key of jump host {hop.host} has CHANGED" in line, result.stderr
    assert "hop 1 of 1 on the way to bastion" in line or engine == "openssh"
    assert bastion.log_text().count("Accepted publickey") == 0
