"""Files: how tunnelman writes a file the user owns, and which targets it refuses.

Owns `atomic_write` (a temporary file beside the target, fsync, rename: a crash never leaves half
a file), `read_text` (read a file that may not exist yet, never blocking on a FIFO) and
`resolve_target` (the rules below). Every writer goes through here: profile saves
(`core.profiles`), `conn --write` (`core.client_files`) and the demo's .pgpass. The rules are:

- Only regular files are read or written. A directory, character or block device, FIFO or socket
  at the path is refused before anything opens it: `lstat` first, and reads open with O_NONBLOCK
  and O_NOFOLLOW, so a FIFO or link swapped in meanwhile cannot hang or redirect us. The rename
  re-checks the path, so `/dev/null` never becomes a regular file, even as root.
- A symlink is written through: dotfile managers (stow, yadm, chezmoi) link ~/.pgpass or
  ~/.pg_service.conf into a dotfiles repository, and replacing the link would silently fork the
  file. The file the chain of links ends at is rewritten atomically in its own directory, keeping
  its permission bits (unless the writer sets them: a .pgpass is always 0600) and its owner where
  we may; the link is left as it is, and callers name both in what they print. Each link in the
  chain must belong to the user running tunnelman or to root (the kernel's protected_symlinks
  idea), so a link someone else planted, in /tmp or as a user whose home root writes into, cannot
  redirect the write; a dangling link, a link to something that is not a regular file, and a loop
  are refused. A writer can also refuse links outright (`follow_links=False`, used for `.bak`).
- Every failure is one `TunnelmanError` (the caller picks the class: `ConfigError` for the profile
  file, `ClientError` for client files) naming the path and the cause: no space left, permission
  denied, read-only file system, a parent that is not a directory, a symlink loop. The file at the
  path is then exactly as it was and no temporary file is left behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from tunnelman.core.errors import ConfigError, TunnelmanError
from tunnelman.core.platform import paths

# Linux's own limit on links followed while resolving one path.
_MAX_LINKS = 40

_WHY = {
    errno.ENOSPC: "no space left on the device",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "read-only file system",
    errno.ENOTDIR: "a parent of it is not a directory",
    errno.ELOOP: "a symlink loop, or too many levels of links",
    errno.EISDIR: "is a directory",
    errno.ENAMETOOLONG: "the name is too long",
    errno.EEXIST: "a parent of it is not a directory",  # mkdir(exist_ok) on a file
    errno.EIO: "input/output error",
}
_HINTS = {
    errno.ENOSPC: "free some space and run it again",
    errno.EACCES: "check the file's and its directory's permissions",
    errno.EPERM: "check the file's and its directory's permissions",
    errno.ENOTDIR: "name a path whose parents are directories",
    errno.EEXIST: "name a path whose parents are directories",
    errno.ELOOP: "fix or remove the link",
}
if hasattr(errno, "EDQUOT"):  # not on Windows
    _WHY[errno.EDQUOT] = "disk quota exceeded"
    _HINTS[errno.EDQUOT] = _HINTS[errno.ENOSPC]


def why(exc: OSError) -> str:
    """A short human cause for an OSError (no errno numbers, no Python names)."""
    if exc.errno in _WHY:
        return _WHY[exc.errno]
    return (exc.strerror or type(exc).__name__).lower()


def _fail(error: type[TunnelmanError], path: Path, verb: str, exc: OSError) -> TunnelmanError:
    return error(f"{path}: cannot {verb} it ({why(exc)})", hint=_HINTS.get(exc.errno or 0))


def file_kind(mode: int) -> str:
    """What a non-regular file is, for messages: 'a directory', 'a FIFO (named pipe)', …"""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


@dataclass(frozen=True)
class Target:
    """Where a write named `named` lands: `real`, the regular file (or new path) it resolves to."""

    named: Path
    real: Path
    st: os.stat_result | None  # the real file's lstat; None when it does not exist yet

    @property
    def link(self) -> Path | None:
        """The symlink the caller named, when the write goes through one."""
        return self.named if self.real != self.named else None


def resolve_target(
    path: str | os.PathLike[str],
    *,
    error: type[TunnelmanError] = ConfigError,
    follow_links: bool = True,
) -> Target:
    """Apply the rules of this module to `path` without opening anything; raise `error` if refused."""
    named = Path(path).expanduser()
    current = named
    for _ in range(_MAX_LINKS + 1):
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            if current != named:
                raise error(
                    f"{named}: a symlink to {current}, which does not exist",
                    hint="create the file it points to, or remove the link",
                ) from None
            return Target(named, named, None)
        except OSError as exc:
            raise _fail(error, named, "use", exc) from None
        if stat.S_ISLNK(st.st_mode):
            if not follow_links:
                raise error(
                    f"{named}: is a symlink; tunnelman does not write through it",
                    hint="move it away",
                )
            if not paths.link_is_trusted(st):
                raise error(
                    f"{named}: the symlink {current} belongs to another user (uid {st.st_uid}); "
                    "tunnelman writes only through your own links",
                    hint="name the file itself, or remove the link",
                )
            try:
                current = current.parent / os.readlink(current)
            except OSError as exc:
                raise _fail(error, named, "use", exc) from None
            continue
        if not stat.S_ISREG(st.st_mode):
            what = file_kind(st.st_mode)
            if current == named:
                raise error(
                    f"{named}: is {what}, not a regular file; tunnelman writes only regular files",
                    hint="name a regular file, or a new path",
                )
            raise error(
                f"{named}: a symlink to {current}, which is {what}, not a regular file",
                hint="name a regular file, or a new path",
            )
        real = named if current == named else Path(os.path.realpath(current))
        return Target(named, real, st)
    raise error(f"{named}: cannot use it ({_WHY[errno.ELOOP]})", hint=_HINTS[errno.ELOOP])


def read_text(
    path: str | os.PathLike[str] | Target,
    *,
    error: type[TunnelmanError] = ConfigError,
    follow_links: bool = True,
) -> str | None:
    """The UTF-8 text of a regular file, or None when there is none yet."""
    target = (
        path
        if isinstance(path, Target)
        else resolve_target(path, error=error, follow_links=follow_links)
    )
    if target.st is None:
        return None
    where = target.real
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
    flags |= getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(where, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _fail(error, target.named, "read", exc) from None
    try:
        with os.fdopen(fd, "rb") as fh:
            mode = os.fstat(fh.fileno()).st_mode
            if not stat.S_ISREG(mode):
                raise error(
                    f"{target.named}: is {file_kind(mode)}, not a regular file; "
                    "tunnelman reads only regular files",
                    hint="name a regular file, or a new path",
                )
            data = fh.read()
    except OSError as exc:
        raise _fail(error, target.named, "read", exc) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{target.named}: not UTF-8 text; refusing to rewrite it") from None


def atomic_write(
    path: str | os.PathLike[str],
    data: str | bytes,
    *,
    mode: int | None = None,
    error: type[TunnelmanError] = ConfigError,
    follow_links: bool = True,
) -> Path:
    """Write `data` to `path` atomically (temp file in the same dir, fsync, rename).

    Follows this module's rules (regular files only; symlinks written through, or refused with
    `follow_links=False`) and returns the file actually written. The new file keeps the old file's
    permission bits unless `mode` is given (new files: 0600) and, when we may, its owner. Missing
    parent directories are created (0700). On failure `error` is raised and nothing changed.
    """
    target = resolve_target(path, error=error, follow_links=follow_links)
    real = target.real
    old = target.st
    if mode is None:
        mode = stat.S_IMODE(old.st_mode) if old is not None else 0o600
    payload = data.encode("utf-8") if isinstance(data, str) else data
    tmp: str | None = None
    try:
        _make_parents(real.parent)
        import tempfile  # only writes need it (reads are on the warm path)

        fd, tmp = tempfile.mkstemp(prefix=f".{real.name}.", suffix=".tmp", dir=real.parent)
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
            if old is not None:
                paths.keep_owner(fh.fileno(), old)
        os.chmod(tmp, mode)
        # The path may have changed since it was checked: never rename over a device or a FIFO.
        _recheck(target, error)
        os.replace(tmp, real)
        tmp = None
    except OSError as exc:
        raise _fail(error, target.named, "write", exc) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return real


def _make_parents(directory: Path) -> None:
    # Path.mkdir(parents=True) gives only the last directory `mode`; every one made here is 0700.
    missing: list[Path] = []
    while not directory.exists() and directory != directory.parent:
        missing.append(directory)
        directory = directory.parent
    for d in reversed(missing):
        d.mkdir(mode=0o700, exist_ok=True)


def _recheck(target: Target, error: type[TunnelmanError]) -> None:
    try:
        st = os.lstat(target.real)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(st.st_mode):
        raise error(
            f"{target.named}: is {file_kind(st.st_mode)} now, not a regular file; left as it is",
            hint="name a regular file, or a new path",
        )


def chmod(target: Target, mode: int, *, error: type[TunnelmanError] = ConfigError) -> None:
    """Set a resolved regular file's permission bits (nothing when they are already `mode`)."""
    try:
        if target.st is not None and stat.S_IMODE(target.st.st_mode) == mode:
            return
        os.chmod(target.real, mode)
    except OSError as exc:
        raise _fail(error, target.named, "change the mode of", exc) from None
