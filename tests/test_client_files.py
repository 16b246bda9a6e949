"""`conn --write`: idempotent upserts into pg_service.conf, .pgpass, servers.json and QGIS XML."""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from xml.etree import ElementTree

import pytest

from tunnelman.core import client_files as cf
from tunnelman.core import clients
from tunnelman.core.errors import ClientError
from tunnelman.core.profiles import Endpoint, Profile

PROD = Profile(
    name="prod",
    endpoint=Endpoint("database-1.cluster-abc.us-east-2.rds.amazonaws.com"),
    database="geo",
    user="postgres",
    sslmode="require",
)
VERIFY = Profile(
    name="prod",
    endpoint=Endpoint("database-1.cluster-abc.us-east-2.rds.amazonaws.com"),
    database="geo",
    user="postgres",
    sslmode="verify-full",
)

SERVICE_FILE = """\
# my services
[staging]
host=staging.internal
dbname=geo

[prod]
host=old.example.com
# an old comment inside prod
port=5432

# the local one, below prod
[local]
host=/var/run/postgresql
"""


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ----------------------------------------------------------------------------- pg_service.conf


def test_service_replaces_only_its_section() -> None:
    section = clients.service_section(PROD, clients.conn_settings(PROD, 5433))
    new, action = cf.merge_service(SERVICE_FILE, "prod", section)
    assert action == "updated"
    assert new.startswith("# my services\n[staging]\nhost=staging.internal\ndbname=geo\n\n[prod]\n")
    assert "old.example.com" not in new
    assert "an old comment inside prod" not in new
    # Comments and blank lines after the section's last setting belong to what follows.
    assert "\n\n# the local one, below prod\n[local]\nhost=/var/run/postgresql\n" in new
    assert "host=127.0.0.1\nport=5433\ndbname=geo\nuser=postgres\nsslmode=require\n" in new
    again, action = cf.merge_service(new, "prod", section)
    assert (again, action) == (new, "unchanged")


def test_service_appends_a_new_section() -> None:
    section = clients.service_section(PROD, clients.conn_settings(PROD, 5433))
    new, action = cf.merge_service("[other]\nhost=x\n", "prod", section)
    assert action == "added"
    assert new.startswith("[other]\nhost=x\n\n[prod]\n")
    assert cf.merge_service("", "prod", section)[0].startswith("[prod]\n")


def test_write_service_keeps_backup_and_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "pg_service.conf"
    path.write_text(SERVICE_FILE)
    path.chmod(0o644)
    first = cf.write_service(PROD, 5433, path=path)
    assert first.action == "updated"
    assert first.backup == tmp_path / "pg_service.conf.bak"
    assert first.backup.read_text() == SERVICE_FILE
    assert _mode(first.backup) == 0o600
    assert _mode(path) == 0o644  # the user's mode is kept
    written = path.read_text()
    second = cf.write_service(PROD, 5433, path=path)
    assert second.action == "unchanged"
    assert path.read_text() == written
    assert first.backup.read_text() == SERVICE_FILE  # an unchanged write leaves the backup alone
    third = cf.write_service(PROD, 6000, path=path)
    assert third.action == "updated"
    assert "port=6000" in path.read_text()
    assert first.backup.read_text() == written


def test_write_service_default_path(tmp_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = cf.write_service(PROD, 5433)
    assert result.path == tmp_home / ".pg_service.conf"
    assert result.action == "added"
    assert result.backup is None
    custom = tmp_home / "elsewhere.conf"
    monkeypatch.setenv("PGSERVICEFILE", str(custom))
    assert cf.write_service(PROD, 5433).path == custom


def test_write_through_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "dotfiles" / "pg_service.conf"
    real.parent.mkdir()
    real.write_text("[other]\nhost=x\n")
    real.chmod(0o644)
    link = tmp_path / ".pg_service.conf"
    link.symlink_to(real)
    result = cf.write_service(PROD, 5433, path=link)
    assert link.is_symlink()
    assert "[prod]" in real.read_text()
    # the documented policy: the target is rewritten in place, its mode kept, .bak beside it
    assert result.path == real
    assert result.link == link
    assert result.backup == real.with_name("pg_service.conf.bak")
    assert result.backup.read_text() == "[other]\nhost=x\n"
    assert _mode(real) == 0o644
    assert not (tmp_path / ".pg_service.conf.bak").exists()
    line = result.describe()
    assert f"{real}: added the entry" in line
    assert f"through the symlink {link}" in line
    again = cf.write_service(PROD, 5433, path=link)
    assert again.action == "unchanged"
    assert f"through the symlink {link}" in again.describe()


def test_write_pgpass_through_a_symlink_is_0600(tmp_path: Path) -> None:
    real = tmp_path / "dotfiles" / "pgpass"
    real.parent.mkdir()
    real.write_text("other:1:*:u:p\n")
    real.chmod(0o644)
    link = tmp_path / ".pgpass"
    link.symlink_to("dotfiles/pgpass")
    result = cf.write_pgpass(PROD, 5433, "pw", path=link)
    assert link.is_symlink()
    assert _mode(real) == 0o600  # libpq ignores a passfile others can read
    assert result.backup == real.with_name("pgpass.bak")
    assert _mode(result.backup) == 0o600


# ----------------------------------------------------------------------------- refused targets


def _writers(path: Path) -> dict[str, Callable[[], object]]:
    return {
        "pg-service": lambda: cf.write_service(PROD, 5433, path=path),
        "pgpass": lambda: cf.write_pgpass(PROD, 5433, "pw", path=path),
        "pgadmin": lambda: cf.write_pgadmin(PROD, 5433, path),
        "qgis-xml": lambda: cf.write_qgis_xml(PROD, 5433, path),
    }


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file types")
def test_every_writer_refuses_non_regular_targets(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # reading it would block until a writer comes: it must not be opened
    to_null = tmp_path / "to-null"
    to_null.symlink_to(os.devnull)
    (tmp_path / "loop").symlink_to("loop")
    plain = tmp_path / "plain"
    plain.write_text("keep")
    cases = {
        Path(os.devnull): "is a character device, not a regular file",
        fifo: "is a FIFO (named pipe), not a regular file",
        to_null: f"a symlink to {os.devnull}, which is a character device",
        tmp_path / "loop": "a symlink loop",
        plain / "servers.json": "a parent of it is not a directory",
        tmp_path: "is a directory, not a regular file",
    }
    for path, reason in cases.items():
        for fmt, write in _writers(path).items():
            with pytest.raises(ClientError) as info:
                write()
            assert reason in str(info.value), (fmt, str(info.value))
            assert "\n" not in str(info.value)
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert plain.read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "loop", "plain", "to-null"]


@pytest.mark.parametrize("fmt", ["pg-service", "pgpass", "pgadmin", "qgis-xml"])
def test_a_bak_that_is_a_directory_or_a_link_stops_the_write(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / "target"
    original = {
        "pg-service": SERVICE_FILE,
        "pgpass": "other:1:*:u:p\n",
        "pgadmin": '{"Servers": {}}\n',
        "qgis-xml": QGIS_EXPORT,
    }[fmt]
    path.write_text(original)
    bak = tmp_path / "target.bak"
    bak.mkdir()
    with pytest.raises(ClientError) as info:
        _writers(path)[fmt]()
    message = str(info.value)
    assert message.startswith(f"{path}: left as it was: {bak}: is a directory"), message
    assert "move that away" in message
    assert path.read_text() == original
    bak.rmdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("not yours to overwrite")
    bak.symlink_to(elsewhere)
    with pytest.raises(ClientError, match="is a symlink; tunnelman does not write through it"):
        _writers(path)[fmt]()
    assert path.read_text() == original
    assert elsewhere.read_text() == "not yours to overwrite"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "target", "target.bak"]


# ----------------------------------------------------------------------------- .pgpass


def test_pgpass_fields_round_trip() -> None:
    line = clients.pgpass_line("h", 1, "d:b", "u\\x", "p:a:ss\\")
    assert cf.split_pgpass(line) == ["h", "1", "d:b", "u\\x", "p:a:ss\\"]


def test_pgpass_upsert_keyed_by_host_port_db_user() -> None:
    text = (
        "# my passwords\n"
        "db.example.com:5432:*:me:mine\n"
        "127.0.0.1:5433:geo:postgres:old\n"
        "127.0.0.1:5433:geo:other:keep\n"
    )
    new, action = cf.merge_pgpass(text, "127.0.0.1:5433:geo:postgres:new")
    assert action == "updated"
    assert new == text.replace(":old\n", ":new\n")
    assert cf.merge_pgpass(new, "127.0.0.1:5433:geo:postgres:new") == (new, "unchanged")
    added, action = cf.merge_pgpass(new, "127.0.0.1:5434:geo:postgres:x")
    assert action == "added"
    assert added == new + "127.0.0.1:5434:geo:postgres:x\n"


def test_write_pgpass_is_0600_with_a_0600_backup(tmp_path: Path) -> None:
    path = tmp_path / ".pgpass"
    path.write_text("other:1:*:u:p\n")
    path.chmod(0o644)  # libpq would ignore this file: writing fixes it
    result = cf.write_pgpass(PROD, 5433, "s3cr:t", path=path)
    assert result.action == "added"
    assert _mode(path) == 0o600
    assert result.backup is not None
    assert _mode(result.backup) == 0o600
    assert path.read_text() == "other:1:*:u:p\n127.0.0.1:5433:geo:postgres:s3cr\\:t\n"
    assert cf.write_pgpass(PROD, 5433, "s3cr:t", path=path).action == "unchanged"


def test_write_pgpass_verify_uses_the_endpoint_name(tmp_path: Path) -> None:
    """libpq matches .pgpass against `host` (the endpoint), not hostaddr."""
    path = tmp_path / ".pgpass"
    cf.write_pgpass(VERIFY, 5433, "pw", path=path)
    assert (
        path.read_text()
        == "database-1.cluster-abc.us-east-2.rds.amazonaws.com:5433:geo:postgres:pw\n"
    )


def test_write_pgpass_default_path(tmp_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert cf.write_pgpass(PROD, 5433, "pw").path == tmp_home / ".pgpass"
    monkeypatch.setenv("PGPASSFILE", str(tmp_home / "pw.conf"))
    assert cf.write_pgpass(PROD, 5433, "pw").path == tmp_home / "pw.conf"


# ----------------------------------------------------------------------------- pgAdmin


def test_pgadmin_upsert_keeps_other_servers(tmp_path: Path) -> None:
    path = tmp_path / "servers.json"
    others = {
        "Servers": {
            "1": {"Name": "mine", "Group": "Servers", "Host": "h", "Port": 5432},
            "7": {"Name": "prod", "Group": "Servers", "Host": "other-prod", "Port": 5432},
        }
    }
    path.write_text(json.dumps(others))
    assert cf.write_pgadmin(PROD, 5433, path).action == "added"
    doc = json.loads(path.read_text())
    assert doc["Servers"]["1"] == others["Servers"]["1"]
    assert doc["Servers"]["7"] == others["Servers"]["7"]  # same Name, another Group: not ours
    assert doc["Servers"]["8"]["Name"] == "prod"
    assert doc["Servers"]["8"]["Group"] == "tunnelman"
    assert doc["Servers"]["8"]["Port"] == 5433
    assert cf.write_pgadmin(PROD, 5433, path).action == "unchanged"
    assert cf.write_pgadmin(PROD, 6000, path).action == "updated"
    doc = json.loads(path.read_text())
    assert sorted(doc["Servers"]) == ["1", "7", "8"]
    assert doc["Servers"]["8"]["Port"] == 6000


def test_pgadmin_new_file_and_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "new" / "servers.json"
    cf.write_pgadmin(PROD, 5433, path, password_file="/home/ana/.pgpass")
    doc = json.loads(path.read_text())
    assert list(doc["Servers"]) == ["1"]
    assert doc["Servers"]["1"]["ConnectionParameters"]["passfile"] == "/home/ana/.pgpass"
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ClientError, match="not a pgAdmin servers file"):
        cf.write_pgadmin(PROD, 5433, bad)
    bad.write_text("{nope")
    with pytest.raises(ClientError, match="not valid JSON"):
        cf.write_pgadmin(PROD, 5433, bad)


# ----------------------------------------------------------------------------- QGIS XML

QGIS_EXPORT = """\
<!DOCTYPE connections>
<qgsPgConnections version="1.0">
    <!-- exported by QGIS -->
    <postgis estimatedMetadata="false" saveUsername="true" savePassword="false" sslmode="SslDisable" port="5432" username="me" name="local" host="localhost" service="" database="gis"/>
    <postgis estimatedMetadata="false" saveUsername="false" savePassword="false" sslmode="SslPrefer" port="5432" name="prod" host="old" service="" database="geo"/>
</qgsPgConnections>
"""


def test_qgis_xml_upsert(tmp_path: Path) -> None:
    path = tmp_path / "pg.xml"
    path.write_text(QGIS_EXPORT)
    assert cf.write_qgis_xml(PROD, 5433, path).action == "updated"
    text = path.read_text()
    assert text.startswith("<!DOCTYPE connections>\n<qgsPgConnections")
    assert "<!-- exported by QGIS -->" in text
    root = ElementTree.fromstring(text)
    assert [e.get("name") for e in root] == ["local", "prod"]
    assert root[0].attrib == ElementTree.fromstring(QGIS_EXPORT)[0].attrib
    assert root[1].get("host") == "127.0.0.1"
    assert root[1].get("port") == "5433"
    assert cf.write_qgis_xml(PROD, 5433, path).action == "unchanged"
    other = Profile(name="stage", database="geo", user="u")
    assert cf.write_qgis_xml(other, 5434, path).action == "added"
    root = ElementTree.fromstring(path.read_text())
    assert [e.get("name") for e in root] == ["local", "prod", "stage"]


def test_qgis_xml_new_file_and_wrong_root(tmp_path: Path) -> None:
    path = tmp_path / "pg.xml"
    cf.write_qgis_xml(PROD, 5433, path)
    root = ElementTree.fromstring(path.read_text())
    assert root.tag == "qgsPgConnections"
    assert [e.get("name") for e in root] == ["prod"]
    wrong = tmp_path / "wms.xml"
    wrong.write_text('<!DOCTYPE connections>\n<qgsWMSConnections version="1.0"/>\n')
    with pytest.raises(ClientError, match="not <qgsPgConnections>"):
        cf.write_qgis_xml(PROD, 5433, wrong)


@pytest.mark.parametrize("odd", ["\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029", "\r"])
def test_merge_pgpass_splits_lines_only_at_newlines(odd: str) -> None:
    """Found by tests/fuzz: str.splitlines broke a line at U+2028 (and \\x0b, \\x0c, \\x85 …),
    so another entry's password holding one was rewritten, and a repeated write was 'updated'."""
    other = f"10.0.0.1:5432:db:u:pa{odd}ss"
    text = f"# mine\n{other}\r\n"
    new, action = cf.merge_pgpass(text, f"127.0.0.1:5433:geo:postgres:x{odd}y")
    assert action == "added"
    assert new == f"# mine\n{other}\n127.0.0.1:5433:geo:postgres:x{odd}y\n"
    assert cf.merge_pgpass(new, f"127.0.0.1:5433:geo:postgres:x{odd}y") == (new, "unchanged")
    service, _ = cf.merge_service(f"[a]\nuser=b{odd}c\n", "z", ["[z]", "user=y"])
    assert f"user=b{odd}c\n" in service


def test_qgis_xml_second_identical_write_is_unchanged() -> None:
    """Found by tests/fuzz: a user named `"` was written as '"' first, then as "&quot;"."""
    profile = Profile(name="q", user='"', database="d")
    element = clients.qgis_element_xml(profile, clients.conn_settings(profile, 5433))
    first, _ = cf.merge_qgis_xml("", "q", element)
    assert cf.merge_qgis_xml(first, "q", element) == (first, "unchanged")
    assert ElementTree.fromstring(first).find("postgis").get("username") == '"'  # type: ignore[union-attr]
