"""Client files: merge one profile's entry into the files clients read (`tunnelman conn --write`).

Called by the CLI's `conn --write` and the TUI. Each writer is an idempotent upsert keyed by the
profile name (pgpass: by host, port, database and user): other entries, comments and layout stay
as they were, the write is atomic (`core.files.atomic_write`), the previous file is kept next to it
as `FILE.bak` (owner-only, since a .pgpass holds passwords), and an unchanged file is not touched.
The merge functions are pure (text in, text out) so they are tested without files.

Which targets are written follows `core.files`: only regular files (a device, FIFO, socket or
directory is refused unopened); a symlink (a dotfiles-managed ~/.pgpass) is written through, so
the file it points to is rewritten in place, keeping its mode (a .pgpass: 0600), with the `.bak`
beside that file, the link kept, and `WriteResult.describe` saying so; a `.bak` that is not a
regular file is refused. Every failure is a `ClientError` and leaves the file as it was.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tunnelman.core import clients, files
from tunnelman.core.errors import ClientError
from tunnelman.core.platform import paths

if TYPE_CHECKING:
    from tunnelman.core.profiles import Profile

Action = Literal["added", "updated", "unchanged"]
_SECTION_RE = re.compile(r"^\s*\[(?P<name>[^\]]*)\]\s*$")


@dataclass(frozen=True)
class WriteResult:
    """What a writer did to which file."""

    path: Path  # the file written (the symlink's target when `link` is set)
    action: Action
    backup: Path | None = None
    link: Path | None = None  # the symlink named, when the write went through one

    def describe(self) -> str:
        """One line for a person."""
        via = f" (through the symlink {self.link}, left as it is)" if self.link else ""
        if self.action == "unchanged":
            return f"{self.path}: already up to date{via}"
        saved = f" (previous version kept as {self.backup})" if self.backup else ""
        return f"{self.path}: {self.action} the entry{saved}{via}"


# ----------------------------------------------------------------------------- where files live


def default_service_file() -> Path:
    """`$PGSERVICEFILE`, else ~/.pg_service.conf (Windows: %APPDATA%\\postgresql\\.pg_service.conf)."""
    return paths.service_file()


def default_pgpass_file() -> Path:
    """`$PGPASSFILE`, else ~/.pgpass (Windows: %APPDATA%\\postgresql\\pgpass.conf)."""
    return paths.pgpass_file()


# ----------------------------------------------------------------------------- pure merges


def _lines(text: str) -> list[str]:
    # Only "\n" (or "\r\n") ends a line for libpq. str.splitlines also breaks at \x0b, \x0c,
    # \x1c-\x1e, \x85, U+2028 and U+2029, which may sit inside a password or a name: splitting
    # there rewrote another entry's password and made a second identical write "updated".
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def _join(lines: list[str]) -> str:
    return "\n".join(lines) + "\n" if lines else ""


def merge_service(text: str, name: str, section: list[str]) -> tuple[str, Action]:
    """Put `section` (header line first) in place of the `[name]` section of a service file.

    The old section spans its header to its last `key=value` line; comments and blank lines after
    that belong to whatever follows and are kept.
    """
    lines = _lines(text)
    start = next(
        (i for i, line in enumerate(lines) if (m := _SECTION_RE.match(line)) and m["name"] == name),
        None,
    )
    if start is None:
        out = list(lines)
        if out and out[-1].strip():
            out.append("")
        return _join(out + section), "added"
    end = start + 1
    last_setting = start
    while end < len(lines) and not _SECTION_RE.match(lines[end]):
        stripped = lines[end].strip()
        if stripped and not stripped.startswith("#"):
            last_setting = end
        end += 1
    out = lines[:start] + section + lines[last_setting + 1 :]
    new = _join(out)
    return new, "unchanged" if new == _join(lines) else "updated"


def split_pgpass(line: str) -> list[str]:
    """The unescaped fields of one .pgpass line (`\\:` and `\\\\` escapes)."""
    fields: list[str] = []
    current: list[str] = []
    chars = iter(line)
    for ch in chars:
        if ch == "\\":
            current.append(next(chars, ""))
        elif ch == ":" and len(fields) < 4:
            fields.append("".join(current))
            current = []
        else:
            current.append(ch)
    fields.append("".join(current))
    return fields


def merge_pgpass(text: str, new_line: str) -> tuple[str, Action]:
    """Replace the first line with the same host:port:database:user as `new_line`, or append it."""
    key = split_pgpass(new_line)[:4]
    lines = _lines(text)
    for i, line in enumerate(lines):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if split_pgpass(line)[:4] == key:
            if line == new_line:
                return _join(lines), "unchanged"
            lines[i] = new_line
            return _join(lines), "updated"
    return _join([*lines, new_line]), "added"


def merge_pgadmin(
    text: str, server: dict[str, Any], *, where: str = "servers.json"
) -> tuple[str, Action]:
    """Upsert `server` into a servers.json document, keyed by Name within tunnelman's Group."""
    if text.strip():
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ClientError(f"{where}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("Servers", {}), dict):
            raise ClientError(f'{where}: not a pgAdmin servers file (no "Servers" object)')
        doc.setdefault("Servers", {})
    else:
        doc = {"Servers": {}}
    servers: dict[str, Any] = doc["Servers"]
    for key, existing in servers.items():
        if (
            isinstance(existing, dict)
            and existing.get("Name") == server["Name"]
            and existing.get("Group") == server["Group"]
        ):
            action: Action = "unchanged" if existing == server else "updated"
            servers[key] = server
            break
    else:
        numbers = [int(k) for k in servers if str(k).isdigit()]
        servers[str(max(numbers, default=0) + 1)] = server
        action = "added"
    return json.dumps(doc, indent=4, ensure_ascii=False) + "\n", action


def merge_qgis_xml(
    text: str, name: str, element_xml: str, *, where: str = "QGIS XML"
) -> tuple[str, Action]:
    """Upsert a `<postgis name=…>` element into a `qgsPgConnections` document."""
    from xml.dom import minidom
    from xml.parsers.expat import ExpatError

    if not text.strip():
        # Spelled as minidom spells it (`"` as &quot;), as the merge below writes it: otherwise a
        # second identical write would differ in quoting and count as "updated".
        new_el = minidom.parseString(element_xml).documentElement  # noqa: S318 (our own text)
        element = new_el.toxml() if new_el is not None else element_xml
        body = f'<!DOCTYPE connections>\n<qgsPgConnections version="1.0">\n    {element}\n</qgsPgConnections>\n'
        return body, "added"
    # The user's own file, parsed by expat (no external entities; expat ≥ 2.4 caps expansion).
    try:
        doc = minidom.parseString(text)  # noqa: S318
        new_el = minidom.parseString(element_xml).documentElement  # noqa: S318
    except ExpatError as exc:
        raise ClientError(f"{where}: not valid XML ({exc})") from None
    root = doc.documentElement
    if root is None or new_el is None:
        raise ClientError(f"{where}: no root element")
    if root.tagName != "qgsPgConnections":
        raise ClientError(
            f"{where}: the root element is <{root.tagName}>, not <qgsPgConnections>: "
            "not a QGIS PostgreSQL connections file"
        )
    imported = doc.importNode(new_el, True)
    action: Action = "added"
    for child in root.childNodes:
        if child.nodeType == child.ELEMENT_NODE and child.getAttribute("name") == name:
            action = "unchanged" if child.toxml() == imported.toxml() else "updated"
            root.replaceChild(imported, child)
            break
    else:
        last = root.lastChild
        indent = "\n    "
        if last is not None and last.nodeType == last.TEXT_NODE and not last.data.strip():
            root.insertBefore(doc.createTextNode(indent), last)
            root.insertBefore(imported, last)
        else:
            root.appendChild(doc.createTextNode(indent))
            root.appendChild(imported)
            root.appendChild(doc.createTextNode("\n"))
    out = doc.toxml()
    if not text.lstrip().startswith("<?xml"):
        out = re.sub(r"^<\?xml[^>]*\?>", "", out)
    # minidom drops the line breaks between the prolog's nodes (declaration, DOCTYPE, comments).
    root_at = out.index("<qgsPgConnections")
    prolog = out[:root_at].replace("><", ">\n<").strip()
    out = (prolog + "\n" if prolog else "") + out[root_at:]
    if not out.endswith("\n"):
        out += "\n"
    return out, action


# ----------------------------------------------------------------------------- writers


def _target(path: Path) -> files.Target:
    return files.resolve_target(path, error=ClientError)


def _read(target: files.Target) -> str | None:
    return files.read_text(target, error=ClientError)


def commit(
    target: files.Target, old: str | None, new: str, action: Action, *, mode: int | None = None
) -> WriteResult:
    """Write `new` atomically, keeping `old` as `PATH.bak` (0600); nothing when unchanged.

    `target` comes from `core.files.resolve_target`; the .bak goes beside the file written (the
    symlink's target) and is never written through a link itself.
    """
    path = target.real
    if old is not None and old == new:
        if mode is not None:
            files.chmod(target, mode, error=ClientError)
        return WriteResult(path, "unchanged", link=target.link)
    backup = None
    if old is not None:
        backup = path.with_name(path.name + ".bak")
        try:
            files.resolve_target(backup, error=ClientError, follow_links=False)
        except ClientError as exc:
            raise ClientError(
                f"{path}: left as it was: {exc.message}",
                hint=f"its previous version is kept as {backup.name}: move that away and retry",
            ) from None
        try:
            files.atomic_write(backup, old, mode=0o600, error=ClientError, follow_links=False)
        except ClientError as exc:
            raise ClientError(f"{path}: left as it was: {exc.message}", hint=exc.hint) from None
    files.atomic_write(path, new, mode=mode, error=ClientError)
    return WriteResult(path, "updated" if action == "unchanged" else action, backup, target.link)


def write_service(profile: Profile, port: int, *, path: Path | None = None) -> WriteResult:
    """Upsert `[profile.name]` into the user's pg_service.conf."""
    target = _target(path or default_service_file())
    old = _read(target)
    section = clients.service_section(profile, clients.conn_settings(profile, port))
    new, action = merge_service(old or "", profile.name, section)
    return commit(target, old, new, action)


def write_pgpass(
    profile: Profile, port: int, password: str, *, user: str | None = None, path: Path | None = None
) -> WriteResult:
    """Upsert this profile's line (host, port, database, user) into the user's .pgpass (0600)."""
    target = _target(path or default_pgpass_file())
    old = _read(target)
    s = clients.conn_settings(profile, port, user=user)
    line = clients.pgpass_line(s.host, s.port, s.dbname, s.user, password)
    new, action = merge_pgpass(old or "", line)
    # libpq ignores a password file that group or others can read.
    return commit(target, old, new, action, mode=0o600)


def write_pgadmin(
    profile: Profile,
    port: int,
    path: Path,
    *,
    pgadmin_ssh: bool = False,
    password_file: str | Path | None = None,
) -> WriteResult:
    """Upsert this profile's server into a pgAdmin servers.json (then import it in pgAdmin)."""
    target = _target(path)
    old = _read(target)
    s = clients.conn_settings(profile, port, password_file=password_file)
    server = clients.pgadmin_server(profile, s, pgadmin_ssh=pgadmin_ssh)
    new, action = merge_pgadmin(old or "", server, where=str(target.real))
    return commit(target, old, new, action)


def write_qgis_xml(profile: Profile, port: int, path: Path) -> WriteResult:
    """Upsert this profile's `<postgis>` element into a QGIS connections XML file."""
    target = _target(path)
    old = _read(target)
    s = clients.conn_settings(profile, port)
    element = clients.qgis_element_xml(profile, s)
    new, action = merge_qgis_xml(old or "", profile.name, element, where=str(target.real))
    return commit(target, old, new, action)
