"""Golden files for every `conn` format, and the escaping rules each format depends on.

Regenerate after an intended change with `TUNNELMAN_UPDATE_GOLDEN=1 pytest tests/test_clients.py`
and review the diff of tests/golden/.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path
from xml.etree import ElementTree

import pytest

from tunnelman.core import clients
from tunnelman.core.errors import ClientError
from tunnelman.core.profiles import Bastion, Endpoint, Profile, SSLMode

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("TUNNELMAN_UPDATE_GOLDEN") == "1"

PROFILES: dict[str, Profile] = {
    # The example from the architecture brief: Aurora behind an EC2 bastion, sslmode=require.
    "prod": Profile(
        name="prod",
        description="Aurora Serverless PostGIS",
        bastion=Bastion("ec2-3-15-21-102.us-east-2.compute.amazonaws.com", "ec2-user"),
        identity_file=Path("/home/ana/.ssh/aws-ec2.pem"),
        endpoint=Endpoint("database-1.cluster-abc.us-east-2.rds.amazonaws.com"),
        database="geo",
        user="postgres",
        local_port=5433,
        sslmode="require",
    ),
    # Certificate checked through the tunnel: host=<endpoint> hostaddr=127.0.0.1.
    "verify": Profile(
        name="verify",
        bastion=Bastion("bastion.example.com", "ec2-user", 2222),
        identity_file=Path("/home/ana/.ssh/aws-ec2.pem"),
        endpoint=Endpoint("database-1.cluster-abc.us-east-2.rds.amazonaws.com", 5432),
        database="geo",
        user="gis_reader",
        sslmode="verify-full",
        sslrootcert=Path("/home/ana/.postgresql/rds-global-bundle.pem"),
        connect_timeout=60,
    ),
    # IAM: sslmode prefer is raised to require.
    "iam": Profile(
        name="iam",
        bastion=Bastion("bastion.example.com"),
        endpoint=Endpoint("db-1.abc.eu-west-1.rds.amazonaws.com"),
        database="app",
        user="iam_user",
        password="iam",
        region="eu-west-1",
    ),
    # Awkward names: spaces, quotes, backslashes, colons, @, %, non-ASCII.
    "odd": Profile(
        name="odd.db-1",
        bastion=Bastion("bastion.example.com"),
        endpoint=Endpoint("db.internal"),
        database="my db:'x'",
        user="o'brien\\ @x%é",
        password="none",
        sslmode="prefer",
        sslrootcert=Path("/home/ana/certs dir/ca.pem"),
    ),
}
PORT = 5433


def _check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE or not path.exists():
        if not UPDATE and os.environ.get("CI"):
            pytest.fail(f"golden file {path} is missing")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, "utf-8")
    assert text == path.read_text("utf-8"), (
        f"differs from {path} (TUNNELMAN_UPDATE_GOLDEN=1 to accept)"
    )


_EXT = {
    "pgadmin": "json",
    "dbeaver": "json",
    "qgis-xml": "xml",
    "qgis": "ini",
    "pg-service": "conf",
    "env": "sh",
    "psql": "sh",
    "arcgis": "txt",
}


@pytest.mark.parametrize("fmt", list(clients.FORMATS))
@pytest.mark.parametrize("profile_key", list(PROFILES))
def test_golden(fmt: str, profile_key: str) -> None:
    profile = PROFILES[profile_key]
    text = clients.render(fmt, profile, PORT)
    notes = clients.notes(fmt, profile, PORT)
    if fmt not in clients.COMMENTED_FORMATS and notes:
        text += "".join(f"#NOTE (stderr) {n}\n" for n in notes)
    _check_golden(f"{profile_key}.{fmt}.{_EXT.get(fmt, 'txt')}", text)


def test_golden_variants() -> None:
    prod = PROFILES["prod"]
    _check_golden("prod.pgadmin-ssh.json", clients.render("pgadmin", prod, PORT, pgadmin_ssh=True))
    _check_golden(
        "prod.env-passfile.sh",
        clients.render("env", prod, PORT, password_file="/run/user/1000/tm/pgpass"),
    )
    _check_golden(
        "prod.pgpass-password.txt",
        clients.render("pgpass", prod, PORT, password="s3:cr\\et"),
    )


@pytest.mark.parametrize("profile_key", list(PROFILES))
@pytest.mark.parametrize("fmt", [f for f in clients.FORMATS if f != "pgpass"])
def test_no_secret_anywhere(fmt: str, profile_key: str) -> None:
    """Only `pgpass` with an explicit password ever prints one."""
    text = clients.render(fmt, PROFILES[profile_key], PORT, password="hunter2-secret")
    assert "hunter2-secret" not in text
    assert "PGPASSWORD=" not in text


def test_pgpass_password_only_when_given() -> None:
    assert "<password>" in clients.render("pgpass", PROFILES["prod"], PORT)
    line = clients.render("pgpass", PROFILES["prod"], PORT, password="a:b\\c")
    assert line == "127.0.0.1:5433:geo:postgres:a\\:b\\\\c\n"


def test_pgpass_refuses_line_breaks() -> None:
    with pytest.raises(ClientError, match="line break"):
        clients.render("pgpass", PROFILES["prod"], PORT, password="a\nb")


@pytest.mark.parametrize(
    ("value", "quoted"),
    [
        ("geo", "geo"),
        ("", "''"),
        ("my db", "'my db'"),
        ("o'brien", "'o\\'brien'"),
        ("back\\slash", "'back\\\\slash'"),
        ("tab\there", "'tab\there'"),
    ],
)
def test_dsn_quoting(value: str, quoted: str) -> None:
    assert clients.dsn_quote(value) == quoted


def test_verify_modes_use_hostaddr() -> None:
    s = clients.conn_settings(PROFILES["verify"], PORT)
    assert (s.host, s.hostaddr) == (
        "database-1.cluster-abc.us-east-2.rds.amazonaws.com",
        "127.0.0.1",
    )
    s = clients.conn_settings(PROFILES["prod"], PORT)
    assert (s.host, s.hostaddr) == ("127.0.0.1", None)


def test_verify_without_endpoint_is_noted() -> None:
    profile = Profile(name="c", cluster="database-1", sslmode="verify-full")
    assert clients.conn_settings(profile, PORT).host == "127.0.0.1"
    assert any("names no endpoint" in n for n in clients.notes("dsn", profile, PORT))


def test_iam_forces_tls() -> None:
    weak: SSLMode
    for weak in ("disable", "allow", "prefer"):
        profile = Profile(name="i", password="iam", sslmode=weak)
        assert clients.effective_sslmode(profile) == "require"
    assert (
        clients.effective_sslmode(Profile(name="i", password="iam", sslmode="verify-full"))
        == "verify-full"
    )
    assert "PGSSLMODE=require" in clients.render("env", PROFILES["iam"], PORT)


def test_unknown_format_suggests() -> None:
    with pytest.raises(ClientError, match="did you mean 'pgadmin'"):
        clients.render("pgadmn", PROFILES["prod"], PORT)


def test_bad_port() -> None:
    with pytest.raises(ClientError, match="bad local port"):
        clients.render("dsn", PROFILES["prod"], 0)


def test_pgadmin_ssh_needs_bastion_and_endpoint() -> None:
    with pytest.raises(ClientError, match="endpoint and bastion"):
        clients.render("pgadmin", Profile(name="x"), PORT, pgadmin_ssh=True)


# ----------------------------------------------------------------------------- parsers


def _libpq_conninfo_parse(text: str) -> dict[str, str]:
    """libpq's own parser (PQconninfoParse through psycopg), for DSNs and URIs."""
    from psycopg.conninfo import conninfo_to_dict

    return {k: str(v) for k, v in conninfo_to_dict(text).items()}


@pytest.mark.parametrize("profile_key", list(PROFILES))
def test_dsn_and_uri_parse_back_with_libpq(profile_key: str) -> None:
    profile = PROFILES[profile_key]
    s = clients.conn_settings(profile, PORT)
    expected = dict(s.keywords())
    assert _libpq_conninfo_parse(clients.render("dsn", profile, PORT).strip()) == expected
    assert _libpq_conninfo_parse(clients.render("uri", profile, PORT).strip()) == expected


@pytest.mark.parametrize("profile_key", list(PROFILES))
def test_psql_line_is_one_shell_word(profile_key: str) -> None:
    profile = PROFILES[profile_key]
    argv = shlex.split(clients.render("psql", profile, PORT))
    assert argv[0] == "psql"
    assert len(argv) == 2
    assert _libpq_conninfo_parse(argv[1]) == dict(clients.conn_settings(profile, PORT).keywords())


@pytest.mark.parametrize("profile_key", list(PROFILES))
def test_env_evaluates_in_a_real_shell(profile_key: str) -> None:
    profile = PROFILES[profile_key]
    script = (
        "export PGSERVICE=stale PGPASSWORD=leak PGHOSTADDR=9.9.9.9\n"
        + clients.render("env", profile, PORT)
        + 'env | grep "^PG" | sort\n'
    )
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout
    got = dict(line.split("=", 1) for line in out.splitlines())
    s = clients.conn_settings(profile, PORT)
    assert got["PGHOST"] == s.host
    assert got["PGUSER"] == s.user
    assert got["PGDATABASE"] == s.dbname
    assert got["PGPORT"] == str(PORT)
    assert "PGSERVICE" not in got
    assert "PGPASSWORD" not in got
    assert got.get("PGHOSTADDR") == s.hostaddr


def test_pg_service_has_no_quoting_and_no_spaces() -> None:
    text = clients.render("pg-service", PROFILES["odd"], PORT)
    settings = [line for line in text.splitlines() if line and not line.startswith(("#", "["))]
    for line in settings:
        assert re.fullmatch(r"[a-z_]+=\S.*", line), line
    assert "dbname=my db:'x'" in settings
    assert "sslrootcert=/home/ana/certs dir/ca.pem" in settings


def test_sqlalchemy_matches_url_create() -> None:
    """The URL equals what sqlalchemy.URL.create renders (when sqlalchemy is installed)."""
    sqlalchemy = pytest.importorskip(
        "sqlalchemy", reason="sqlalchemy not installed: regex check below covers the shape"
    )
    for profile in PROFILES.values():
        s = clients.conn_settings(profile, PORT)
        query = {"sslmode": s.sslmode, "connect_timeout": str(s.connect_timeout)}
        if s.hostaddr:
            query["hostaddr"] = s.hostaddr
        if s.sslrootcert:
            query["sslrootcert"] = s.sslrootcert
        url = sqlalchemy.URL.create(
            "postgresql+psycopg",
            username=s.user,
            host=s.host,
            port=s.port,
            database=s.dbname,
            query=query,
        )
        rendered = clients.render("sqlalchemy", profile, PORT).strip()
        assert rendered == url.render_as_string(hide_password=False)
        parsed = sqlalchemy.make_url(rendered)
        assert (parsed.username, parsed.host, parsed.port, parsed.database) == (
            s.user,
            s.host,
            PORT,
            s.dbname,
        )
        assert dict(parsed.query) == query


def test_sqlalchemy_and_jdbc_shape() -> None:
    """A regex check that runs without sqlalchemy or a JVM (no JDBC driver can run here)."""
    url = clients.render("sqlalchemy", PROFILES["prod"], PORT).strip()
    assert re.fullmatch(
        r"postgresql\+psycopg://postgres@127\.0\.0\.1:5433/geo\?connect_timeout=15&sslmode=require",
        url,
    )
    jdbc = clients.render("jdbc", PROFILES["odd"], PORT).strip()
    m = re.fullmatch(
        r"jdbc:postgresql://127\.0\.0\.1:5433/([^?]+)\?user=([^&]+)&sslmode=prefer&sslrootcert=(\S+)",
        jdbc,
    )
    assert m is not None
    from urllib.parse import unquote

    assert unquote(m[1]) == "my db:'x'"
    assert unquote(m[2]) == "o'brien\\ @x%é"
    assert unquote(m[3]) == "/home/ana/certs dir/ca.pem"


def test_dbeaver_shape() -> None:
    """The keys DataSourceSerializerModern.parseDataSources reads: connections → provider,
    driver, name, configuration {host, port, database, url, user, auth-model, properties}."""
    doc = json.loads(clients.render("dbeaver", PROFILES["verify"], PORT))
    (conn,) = doc["connections"].values()
    assert conn["provider"] == "postgresql"
    assert conn["driver"] == "postgres-jdbc"
    cfg = conn["configuration"]
    assert cfg["host"] == "127.0.0.1"
    assert cfg["port"] == str(PORT)
    assert cfg["properties"]["sslmode"] == "verify-full"
    assert cfg["url"].startswith("jdbc:postgresql://127.0.0.1:5433/geo?")


def test_qgis_ini_keys_are_qsettings_escaped() -> None:
    text = clients.render("qgis", PROFILES["prod"], PORT)
    assert "[PostgreSQL]\n" in text
    assert "connections\\prod\\host=127.0.0.1\n" in text
    assert "connections\\prod\\sslmode=SslRequire\n" in text
    assert clients._qsettings_key("connections/a b/host") == "connections\\a%20b\\host"
    assert clients._qsettings_value('a,b "c"') == '"a,b \\"c\\""'


def test_arcgis_instance_and_snippet() -> None:
    text = clients.render("arcgis", PROFILES["prod"], PORT)
    assert "Instance:          127.0.0.1,5433" in text
    snippet = text[text.index("import arcpy") :]
    compile(snippet, "arcgis-snippet", "exec")  # valid Python
    assert '"127.0.0.1,5433",  # instance' in snippet
    assert '"<password>",  # password' in snippet


# ----------------------------------------------------------------------------- QGIS XML
# QGIS's reader, src/gui/qgsmanageconnectionsdialog.cpp (QgsManageConnectionsDialog), checked:
#   populateConnections():  if ( root.tagName() != QLatin1String( "qgsPgConnections" ) ) → "not a
#                           PostGIS connections exchange file"; items from child.attribute( "name" )
#   loadPgConnections():    settings.setValue( "/host", child.attribute( "host" ) ) and likewise
#                           "port", "database", "service" (hasAttribute → else ""), "sslmode",
#                           "estimatedMetadata", "projectsInDatabase", "dontResolveType",
#                           "allowGeometrylessTables", "geometryColumnsOnly", "publicOnly",
#                           "saveUsername", "username", "savePassword", "password"
#   savePgConnections():    QDomDocument doc( "connections" ) → <!DOCTYPE connections>;
#                           root.setAttribute( "version", "1.0" ); elements named "postgis"
# sslmode is read back with settings.enumValue( key + "/sslmode", QgsDataSourceUri::SslPrefer ),
# which takes the enum key name ("SslRequire", …) and falls back to the old integer.
QGIS_READS = {
    "name", "host", "port", "database", "service", "sslmode", "estimatedMetadata",
    "projectsInDatabase", "dontResolveType", "allowGeometrylessTables", "geometryColumnsOnly",
    "publicOnly", "saveUsername", "username", "savePassword", "password",
}  # fmt: skip
QGIS_SSLMODES = {
    "SslPrefer",
    "SslDisable",
    "SslAllow",
    "SslRequire",
    "SslVerifyCa",
    "SslVerifyFull",
}


@pytest.mark.parametrize("profile_key", list(PROFILES))
def test_qgis_xml_as_qgis_reads_it(profile_key: str) -> None:
    profile = PROFILES[profile_key]
    text = clients.render("qgis-xml", profile, PORT)
    assert text.startswith("<!DOCTYPE connections>\n")
    root = ElementTree.fromstring(text)
    assert root.tag == "qgsPgConnections"
    assert root.get("version") == "1.0"
    assert [e.tag for e in root] == ["postgis"]
    attrs = dict(root[0].attrib)
    assert set(attrs) <= QGIS_READS
    assert "password" not in attrs
    assert attrs["name"] == profile.name
    assert attrs["sslmode"] in QGIS_SSLMODES
    assert attrs["savePassword"] == "false"
    s = clients.conn_settings(profile, PORT)
    if s.hostaddr:  # verify-*: the entry names the service that carries hostaddr
        assert (attrs["service"], attrs["host"], attrs["port"]) == (profile.name, "", "")
    else:
        assert (attrs["host"], attrs["port"], attrs["database"]) == (
            "127.0.0.1",
            str(PORT),
            s.dbname,
        )
        assert attrs["username"] == s.user


@pytest.mark.parametrize("odd", ["\ufffe", "\uffff", "\x01"])
def test_qgis_xml_refuses_what_xml_cannot_hold(odd: str) -> None:
    """Found by tests/fuzz: a database named U+FFFE rendered XML that no parser reads."""
    from tunnelman.core.errors import ClientError

    profile = Profile(name="q", database=f"a{odd}b")
    with pytest.raises(ClientError, match="QGIS XML cannot hold"):
        clients.render("qgis-xml", profile, 5433)
