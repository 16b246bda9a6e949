"""The TUI's calls into core modules that load on demand: client settings, client files, AWS.

Each import happens on first use, inside the worker or action that needs it, so startup never pays
for boto3 (≈0.6 s) and a profile without AWS settings never loads it. Everything returns values or
raises `TunnelmanError`; the caller runs the blocking ones (AWS) in thread workers.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunnelman.core.errors import AWSError, ClientError, TunnelmanError

if TYPE_CHECKING:
    from tunnelman.core.profiles import Profile

CONN_TABS: tuple[tuple[str, str], ...] = (
    ("psql", "psql"),
    ("uri", "URI"),
    ("pgadmin", "pgAdmin"),
    ("qgis", "QGIS"),
    ("arcgis", "ArcGIS"),
    ("jdbc", "JDBC"),
    ("sqlalchemy", "SQLAlchemy"),
)
"""(format, tab title) of the connection settings the detail pane shows, in tab order."""


def _module(name: str, error: type[TunnelmanError]) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        raise error(f"{name} is not available in this build of tunnelman") from None


def render_conn(fmt: str, profile: Profile, port: int) -> str:
    """The text of one connection setting (core.clients.render), as it is copied."""
    clients = _module("tunnelman.core.clients", ClientError)
    return str(clients.render(fmt, profile, port))


def conn_notes(fmt: str, profile: Profile, port: int) -> list[str]:
    """Caveats to show beside a setting (TLS through the tunnel, IAM…), not copied."""
    clients = _module("tunnelman.core.clients", ClientError)
    if fmt in getattr(clients, "COMMENTED_FORMATS", ()):
        return []  # those carry their notes as comments already
    notes = getattr(clients, "notes", None)
    return [str(n) for n in notes(fmt, profile, port)] if notes is not None else []


def write_target(fmt: str, config_dir: Path) -> tuple[str, Path | None]:
    """Which file `w` writes for a tab: (what, path); path None means the writer's default."""
    if fmt == "pgadmin":
        return (
            "pgAdmin servers.json (Tools > Import/Export Servers)",
            config_dir / "pgadmin-servers.json",
        )
    if fmt == "qgis":
        return (
            "QGIS connections XML (Browser > PostgreSQL > Load Connections…)",
            config_dir / "qgis-connections.xml",
        )
    return "pg_service.conf (psql, QGIS, pgAdmin and GDAL can name the service)", None


def write_conn(fmt: str, profile: Profile, port: int, config_dir: Path) -> str:
    """Merge this profile's entry into the client's file; returns one line saying what happened."""
    files = _module("tunnelman.core.client_files", ClientError)
    what, path = write_target(fmt, config_dir)
    if fmt == "pgadmin":
        result = files.write_pgadmin(profile, port, path)
    elif fmt == "qgis":
        result = files.write_qgis_xml(profile, port, path)
    else:
        result = files.write_service(profile, port)
    describe = getattr(result, "describe", None)
    line = describe() if callable(describe) else str(getattr(result, "path", result))
    return f"{what}: {line}"


def aws() -> Any:
    """tunnelman.core.aws, the only module importing boto3; call only from a worker."""
    return _module("tunnelman.core.aws", AWSError)


def cluster_status(profile: Profile) -> Any:
    return aws().cluster_status(profile)


def start_cluster(profile: Profile) -> Any:
    return aws().start_cluster(profile)


def stop_cluster(profile: Profile) -> Any:
    return aws().stop_cluster(profile)


def discover(aws_api: Any, regions: list[str], aws_profile: str | None) -> list[dict[str, Any]]:
    """Databases and bastion candidates as plain dicts with a `kind` (cluster/instance/bastion)."""
    from tunnelman.tui.format import public_fields

    found = aws_api.discover(regions, aws_profile=aws_profile)
    if isinstance(found, list):
        return [public_fields(item) for item in found]
    items = [public_fields(db) for db in getattr(found, "databases", [])]
    items += [{**public_fields(b), "kind": "bastion"} for b in getattr(found, "bastions", [])]
    return items
