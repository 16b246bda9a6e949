"""Paths: libpq's per-user files, the Microsoft Store Python redirect, and socket-safe temp dirs.

Called by `core.client_files` (where `conn --write` writes), the CLI (the Store-Python warning)
and the demo (its pgpass block, its socket directory).

- libpq's per-user files: `$PGPASSFILE` / `$PGSERVICEFILE` when set, else `~/.pgpass` and
  `~/.pg_service.conf`, on Windows `%APPDATA%\\postgresql\\pgpass.conf` and
  `%APPDATA%\\postgresql\\.pg_service.conf` (libpq's own choices, so psql, QGIS, ArcGIS and
  pgAdmin read what tunnelman writes).
- A Python from the Microsoft Store runs packaged: a file it creates under %APPDATA% lands in
  `%LOCALAPPDATA%\\Packages\\<its package>\\LocalCache\\Roaming\\…` instead, and only that Python
  sees it there; QGIS and ArcGIS never do. `store_python_redirect` says where it really goes.
- Unix sockets (absent on Windows' Python) and a temporary directory short enough that a socket
  path in it fits `sun_path` (104 bytes on macOS, whose per-user $TMPDIR is long).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import sys
from collections.abc import Mapping
from pathlib import Path, PureWindowsPath

from tunnelman.core.platform.programs import system_name

__all__ = [
    "SUN_PATH_MAX",
    "libpq_user_dir",
    "pgpass_file",
    "service_file",
    "socket_safe_tempdir",
    "store_python_package",
    "store_python_redirect",
    "store_python_warning",
    "unix_sockets",
]

SUN_PATH_MAX = 103
"""The longest socket path every supported OS takes (macOS: 104 bytes with the NUL; Linux 108)."""

_STORE_RE = re.compile(
    r"[\\/](?:windowsapps|packages)[\\/](pythonsoftwarefoundation\.python\.[0-9.]+)_"
    r"(?:[^\\/]*_)?([a-z0-9]{13})(?:[\\/]|$)",
    re.IGNORECASE,
)


def libpq_user_dir(env: Mapping[str, str] | None = None, system: str | None = None) -> Path:
    """Where libpq keeps per-user files on Windows (`%APPDATA%\\postgresql`); home elsewhere."""
    env = os.environ if env is None else env
    if (system or system_name()) == "win32":
        return Path(env.get("APPDATA") or str(Path.home())) / "postgresql"
    return Path.home()


def service_file(env: Mapping[str, str] | None = None, system: str | None = None) -> Path:
    """`$PGSERVICEFILE`, else libpq's per-user service file for `system`."""
    env = os.environ if env is None else env
    if env.get("PGSERVICEFILE"):
        return Path(env["PGSERVICEFILE"]).expanduser()
    return libpq_user_dir(env, system) / ".pg_service.conf"


def pgpass_file(env: Mapping[str, str] | None = None, system: str | None = None) -> Path:
    """`$PGPASSFILE`, else libpq's per-user password file for `system`."""
    env = os.environ if env is None else env
    if env.get("PGPASSFILE"):
        return Path(env["PGPASSFILE"]).expanduser()
    system = system or system_name()
    name = "pgpass.conf" if system == "win32" else ".pgpass"
    return libpq_user_dir(env, system) / name


# ----------------------------------------------------------------------------- Store Python


def store_python_package(executable: str | None = None, prefix: str | None = None) -> str | None:
    """The package family (`PythonSoftwareFoundation.Python.3.12_qbz5n2kfra8p0`) when this
    Python is the Microsoft Store's (its executable or prefix under `…\\WindowsApps\\…` or
    `…\\Packages\\PythonSoftwareFoundation.Python…`), else None."""
    for path in (
        sys.executable if executable is None else executable,
        sys.prefix if prefix is None else prefix,
    ):
        match = _STORE_RE.search(path or "")
        if match:
            return f"{match.group(1)}_{match.group(2)}"
    return None


def store_python_redirect(
    target: Path | str,
    *,
    env: Mapping[str, str] | None = None,
    system: str | None = None,
    executable: str | None = None,
    prefix: str | None = None,
) -> PureWindowsPath | None:
    """Where a Store Python's write to `target` really lands, when it is redirected; else None.

    Only files under %APPDATA% (Roaming) or %LOCALAPPDATA% (outside `Packages`) are redirected.
    """
    if (system or system_name()) != "win32":
        return None
    family = store_python_package(executable, prefix)
    env = os.environ if env is None else env
    local = env.get("LOCALAPPDATA")
    if family is None or not local:
        return None
    path = PureWindowsPath(str(target))
    bases = (("APPDATA", "Roaming"), ("LOCALAPPDATA", "Local"))
    for var, cache in bases:
        base = env.get(var)
        if not base:
            continue
        try:
            rest = path.relative_to(PureWindowsPath(base))
        except ValueError:
            continue
        if var == "LOCALAPPDATA" and rest.parts[:1] and rest.parts[0].lower() == "packages":
            return None
        return PureWindowsPath(local, "Packages", family, "LocalCache", cache, rest)
    return None


def store_python_warning(
    target: Path | str,
    *,
    env: Mapping[str, str] | None = None,
    system: str | None = None,
    executable: str | None = None,
    prefix: str | None = None,
) -> str | None:
    """One line for a person when `target` would be redirected (see `store_python_redirect`)."""
    real = store_python_redirect(
        target, env=env, system=system, executable=executable, prefix=prefix
    )
    if real is None:
        return None
    return (
        f"this Python is the Microsoft Store's: Windows keeps {target} in its private copy "
        f"{real}, where QGIS, ArcGIS and psql never look; install Python from python.org "
        "(or `winget install Python.Python.3.13`) and reinstall tunnelman with it, or set "
        "PGPASSFILE / PGSERVICEFILE in your user environment to a file outside %APPDATA%"
    )


# ----------------------------------------------------------------------------- sockets


def unix_sockets() -> bool:
    """Whether this Python can use Unix-domain sockets (not on Windows)."""
    return hasattr(socket, "AF_UNIX")


def socket_safe_tempdir(room: int, base: str | None = None) -> str | None:
    """A temp directory for `tempfile.mkdtemp(dir=…)` where `room` more bytes of path still fit
    a socket path: None (the default temp dir) when it fits, else "/tmp" (macOS's per-user
    $TMPDIR under /var/folders is too long for a PostgreSQL socket in a nested directory)."""
    import tempfile

    default = base or tempfile.gettempdir()
    if len(os.fsencode(default)) + room <= SUN_PATH_MAX:
        return None
    return "/tmp" if os.path.isdir("/tmp") else None


def link_is_trusted(st: os.stat_result) -> bool:
    """Whether a symlink with this lstat() may be written through: one of ours or root's.

    On Windows creating a symlink needs a privilege and st_uid means nothing: trusted.
    """
    if sys.platform == "win32":
        return True
    else:  # noqa: RET505 - the else keeps mypy --platform win32 from calling this unreachable
        return st.st_uid in (os.geteuid(), 0)


def keep_owner(fd: int, old: os.stat_result) -> None:
    """Give a rewritten file (open as `fd`) the owner of the file it replaces, where we may.

    Root rewriting a user's file must not leave it owned by root; Windows has no such owners.
    """
    if sys.platform != "win32":
        owner = (old.st_uid, old.st_gid)
        if owner != (os.geteuid(), os.getegid()):
            with contextlib.suppress(PermissionError):
                os.fchown(fd, *owner)
