"""The TUI's calls into core modules that load on demand: client settings, client files, AWS.

Each import happens on first use, inside the worker or action that needs it, so startup never pays
for boto3 (≈0.6 s) and a profile without AWS settings never loads it. Everything returns values or
raises `TunnelmanError`; the caller runs the blocking ones (AWS) in thread workers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from tunnelman.core.aws import Action, Database, Discovery, Need
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


class AwsApi(Protocol):
    """What the TUI asks of AWS: `tunnelman.core.aws` itself, or a stand-in (snapshots).

    Every call blocks (boto3): call from a thread worker.
    """

    def cluster_status(self, profile: Profile) -> Database: ...

    def start_cluster(self, profile: Profile) -> Database: ...

    def stop_cluster(self, profile: Profile) -> Database: ...

    def wait_for(
        self,
        profile: Profile,
        action: Action,
        *,
        on_status: Callable[[str, float], None] | None = ...,
        cancel: threading.Event | None = ...,
        interval: float = ...,
        writer: bool = ...,
    ) -> Database:
        """Poll until a start / stop is done (`writer`: the writer instance is available too)."""
        ...

    def wake_needed(self, profile: Profile) -> tuple[Database, Need] | None:
        """The cluster when it is stopped ("start") or starting ("wait") before a connect."""
        ...

    def wake(
        self,
        profile: Profile,
        db: Database,
        need: Need,
        *,
        on_status: Callable[[str, float], None] | None = ...,
        cancel: threading.Event | None = ...,
    ) -> Database:
        """Start it (for "start") and wait until its writer instance is available."""
        ...

    def discover(self, regions: Sequence[str] = ..., *, aws_profile: str | None = ...) -> Discovery:
        """Databases and bastion candidates in `regions` (default: the session's region)."""
        ...


def aws() -> AwsApi:
    """tunnelman.core.aws, the only module importing boto3 (inside its calls): a worker's call."""
    from tunnelman.core import aws as core_aws

    return core_aws


def render_conn(fmt: str, profile: Profile, port: int) -> str:
    """The text of one connection setting (core.clients.render), as it is copied."""
    from tunnelman.core import clients

    return clients.render(fmt, profile, port)


def conn_notes(fmt: str, profile: Profile, port: int) -> list[str]:
    """Caveats to show beside a setting (TLS through the tunnel, IAM…), not copied."""
    from tunnelman.core import clients

    if fmt in clients.COMMENTED_FORMATS:
        return []  # those carry their notes as comments already
    return clients.notes(fmt, profile, port)


PGADMIN = "pgAdmin servers.json (Tools > Import/Export Servers)"
QGIS = "QGIS connections XML (Browser > PostgreSQL > Load Connections…)"
SERVICE = "pg_service.conf (psql, QGIS, pgAdmin and GDAL can name the service)"


def write_target(fmt: str, config_dir: Path) -> tuple[str, Path | None]:
    """Which file `w` writes for a tab: (what, path); path None means the writer's default."""
    if fmt == "pgadmin":
        return PGADMIN, config_dir / "pgadmin-servers.json"
    if fmt == "qgis":
        return QGIS, config_dir / "qgis-connections.xml"
    return SERVICE, None


def write_conn(fmt: str, profile: Profile, port: int, config_dir: Path) -> str:
    """Merge this profile's entry into the client's file; returns one line saying what happened."""
    from tunnelman.core import client_files

    what, path = write_target(fmt, config_dir)
    if fmt == "pgadmin" and path is not None:
        result = client_files.write_pgadmin(profile, port, path)
    elif fmt == "qgis" and path is not None:
        result = client_files.write_qgis_xml(profile, port, path)
    else:
        result = client_files.write_service(profile, port)
    return f"{what}: {result.describe()}"
