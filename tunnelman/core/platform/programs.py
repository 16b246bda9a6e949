"""Client programs: find `psql`, `pg_dump`, … on PATH, then where the installers put them.

Called by `core.oneshot` (psql / exec) before any SSH work. Linux keeps to PATH, as before. The
PostgreSQL installers elsewhere leave their tools off PATH:

- Windows: the EDB installer's `<Program Files>\\PostgreSQL\\<version>\\bin` (from %ProgramFiles%,
  %ProgramW6432% and %ProgramFiles(x86)%, default `C:\\Program Files`), newest version first;
  PostGIS's bundle (shp2pgsql, raster2pgsql) lands in the same directory.
- macOS: Homebrew's keg-only `libpq` (`/opt/homebrew/opt/libpq/bin` on Apple silicon,
  `/usr/local/opt/libpq/bin` on Intel), Postgres.app (`Versions/latest/bin`), then Homebrew's
  `postgresql@N` kegs, newest first.

The search is pure over its inputs (`system`, `env`, `root`: a fake filesystem root in tests), and
a miss says where it looked and how to install the tools for that OS. Also here, for the demo:
whether a process id still runs (`os.kill(pid, 0)` would terminate it on Windows).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path, PurePath, PureWindowsPath

__all__ = [
    "PG_TOOLS",
    "essential_env",
    "executable_name",
    "install_dirs",
    "install_hint",
    "pid_alive",
    "search",
    "system_name",
    "where_looked",
]

_WINDOWS_DEFAULT = r"C:\Program Files"
_WINDOWS_VARS = ("ProgramFiles", "ProgramW6432", "ProgramFiles(x86)")
_DEFAULT_PATHEXT = ".COM;.EXE;.BAT;.CMD"
_MAC_FIXED = (
    "/opt/homebrew/opt/libpq/bin",  # Homebrew, Apple silicon (keg-only: not linked into PATH)
    "/usr/local/opt/libpq/bin",  # Homebrew, Intel
    "/Applications/Postgres.app/Contents/Versions/latest/bin",
)
_MAC_KEGS = ("/opt/homebrew/opt", "/usr/local/opt")


def system_name() -> str:
    """The running OS as this package names it: "win32", "darwin" or "linux" (any other POSIX)."""
    # A lookup, not `if sys.platform == …`: mypy --platform would call the other branches dead.
    return {"win32": "win32", "darwin": "darwin"}.get(sys.platform, "linux")


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(d) for d in re.findall(r"\d+", name)) or (0,)


def _under(root: Path | None, absolute: str) -> Path:
    return Path(absolute) if root is None else root / absolute.lstrip("/")


def _children_newest_first(parent: Path, pattern: str) -> list[Path]:
    try:
        entries = [p for p in parent.iterdir() if re.fullmatch(pattern, p.name)]
    except OSError:
        return []
    return sorted(entries, key=lambda p: _version_key(p.name), reverse=True)


def _windows_program_dirs(env: Mapping[str, str]) -> list[str]:
    found: list[str] = []
    for var in _WINDOWS_VARS:
        value = env.get(var)
        if value and value not in found:
            found.append(value)
    return found or [_WINDOWS_DEFAULT]


def install_dirs(
    system: str | None = None, env: Mapping[str, str] | None = None, root: Path | None = None
) -> list[Path]:
    """Bin directories PostgreSQL installers use on `system`, most preferred first.

    Only directories that exist are returned. `root` re-bases the fixed macOS paths (tests);
    Windows paths come from `env` (%ProgramFiles% and friends), so tests point those at a tree.
    """
    system = system or system_name()
    env = os.environ if env is None else env
    out: list[Path] = []
    if system == "win32":
        for base in _windows_program_dirs(env):
            for version in _children_newest_first(Path(base) / "PostgreSQL", r"\d[\w.]*"):
                out.append(version / "bin")
    elif system == "darwin":
        out += [_under(root, p) for p in _MAC_FIXED]
        for keg_root in _MAC_KEGS:
            kegs = _children_newest_first(_under(root, keg_root), r"postgresql@\d[\w.]*")
            out += [keg / "bin" for keg in kegs]
    seen: list[Path] = []
    for path in out:
        if path.is_dir() and path not in seen:
            seen.append(path)
    return seen


def where_looked(system: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """The places `search` tries after PATH, as a person reads them ("" on Linux)."""
    system = system or system_name()
    env = os.environ if env is None else env
    if system == "win32":
        bases = _windows_program_dirs(env)
        return ", ".join(str(PureWindowsPath(b, "PostgreSQL", "<version>", "bin")) for b in bases)
    if system == "darwin":
        kegs = ", ".join(f"{k}/postgresql@<N>/bin" for k in _MAC_KEGS)
        return ", ".join(_MAC_FIXED) + ", " + kegs
    return ""


PG_TOOLS = frozenset(
    {
        "psql",
        "pg_dump",
        "pg_dumpall",
        "pg_restore",
        "pg_isready",
        "pgbench",
        "createdb",
        "dropdb",
        "createuser",
        "dropuser",
        "vacuumdb",
        "reindexdb",
        "clusterdb",
        "pg_basebackup",
    }
)
"""The PostgreSQL client tools: what the installers below put in their bin directory."""

_HINTS = {
    "win32": (
        "install the 'Command Line Tools' of the PostgreSQL installer from "
        "https://www.postgresql.org/download/windows/; tunnelman finds them under Program Files "
        "without a PATH change"
    ),
    "darwin": (
        "install PostgreSQL's client tools: `brew install libpq` (no `brew link` needed: tunnelman "
        "finds the keg) or Postgres.app from https://postgresapp.com"
    ),
}


def install_hint(name: str, system: str | None = None) -> str | None:
    """How to install the PostgreSQL tool `name` on `system`; None elsewhere (Linux: the
    caller's own hints) or for a program that is not one of `PG_TOOLS`."""
    if os.path.splitext(name)[0].lower() not in PG_TOOLS:
        return None
    return _HINTS.get(system or system_name())


def executable_name(name: str, system: str | None = None) -> str:
    """The file name of program `name` in a bin directory: `name.exe` on Windows."""
    return f"{name}.exe" if (system or system_name()) == "win32" else name


def _executable(path: Path, system: str) -> bool:
    if not path.is_file():
        return False
    return system == "win32" or os.access(path, os.X_OK)


def _names(name: str, system: str, env: Mapping[str, str]) -> list[str]:
    if system != "win32" or PurePath(name).suffix:
        return [name]
    exts = [e for e in env.get("PATHEXT", _DEFAULT_PATHEXT).split(";") if e]
    return [name + ext.lower() for ext in exts]


def search(
    name: str,
    path: str | None = None,
    *,
    system: str | None = None,
    env: Mapping[str, str] | None = None,
    root: Path | None = None,
) -> str | None:
    """The full path of `name`: on PATH (`path`, default $PATH), else in `install_dirs`; or None.

    A name with a directory part is only checked where it points, as `shutil.which` does.
    """
    found = shutil.which(name, path=path)
    if found:
        return found
    system = system or system_name()
    env = os.environ if env is None else env
    if "/" in name or os.sep in name or (system == "win32" and "\\" in name):
        return None
    for directory in install_dirs(system, env, root):
        for candidate in _names(name, system, env):
            full = directory / candidate
            if _executable(full, system):
                return str(full)
    return None


# ----------------------------------------------------------------------------- processes

_WINDOWS_ESSENTIAL = ("SYSTEMROOT", "SYSTEMDRIVE", "WINDIR", "TEMP", "TMP", "USERPROFILE")


def essential_env(
    environ: Mapping[str, str] | None = None, system: str | None = None
) -> dict[str, str]:
    """The variables a child given a minimal environment still needs to start on `system`:
    on Windows SYSTEMROOT and friends (without them Winsock and the C runtime fail: a
    PostgreSQL server cannot open its socket); nothing elsewhere."""
    environ = os.environ if environ is None else environ
    if (system or system_name()) != "win32":
        return {}
    upper = {k.upper(): v for k, v in environ.items()}
    return {k: upper[k] for k in _WINDOWS_ESSENTIAL if k in upper}


def _windows_pid_alive(pid: int) -> bool:
    import ctypes

    windll = getattr(ctypes, "windll", None)
    if windll is None:
        return True
    kernel32 = windll.kernel32
    process_query_limited_information = 0x1000
    still_active = 259
    handle = kernel32.OpenProcess(process_query_limited_information, False, pid)
    if not handle:
        # ERROR_ACCESS_DENIED (5): it exists but belongs to someone else.
        return bool(kernel32.GetLastError() == 5)
    try:
        code = ctypes.c_ulong()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return True
        return code.value == still_active
    finally:
        kernel32.CloseHandle(handle)


def pid_alive(pid: int, system: str | None = None) -> bool:
    """Whether process `pid` exists (someone else's counts); never sends it anything."""
    if pid <= 0:
        return False
    if (system or system_name()) == "win32":
        return _windows_pid_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True
