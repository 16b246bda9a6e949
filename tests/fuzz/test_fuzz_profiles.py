"""Fuzz: profile files through the real loader, then every renderer and client-file writer.

Invariants: a file loads or raises a `TunnelmanError` (never another exception, never a hang);
every profile that loads renders in every `conn` format without an exception other than
`TunnelmanError`, and what it renders parses back with the client's parser where Python has one
(libpq's own conninfo parser through psycopg, urllib, shlex, configparser, json, xml.etree, ast,
SQLAlchemy's URL parser) with the database and user the profile named; the writers of
`core.client_files` write into a fresh file and into one that holds another entry, a second
write changes nothing, and the files parse back.
"""

from __future__ import annotations

import ast
import configparser
import json
import os
import shlex
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg.conninfo import conninfo_to_dict

from tests.fuzz import strategies as fs
from tests.fuzz.budget import count, examples
from tunnelman.core import client_files, clients, profiles
from tunnelman.core.errors import TunnelmanError
from tunnelman.core.profiles import Profile, ProfileSet

pytestmark = pytest.mark.fuzz

# The writers fsync every file; on a RAM disk that costs nothing, so more examples fit the budget.
_SHM = Path("/dev/shm")
FAST_TMP: str | None = str(_SHM) if _SHM.is_dir() and os.access(_SHM, os.W_OK) else None

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = (ROOT / "profiles.example.toml").read_bytes()
_SEED_DOCS: list[dict[str, Any]] = [
    {"profiles": {"a": {"bastion": "u@h", "endpoint": "db:5433", "local_port": 5433}}},
    {"defaults": {"sslmode": "verify-full"}, "profiles": {"b": {"endpoint": "e.x", "user": "u"}}},
]
SEEDS = [EXAMPLE, *(fs.document_text(d).encode() for d in _SEED_DOCS)]


def load_bytes(directory: Path, data: bytes) -> ProfileSet | None:
    """The loaded set, or None when the loader refused the file (with a TunnelmanError)."""
    path = directory / "profiles.toml"
    path.write_bytes(data)
    count("profile files")
    try:
        loaded = profiles.load(path, missing_ok=False)
    except TunnelmanError as exc:
        count("profile files refused (TunnelmanError)")
        message = str(exc)
    else:
        count("profile files loaded")
        count("profiles loaded", len(loaded))
        return loaded
    assert message.strip(), "an error without a message"
    return None


# ----------------------------------------------------------------------------- parse back


def _pgpass_fields(line: str) -> list[str]:
    return client_files.split_pgpass(line)


def check_rendered(fmt: str, text: str, profile: Profile, s: clients.ConnSettings) -> None:
    """What each client would read, read back with the nearest parser Python has."""
    body = [ln for ln in text.split("\n") if ln and not ln.startswith(("#", ";"))]
    if fmt == "dsn":
        got = conninfo_to_dict(text.strip())
        assert (got["dbname"], got["user"], got["port"]) == (s.dbname, s.user, str(s.port))
    elif fmt == "psql":
        words = shlex.split(text)
        assert words[0] == "psql", words
        assert len(words) == 2, words
        assert conninfo_to_dict(words[1])["dbname"] == s.dbname
    elif fmt == "uri":
        got = conninfo_to_dict(text.strip())
        assert (got["dbname"], got["user"], got["port"]) == (s.dbname, s.user, str(s.port))
        assert got.get("sslrootcert") == s.sslrootcert
    elif fmt == "env":
        exports = {}
        for line in body:
            words = shlex.split(line)
            if words[0] == "export":
                name, _, value = words[1].partition("=")
                exports[name] = value
        assert exports["PGDATABASE"] == s.dbname
        assert exports["PGUSER"] == s.user
    elif fmt == "pgpass":
        fields = _pgpass_fields(body[-1])
        want = [s.host, str(s.port), s.dbname, s.user]
        assert [f for f, w in zip(fields, want, strict=False) if w != "*"] == [
            w for w in want if w != "*"
        ]
    elif fmt == "pg-service":
        parser = configparser.ConfigParser(interpolation=None)
        parser.read_string(text)
        section = parser[s.name]
        assert section["dbname"] == s.dbname
        assert section["user"] == s.user
    elif fmt == "pgadmin":
        server = json.loads(text)["Servers"]["1"]
        assert server["Name"] == s.name
        assert server["MaintenanceDB"] == s.dbname
    elif fmt == "dbeaver":
        conn = json.loads(text)["connections"][f"tunnelman-{s.name}"]
        assert conn["configuration"]["database"] == s.dbname
        assert conn["configuration"]["user"] == s.user
    elif fmt == "qgis-xml":
        root = ET.fromstring(text)
        element = root.find("postgis")
        assert element is not None
        assert element.get("name") == s.name
        assert element.get("username") == s.user
    elif fmt == "qgis":
        assert "[PostgreSQL]" in body
        assert all("=" in line for line in body if line != "[PostgreSQL]"), body
    elif fmt == "arcgis":
        ast.parse(text[text.index("import arcpy") :])
    elif fmt == "jdbc":
        url = urlsplit(text.strip()[len("jdbc:") :])
        assert unquote(url.path[1:]) == s.dbname
        assert url.port == s.port
    elif fmt == "sqlalchemy":
        from sqlalchemy.engine import make_url

        parsed = make_url(text.strip())
        assert (parsed.database, parsed.username, parsed.port) == (s.dbname, s.user, s.port)


def render_all(profile: Profile, port: int, password: str) -> None:
    """Every format, with and without the optional inputs; parse each back."""
    for fmt in clients.FORMATS:
        options: list[dict[str, Any]] = [{}, {"password_file": "/tmp/pass file", "user": "o u"}]
        for kwargs in options:
            try:
                s = clients.conn_settings(profile, port, **kwargs)
                text = clients.render(fmt, profile, port, **kwargs)
                clients.notes(fmt, profile, port)
            except TunnelmanError:
                count("renders refused (TunnelmanError)")
                continue
            count("renders")
            check_rendered(fmt, text, profile, s)
    extras: list[dict[str, Any]] = [{"pgadmin_ssh": True}, {"password": password}]
    for extra in extras:
        fmt = "pgadmin" if "pgadmin_ssh" in extra else "pgpass"
        try:
            text = clients.render(fmt, profile, port, **extra)
        except TunnelmanError:
            count("renders refused (TunnelmanError)")
            continue
        count("renders")
        check_rendered(fmt, text, profile, clients.conn_settings(profile, port))


_OTHER = {
    "service": "[other]\nhost=10.0.0.1\n# keep me\n",
    "pgpass": "# keep me\n10.0.0.1:5432:db:u:secret\n",
    "pgadmin": '{"Servers": {"1": {"Name": "other", "Group": "x"}}}\n',
    "qgis": '<!DOCTYPE connections>\n<qgsPgConnections version="1.0">\n'
    '    <postgis name="other"/>\n</qgsPgConnections>\n',
}


def write_all(profile: Profile, port: int, password: str, directory: Path) -> None:
    """Every writer, into a new file and into one holding another entry; twice each."""
    for existing in (False, True):
        where = directory / ("existing" if existing else "new")
        where.mkdir()
        targets = {
            "service": where / "pg_service.conf",
            "pgpass": where / ".pgpass",
            "pgadmin": where / "servers.json",
            "qgis": where / "qgis.xml",
        }
        if existing:
            for key, path in targets.items():
                path.write_text(_OTHER[key], encoding="utf-8")
        for key, path in targets.items():
            refused = False
            for attempt in (1, 2):
                try:
                    if key == "service":
                        result = client_files.write_service(profile, port, path=path)
                    elif key == "pgpass":
                        result = client_files.write_pgpass(profile, port, password, path=path)
                    elif key == "pgadmin":
                        result = client_files.write_pgadmin(profile, port, path)
                    else:
                        result = client_files.write_qgis_xml(profile, port, path)
                except TunnelmanError:
                    count("writes refused (TunnelmanError)")
                    refused = True
                    break
                count("file writes")
                result.describe()
                if attempt == 2:
                    assert result.action == "unchanged", (key, result)
            if not path.exists():
                continue
            text = path.read_text(encoding="utf-8")
            if refused:  # nothing half-written: the file is as it was
                assert text == (_OTHER[key] if existing else text), (key, text)
                continue
            if key == "service":
                parser = configparser.ConfigParser(interpolation=None)
                parser.read_string(text)
                assert parser.has_section(profile.name)
                assert not existing or parser.has_section("other")
            elif key == "pgadmin":
                names = [v["Name"] for v in json.loads(text)["Servers"].values()]
                assert profile.name in names
                assert not existing or "other" in names
            elif key == "qgis":
                root = ET.fromstring(text)
                names = [e.get("name") for e in root.iter("postgis")]
                assert profile.name in names
                assert not existing or "other" in names
            else:
                assert not existing or "10.0.0.1:5432:db:u:secret" in text


def exercise(loaded: ProfileSet | None, port: int, password: str, directory: Path) -> None:
    if loaded is None:
        return
    for profile in loaded:
        profiles.printable(profile.description)
        profile.to_public_dict()
        render_all(profile, port, password)
        write_all(profile, port, password, Path(tempfile.mkdtemp(dir=directory)))


ports = st.one_of(st.integers(1, 65535), st.sampled_from([1, 5432, 65535]))
passwords = st.one_of(fs.plain_text, fs.edge_text)


@settings(max_examples=examples(ci=60, long=6000))
@given(doc=fs.profile_document(), port=ports, password=passwords)
def test_structured_profiles(
    tmp_path: Path, doc: dict[str, object], port: int, password: str
) -> None:
    with tempfile.TemporaryDirectory(dir=FAST_TMP or tmp_path) as where:
        directory = Path(where)
        loaded = load_bytes(directory, fs.document_text(doc).encode("utf-8"))
        exercise(loaded, port, password, directory)


@settings(max_examples=examples(ci=60, long=5000))
@given(data=fs.mutated_bytes(SEEDS), port=ports, password=passwords)
def test_mutated_profile_files(tmp_path: Path, data: bytes, port: int, password: str) -> None:
    with tempfile.TemporaryDirectory(dir=FAST_TMP or tmp_path) as where:
        directory = Path(where)
        exercise(load_bytes(directory, data), port, password, directory)


def test_example_file_renders_everywhere(tmp_path: Path) -> None:
    """The seed itself: the shipped example loads, and all of it renders and writes."""
    loaded = load_bytes(tmp_path, EXAMPLE)
    assert loaded is not None
    assert len(loaded) >= 2
    exercise(loaded, 5433, "s3cret", tmp_path)
