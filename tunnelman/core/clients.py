"""Client settings: pure renderers from (profile, local port) to the text each client reads.

Called by `tunnelman conn`, `tunnelman env`, the one-shot commands (for the child's environment)
and the TUI's "copy settings" view. Nothing here touches the network, the keyring or a file: every
function is a pure function of its arguments, so each format is pinned by a golden file.

Two rules hold for every format:
- No secret appears in the output, except the one `pgpass` line a caller renders with an explicit
  `password=` (used by `conn --format pgpass --write` and the one-shot's temporary PGPASSFILE).
- TLS through the tunnel: for sslmode verify-ca / verify-full the settings say host=<real endpoint>
  hostaddr=127.0.0.1, so libpq connects to the tunnel but checks the server certificate against
  the endpoint's name (and matches that name in .pgpass). Formats whose client has no hostaddr
  (JDBC, DBeaver, ArcGIS, QGIS without a service) say so in a note.
"""

from __future__ import annotations

import functools
import json
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote, quote_plus

from tunnelman.core.errors import ClientError
from tunnelman.core.platform import shells

if TYPE_CHECKING:
    from pathlib import Path

    from tunnelman.core.profiles import Profile

LOCALHOST = "127.0.0.1"
APP_NAME = "tunnelman"
PGADMIN_GROUP = "tunnelman"
VERIFY_MODES = ("verify-ca", "verify-full")
_WEAK_FOR_IAM = ("disable", "allow", "prefer")

FORMATS: dict[str, str] = {
    "psql": "a ready psql command line",
    "uri": "a libpq URI: postgresql://user@127.0.0.1:PORT/db?sslmode=…",
    "dsn": "a libpq keyword/value string: host=… port=… dbname=…",
    "env": "PG* shell exports (eval them; no password)",
    "pgpass": "a .pgpass line (a placeholder for the password; --write fills it in)",
    "pg-service": "a pg_service.conf section: psql, QGIS, pgAdmin and GDAL can name it",
    "pgadmin": "pgAdmin 4 servers.json (Tools > Import/Export Servers, setup.py load-servers)",
    "qgis": "QGIS3.ini [PostgreSQL] connection keys",
    "qgis-xml": "QGIS connections XML (Browser > PostgreSQL > Load Connections…)",
    "arcgis": "ArcGIS Pro connection fields and an arcpy CreateDatabaseConnection snippet",
    "dbeaver": "DBeaver data-sources.json",
    "jdbc": "a JDBC URL (DBeaver, DataGrip, Java programs)",
    "sqlalchemy": "a SQLAlchemy URL for psycopg 3 (postgresql+psycopg://…)",
}
"""Every `conn` format with its one-line description, in the order `--help` lists them."""

COMMENTED_FORMATS = frozenset({"env", "pgpass", "pg-service", "qgis", "qgis-xml", "arcgis"})
"""Formats that carry their notes as comments; for the others the caller shows `notes()` apart."""


# ----------------------------------------------------------------------------- settings


def effective_sslmode(profile: Profile) -> str:
    """The profile's sslmode, raised to `require` for IAM (RDS refuses tokens without TLS)."""
    if profile.password == "iam" and profile.sslmode in _WEAK_FOR_IAM:
        return "require"
    return profile.sslmode


@dataclass(frozen=True)
class ConnSettings:
    """The libpq settings a client needs to reach the database through the tunnel."""

    name: str
    host: str
    """The name libpq checks the certificate against and matches in .pgpass."""
    hostaddr: str | None
    """127.0.0.1 when `host` is the real endpoint (verify-ca / verify-full); else None."""
    port: int
    dbname: str
    user: str
    sslmode: str
    sslrootcert: str | None
    connect_timeout: int
    passfile: str | None = None
    verify_without_endpoint: bool = False
    """verify-* was asked for but the profile names no endpoint, so host is 127.0.0.1."""

    @property
    def verify(self) -> bool:
        """Whether the certificate is checked (verify-ca / verify-full)."""
        return self.sslmode in VERIFY_MODES

    @property
    def address(self) -> str:
        """Where the client's TCP connection goes: always the tunnel's end."""
        return self.hostaddr or self.host

    def keywords(self) -> list[tuple[str, str]]:
        """libpq keywords in a stable order; absent settings are left out."""
        pairs: list[tuple[str, str]] = [("host", self.host)]
        if self.hostaddr:
            pairs.append(("hostaddr", self.hostaddr))
        pairs += [
            ("port", str(self.port)),
            ("dbname", self.dbname),
            ("user", self.user),
            ("sslmode", self.sslmode),
        ]
        if self.sslrootcert:
            pairs.append(("sslrootcert", self.sslrootcert))
        if self.passfile:
            pairs.append(("passfile", self.passfile))
        pairs.append(("connect_timeout", str(self.connect_timeout)))
        return pairs


def conn_settings(
    profile: Profile,
    port: int,
    *,
    user: str | None = None,
    password_file: str | Path | None = None,
) -> ConnSettings:
    """The settings for `profile` through a tunnel on 127.0.0.1:`port`.

    `user` overrides the profile's user (a Secrets Manager secret may name another one);
    `password_file` adds `passfile` (libpq ≥ 10) where the format can carry it.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ClientError(f"bad local port {port!r}: use 1-65535")
    sslmode = effective_sslmode(profile)
    host, hostaddr = LOCALHOST, None
    verify_without_endpoint = False
    if sslmode in VERIFY_MODES:
        if profile.endpoint is not None:
            host, hostaddr = profile.endpoint.host, LOCALHOST
        else:
            verify_without_endpoint = True
    return ConnSettings(
        name=profile.name,
        host=host,
        hostaddr=hostaddr,
        port=port,
        dbname=profile.database,
        user=user or profile.user,
        sslmode=sslmode,
        sslrootcert=str(profile.sslrootcert) if profile.sslrootcert else None,
        connect_timeout=profile.connect_timeout,
        passfile=str(password_file) if password_file else None,
        verify_without_endpoint=verify_without_endpoint,
    )


# ----------------------------------------------------------------------------- escaping


def dsn_quote(value: str) -> str:
    """A libpq keyword value: single-quoted when empty or holding spaces, `'` and `\\` escaped."""
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    if not value or escaped != value or any(c.isspace() for c in value):
        return f"'{escaped}'"
    return value


def dsn(settings: ConnSettings) -> str:
    """The libpq keyword/value connection string."""
    return " ".join(f"{key}={dsn_quote(value)}" for key, value in settings.keywords())


def pgpass_escape(value: str) -> str:
    """A .pgpass field: `\\` and `:` escaped with a backslash."""
    if "\n" in value or "\r" in value:
        raise ClientError("a .pgpass field cannot hold a line break")
    return value.replace("\\", "\\\\").replace(":", "\\:")


def pgpass_line(host: str, port: int | str, dbname: str, user: str, password: str) -> str:
    """One `hostname:port:database:username:password` line (no newline)."""
    fields = (host, str(port), dbname, user, password)
    return ":".join("*" if f == "*" else pgpass_escape(f) for f in fields)


def shell_word(text: str) -> str:
    """`text` as one POSIX shell word: bare when plain, in double quotes when that is safe."""
    if text and re.fullmatch(r"[A-Za-z0-9_@%+=:,./-]+", text):
        return text
    if text and not any(c in text for c in '"$`\\!'):
        return f'"{text}"'
    return shlex.quote(text)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# ----------------------------------------------------------------------------- notes


def notes(fmt: str, profile: Profile, port: int) -> list[str]:
    """Caveats a person needs next to the settings (one line each), for any format."""
    check_format(fmt)
    s = conn_settings(profile, port)
    out: list[str] = []
    if s.verify_without_endpoint:
        out.append(
            f"sslmode={s.sslmode} checks the certificate against the endpoint's name, but the "
            'profile names no endpoint: set endpoint = "HOST" in the profile'
        )
    elif s.verify and fmt in ("jdbc", "dbeaver"):
        out.append(
            f"JDBC has no hostaddr: for sslmode={s.sslmode} map {s.host} to 127.0.0.1 in your "
            f"hosts file and use {s.host} as the host, or use sslmode=verify-ca"
        )
    elif s.verify and fmt == "arcgis":
        out.append(
            f"ArcGIS has no hostaddr setting: for sslmode={s.sslmode} map {s.host} to 127.0.0.1 "
            f"in your hosts file and use the instance {s.host},{s.port}"
        )
    elif s.verify and fmt in ("qgis", "qgis-xml"):
        out.append(
            f"QGIS has no hostaddr field: this entry names the service '{s.name}', which holds "
            f"hostaddr=127.0.0.1; write it with `tunnelman conn {s.name} -f pg-service -w`"
        )
    if profile.password == "iam":
        out.append(
            "IAM auth: the password is a token valid 15 minutes; `tunnelman psql` / `tunnelman exec` "
            "fetch one for you"
        )
    if fmt not in ("pgpass", "env") and profile.password in ("keyring", "prompt", "secretsmanager"):
        hint = {
            "pgadmin": "pgAdmin asks for the password (or set a passfile)",
            "dbeaver": "DBeaver asks for the password on first connect",
            "qgis": "QGIS asks for the password on first connect",
            "qgis-xml": "QGIS asks for the password on first connect",
            "arcgis": "type the password into ArcGIS; it is not shown here",
            "sqlalchemy": "pass the password separately (URL.create(..., password=…)) or via PGPASSFILE",
            "jdbc": "pass the password separately (the password property)",
        }.get(fmt)
        if hint:
            out.append(hint)
    if fmt in ("psql", "uri", "dsn", "env") and profile.password in (
        "keyring",
        "prompt",
        "secretsmanager",
    ):
        out.append(
            f"no password here: `tunnelman conn {s.name} --format pgpass --write` stores it in "
            "your .pgpass, or `tunnelman psql` uses it without storing"
        )
    return out


def check_format(fmt: str) -> None:
    """Raise ClientError naming the formats when `fmt` is unknown."""
    if fmt not in FORMATS:
        import difflib

        guess = difflib.get_close_matches(fmt, list(FORMATS), n=1)
        tip = f" (did you mean '{guess[0]}'?)" if guess else ""
        raise ClientError(f"unknown format '{fmt}'{tip}", hint=f"formats: {', '.join(FORMATS)}")


def _comment_lines(prefix: str, lines: list[str]) -> str:
    return "".join(f"{prefix}{line}\n" for line in lines)


def _up_hint(s: ConnSettings) -> str:
    return f"tunnelman profile '{s.name}' via {LOCALHOST}:{s.port}: the tunnel must be up (tunnelman up {s.name})"


# ----------------------------------------------------------------------------- renderers


def render_psql(profile: Profile, s: ConnSettings) -> str:
    return f"psql {shell_word(dsn(s))}\n"


def render_dsn(profile: Profile, s: ConnSettings) -> str:
    return dsn(s) + "\n"


def render_uri(profile: Profile, s: ConnSettings) -> str:
    params: list[tuple[str, str]] = []
    if s.hostaddr:
        params.append(("hostaddr", s.hostaddr))
    params.append(("sslmode", s.sslmode))
    if s.sslrootcert:
        params.append(("sslrootcert", s.sslrootcert))
    if s.passfile:
        params.append(("passfile", s.passfile))
    params.append(("connect_timeout", str(s.connect_timeout)))
    query = "&".join(f"{k}={quote(v, safe='/')}" for k, v in params)
    return (
        f"postgresql://{quote(s.user, safe='')}@{_url_host(s.host)}:{s.port}/"
        f"{quote(s.dbname, safe='')}?{query}\n"
    )


def render_env(profile: Profile, s: ConnSettings, shell: str = "posix") -> str:
    values: list[tuple[str, str]] = [("PGHOST", s.host)]
    if s.hostaddr:
        values.append(("PGHOSTADDR", s.hostaddr))
    values += [
        ("PGPORT", str(s.port)),
        ("PGDATABASE", s.dbname),
        ("PGUSER", s.user),
        ("PGSSLMODE", s.sslmode),
    ]
    if s.sslrootcert:
        values.append(("PGSSLROOTCERT", s.sslrootcert))
    if s.passfile:
        values.append(("PGPASSFILE", s.passfile))
    values.append(("PGCONNECT_TIMEOUT", str(s.connect_timeout)))
    # A stale PGSERVICE would override these (libpq prefers the service file's values), a stale
    # PGHOSTADDR would send us elsewhere, and a PGPASSWORD meant for another server must not leak.
    set_names = {name for name, _ in values}
    stale = [
        n for n in ("PGHOSTADDR", "PGSSLROOTCERT", "PGSERVICE", "PGPASSWORD") if n not in set_names
    ]
    return shells.env_script(values, stale, [_up_hint(s), *notes("env", profile, s.port)], shell)


def render_pgpass(profile: Profile, s: ConnSettings, password: str | None) -> str:
    if password is None:
        head = [
            f".pgpass line for '{s.name}': replace <password>, keep the file mode 0600,",
            f"or let tunnelman fill it in: tunnelman conn {s.name} --format pgpass --write",
        ]
        return (
            _comment_lines("# ", head)
            + pgpass_line(s.host, s.port, s.dbname, s.user, "<password>")
            + "\n"
        )
    return pgpass_line(s.host, s.port, s.dbname, s.user, password) + "\n"


def service_section(profile: Profile, s: ConnSettings) -> list[str]:
    """The lines of the `[name]` section, header included, without trailing newlines."""
    lines = [f"[{s.name}]", f"# {_up_hint(s)}"]
    lines += [f"# {n}" for n in notes("pg-service", profile, s.port)]
    for key, value in s.keywords():
        if "\n" in value or "\r" in value:
            raise ClientError(f"a pg_service.conf value cannot hold a line break ({key})")
        lines.append(f"{key}={value}")
    return lines


def render_pg_service(profile: Profile, s: ConnSettings) -> str:
    return "\n".join(service_section(profile, s)) + "\n"


def pgadmin_server(
    profile: Profile, s: ConnSettings, *, pgadmin_ssh: bool = False
) -> dict[str, object]:
    """One pgAdmin server object (the value under "Servers" → "N")."""
    description = f" — {profile.description}" if profile.description else ""
    params: dict[str, object] = {"sslmode": s.sslmode}
    if s.sslrootcert:
        params["sslrootcert"] = s.sslrootcert
    if s.passfile:
        params["passfile"] = s.passfile
    params["connect_timeout"] = s.connect_timeout
    server: dict[str, object] = {"Name": s.name, "Group": PGADMIN_GROUP}
    if pgadmin_ssh:
        if profile.endpoint is None or profile.bastion is None:
            raise ClientError(
                f"pgAdmin's own SSH tunnel needs the profile's endpoint and bastion; '{s.name}' lacks one",
                hint="set endpoint and bastion in the profile, or use the format without --pgadmin-ssh",
            )
        server.update(
            Host=profile.endpoint.host,
            Port=profile.endpoint.port,
            MaintenanceDB=s.dbname,
            Username=s.user,
            SSLMode=s.sslmode,
            Comment=f"tunnelman profile '{s.name}'{description}; pgAdmin runs the SSH tunnel itself",
            UseSSHTunnel=1,
            TunnelHost=profile.bastion.host,
            TunnelPort=profile.bastion.port,
            TunnelUsername=profile.bastion.login,
            TunnelAuthentication=1 if profile.identity_file else 0,
        )
        if profile.identity_file:
            server["TunnelIdentityFile"] = str(profile.identity_file)
        server["TunnelKeepAlive"] = profile.keepalive
    else:
        if s.hostaddr:
            params["hostaddr"] = s.hostaddr
        server.update(
            Host=s.host,
            Port=s.port,
            MaintenanceDB=s.dbname,
            Username=s.user,
            SSLMode=s.sslmode,
            Comment=f"tunnelman profile '{s.name}'{description}; start the tunnel first: tunnelman up {s.name}",
        )
    server["ConnectionParameters"] = params
    return server


def render_pgadmin(profile: Profile, s: ConnSettings, *, pgadmin_ssh: bool = False) -> str:
    doc = {"Servers": {"1": pgadmin_server(profile, s, pgadmin_ssh=pgadmin_ssh)}}
    return json.dumps(doc, indent=4, ensure_ascii=False) + "\n"


_QGIS_SSLMODE = {
    "disable": "SslDisable",
    "allow": "SslAllow",
    "prefer": "SslPrefer",
    "require": "SslRequire",
    "verify-ca": "SslVerifyCa",
    "verify-full": "SslVerifyFull",
}
"""QgsDataSourceUri::SslMode key names, which QGIS 3 stores (QgsSettings::setEnumValue)."""


def qgis_fields(profile: Profile, s: ConnSettings) -> dict[str, str]:
    """The QGIS connection keys, as QgsManageConnectionsDialog writes them, sorted by name."""
    via_service = s.verify and s.hostaddr is not None
    fields = {
        "allowGeometrylessTables": "false",
        "authcfg": "",
        "database": "" if via_service else s.dbname,
        "dontResolveType": "false",
        # Metadata from table statistics instead of full scans: much faster through a tunnel.
        "estimatedMetadata": "true",
        "geometryColumnsOnly": "false",
        "host": "" if via_service else s.host,
        "port": "" if via_service else str(s.port),
        "projectsInDatabase": "false",
        "publicOnly": "false",
        "savePassword": "false",
        "saveUsername": "true",
        "service": s.name if via_service else "",
        "sslmode": _QGIS_SSLMODE[s.sslmode],
        "username": s.user,
    }
    return dict(sorted(fields.items()))


def _qsettings_value(value: str) -> str:
    """A value as QSettings' INI writer escapes it (QSettingsPrivate::iniEscapedString)."""
    out: list[str] = []
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20:
            out.append(f"\\x{ord(ch):x}")
        else:
            out.append(ch)
    text = "".join(out)
    if any(c in value for c in ";,=") or text.startswith(" ") or text.endswith(" "):
        return f'"{text}"'
    return text


def _qsettings_key(key: str) -> str:
    """A key as QSettings' INI writer escapes it (QSettingsPrivate::iniEscapedKey)."""
    out: list[str] = []
    for ch in key:
        if ch == "/":
            out.append("\\")
        elif ch.isascii() and (ch.isalnum() or ch in "_-."):
            out.append(ch)
        elif ord(ch) <= 0xFF:
            out.append(f"%{ord(ch):02X}")
        else:
            out.append(f"%U{ord(ch):04X}")
    return "".join(out)


def render_qgis(profile: Profile, s: ConnSettings) -> str:
    head = [
        _up_hint(s),
        "Merge these keys into the [PostgreSQL] section of QGIS3.ini while QGIS is closed",
        "(Settings > User Profiles > Open Active Profile Folder).",
        *notes("qgis", profile, s.port),
    ]
    body = "".join(
        f"{_qsettings_key(f'connections/{s.name}/{key}')}={_qsettings_value(value)}\n"
        for key, value in qgis_fields(profile, s).items()
    )
    return _comment_lines("; ", head) + "[PostgreSQL]\n" + body


def qgis_element_xml(profile: Profile, s: ConnSettings) -> str:
    """One `<postgis …/>` element with the attributes QGIS's loadPgConnections reads."""
    f = qgis_fields(profile, s)
    attrs = {
        "name": s.name,
        "host": f["host"],
        "port": f["port"],
        "database": f["database"],
        "service": f["service"],
        "sslmode": f["sslmode"],
        "estimatedMetadata": f["estimatedMetadata"],
        "projectsInDatabase": f["projectsInDatabase"],
        "dontResolveType": f["dontResolveType"],
        "allowGeometrylessTables": f["allowGeometrylessTables"],
        "geometryColumnsOnly": f["geometryColumnsOnly"],
        "publicOnly": f["publicOnly"],
        "saveUsername": f["saveUsername"],
        "username": f["username"],
        "savePassword": f["savePassword"],
    }
    for key, value in attrs.items():
        bad = _xml_illegal().search(value)
        if bad:
            raise ClientError(
                f"QGIS XML cannot hold the character U+{ord(bad.group()):04X} of the {key} "
                f"{value[:40]!r}",
                hint="XML 1.0 has no such character: rename it in the profile, or use "
                "--format pg-service",
            )
    # Imported here: xml.sax.saxutils pulls in urllib.request, http.client, email and ssl (~40 ms),
    # which every one-shot `tunnelman psql` would otherwise pay for through oneshot → clients.
    from xml.sax.saxutils import quoteattr

    return "<postgis " + " ".join(f"{k}={quoteattr(v)}" for k, v in attrs.items()) + "/>"


@functools.cache
def _xml_illegal() -> re.Pattern[str]:
    """What XML 1.0 cannot carry even escaped: most C0 controls, U+FFFE, U+FFFF, lone surrogates.

    Compiled on first use: this class costs ~5 ms to compile, on every one-shot if done at import.
    """
    return re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml_comment(text: str) -> str:
    return "<!-- " + text.replace("--", "- -") + " -->"


def render_qgis_xml(profile: Profile, s: ConnSettings) -> str:
    comments = [_up_hint(s), *notes("qgis-xml", profile, s.port)]
    return (
        "<!DOCTYPE connections>\n"
        '<qgsPgConnections version="1.0">\n'
        + "".join(f"    {_xml_comment(c)}\n" for c in comments)
        + f"    {qgis_element_xml(profile, s)}\n"
        "</qgsPgConnections>\n"
    )


def render_arcgis(profile: Profile, s: ConnSettings) -> str:
    instance = f"{LOCALHOST},{s.port}"
    head = [
        _up_hint(s),
        "ArcGIS Pro: Catalog pane > Databases > New Database Connection",
        *notes("arcgis", profile, s.port),
    ]
    fields = (
        f"Database Platform: PostgreSQL\n"
        f"Instance:          {instance}\n"
        f"Authentication:    Database authentication\n"
        f"User name:         {s.user}\n"
        f"Password:          (your database password; not shown here)\n"
        f"Database:          {s.dbname}\n"
    )
    if s.sslmode != "prefer":
        fields += f"SSL:               sslmode={s.sslmode} (set PGSSLMODE={s.sslmode} for ArcGIS Pro's libpq)\n"
    snippet = (
        "\n# Or in ArcGIS Pro's Python window (arcpy). Type the password where it says <password>;\n"
        '# "SAVE_USERNAME" keeps it in the .sde file, "DO_NOT_SAVE_USERNAME" asks each time.\n'
        "import arcpy\n"
        "arcpy.management.CreateDatabaseConnection(\n"
        '    arcpy.mp.ArcGISProject("CURRENT").homeFolder,  # out_folder_path\n'
        f"    {json.dumps(s.name + '.sde')},  # out_name\n"
        '    "POSTGRESQL",  # database_platform\n'
        f"    {json.dumps(instance)},  # instance\n"
        '    "DATABASE_AUTH",  # account_authentication\n'
        f"    {json.dumps(s.user, ensure_ascii=False)},  # username\n"
        '    "<password>",  # password\n'
        '    "SAVE_USERNAME",  # save_user_pass\n'
        f"    {json.dumps(s.dbname, ensure_ascii=False)},  # database\n"
        ")\n"
    )
    return _comment_lines("# ", head) + fields + snippet


def jdbc_url(s: ConnSettings, *, with_user: bool = True) -> str:
    """`jdbc:postgresql://127.0.0.1:PORT/db?…` (pgjdbc percent-decodes parameter values)."""
    params: list[tuple[str, str]] = []
    if with_user:
        params.append(("user", s.user))
    params.append(("sslmode", s.sslmode))
    if s.sslrootcert:
        params.append(("sslrootcert", s.sslrootcert))
    query = "&".join(f"{k}={quote(v, safe='/')}" for k, v in params)
    return f"jdbc:postgresql://{_url_host(s.address)}:{s.port}/{quote(s.dbname, safe='')}?{query}"


def render_jdbc(profile: Profile, s: ConnSettings) -> str:
    return jdbc_url(s) + "\n"


def dbeaver_connection(profile: Profile, s: ConnSettings) -> dict[str, object]:
    """One entry of data-sources.json's "connections" (DataSourceSerializerModern's keys)."""
    properties: dict[str, str] = {"sslmode": s.sslmode}
    if s.sslrootcert:
        properties["sslrootcert"] = s.sslrootcert
    description = profile.description or f"tunnelman profile '{s.name}'"
    return {
        "provider": "postgresql",
        "driver": "postgres-jdbc",
        "name": s.name,
        "description": f"{description}; start the tunnel first: tunnelman up {s.name}",
        "save-password": False,
        "configuration": {
            "host": s.address,
            "port": str(s.port),
            "database": s.dbname,
            "url": jdbc_url(s, with_user=False),
            "configurationType": "MANUAL",
            "user": s.user,
            "auth-model": "native",
            "properties": properties,
        },
    }


def render_dbeaver(profile: Profile, s: ConnSettings) -> str:
    doc = {
        "folders": {},
        "connections": {f"tunnelman-{s.name}": dbeaver_connection(profile, s)},
    }
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def sqlalchemy_url(s: ConnSettings) -> str:
    """The URL as `sqlalchemy.URL.create(...).render_as_string()` spells it (query keys sorted)."""
    query: dict[str, str] = {"sslmode": s.sslmode, "connect_timeout": str(s.connect_timeout)}
    if s.hostaddr:
        query["hostaddr"] = s.hostaddr
    if s.sslrootcert:
        query["sslrootcert"] = s.sslrootcert
    rendered = "&".join(f"{quote_plus(k)}={quote_plus(query[k])}" for k in sorted(query))
    return (
        f"postgresql+psycopg://{quote(s.user, safe=' +')}@{_url_host(s.host)}:{s.port}/"
        f"{quote(s.dbname, safe=' +/')}?{rendered}"
    )


def render_sqlalchemy(profile: Profile, s: ConnSettings) -> str:
    return sqlalchemy_url(s) + "\n"


_Renderer = Callable[["Profile", ConnSettings], str]
_RENDERERS: dict[str, _Renderer] = {
    "psql": render_psql,
    "uri": render_uri,
    "dsn": render_dsn,
    "env": render_env,
    "pg-service": render_pg_service,
    "qgis": render_qgis,
    "qgis-xml": render_qgis_xml,
    "arcgis": render_arcgis,
    "dbeaver": render_dbeaver,
    "jdbc": render_jdbc,
    "sqlalchemy": render_sqlalchemy,
}


def render(
    fmt: str,
    profile: Profile,
    port: int,
    *,
    password_file: str | Path | None = None,
    password: str | None = None,
    user: str | None = None,
    pgadmin_ssh: bool = False,
    shell: str = "posix",
) -> str:
    """The text of `fmt` for `profile` through 127.0.0.1:`port`.

    `password` is used by `pgpass` only (and only when given); `password_file` adds PGPASSFILE /
    passfile where the format has one; `user` overrides the profile's user; `pgadmin_ssh` makes the
    pgAdmin entry run the SSH tunnel itself instead of using tunnelman's; `shell` is the shell
    `env` writes for (posix, powershell, cmd: `platform.shells`).
    """
    check_format(fmt)
    s = conn_settings(profile, port, user=user, password_file=password_file)
    if fmt == "pgpass":
        return render_pgpass(profile, s, password)
    if fmt == "pgadmin":
        return render_pgadmin(profile, s, pgadmin_ssh=pgadmin_ssh)
    if fmt == "env":
        return render_env(profile, s, shell)
    return _RENDERERS[fmt](profile, s)
