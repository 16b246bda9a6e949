"""The TUI's calls into core modules that load on demand: client settings, client files, AWS.

Each import happens on first use, inside the worker or action that needs it, so startup never pays
for boto3 (≈0.6 s) and a profile without AWS settings never loads it. Everything returns values or
raises `TunnelmanError`; the caller runs the blocking ones (AWS) in thread workers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tunnelman.core.errors import AWSError, ClientError, TunnelmanError

if TYPE_CHECKING:
    from pathlib import Path

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
    """The text of one connection setting (core.clients.render)."""
    clients = _module("tunnelman.core.clients", ClientError)
    return str(clients.render(fmt, profile, port))


def write_conn(fmt: str, profile: Profile, port: int) -> Path:
    """Merge this profile's entry into the client's own file; returns the file written."""
    files = _module("tunnelman.core.client_files", ClientError)
    writer = getattr(files, "write", None)
    if writer is None:
        raise ClientError(f"writing '{fmt}' settings is not supported by this build")
    result = writer(fmt, profile, port)
    return getattr(result, "path", result)  # type: ignore[no-any-return]


def aws() -> Any:
    """tunnelman.core.aws, the only module importing boto3; call only from a worker."""
    return _module("tunnelman.core.aws", AWSError)


def cluster_status(profile: Profile) -> Any:
    return aws().cluster_status(profile)


def start_cluster(profile: Profile) -> Any:
    return aws().start_cluster(profile)


def stop_cluster(profile: Profile) -> Any:
    return aws().stop_cluster(profile)
