"""`core.files`: atomic writes, the regular-file and symlink rules, and each OS failure as one line.

Real files, real devices (/dev/null, /dev/full), a real FIFO and socket, a real 64 KiB tmpfs for a
full disk and a real unprivileged process for "permission denied". Every failure must leave the
file byte for byte as it was and no temporary file beside it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.lab import need
from tunnelman.core import files
from tunnelman.core.errors import ClientError, ConfigError, TunnelmanError

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file types")


def _listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def _no_temp_files(directory: Path) -> None:
    assert not [name for name in _listing(directory) if name.endswith(".tmp")]


# ----------------------------------------------------------------------------- the happy path


def test_new_file_is_0600_and_parents_are_made(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "f"
    assert files.atomic_write(path, "x") == path
    assert path.read_text() == "x"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700


def test_rewrite_keeps_mode_unless_given(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("x")
    path.chmod(0o640)
    files.atomic_write(path, "y")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    files.atomic_write(path, b"z", mode=0o600)
    assert path.read_bytes() == b"z"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    _no_temp_files(tmp_path)


def test_read_text_of_a_missing_file_is_none(tmp_path: Path) -> None:
    assert files.read_text(tmp_path / "nope") is None


def test_read_text_refuses_non_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1"
    path.write_bytes(b"caf\xe9\n")
    with pytest.raises(ClientError, match="not UTF-8 text"):
        files.read_text(path, error=ClientError)


# ----------------------------------------------------------------------------- symlinks


def test_a_symlink_is_written_through_keeping_the_link_and_the_mode(tmp_path: Path) -> None:
    real = tmp_path / "dotfiles" / "pgpass"
    real.parent.mkdir()
    real.write_text("old\n")
    real.chmod(0o640)
    hop = tmp_path / "hop"
    hop.symlink_to("dotfiles/pgpass")  # relative, resolved from the link's directory
    link = tmp_path / ".pgpass"
    link.symlink_to(hop)  # two links deep
    target = files.resolve_target(link)
    assert target.real == real.resolve()
    assert target.link == link
    assert files.atomic_write(link, "new\n") == real.resolve()
    assert link.is_symlink()
    assert hop.is_symlink()
    assert os.readlink(link) == str(hop)
    assert real.read_text() == "new\n"
    assert stat.S_IMODE(real.stat().st_mode) == 0o640
    assert files.read_text(link) == "new\n"
    _no_temp_files(tmp_path)
    _no_temp_files(real.parent)


def test_follow_links_false_refuses_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.write_text("keep")
    link = tmp_path / "f.bak"
    link.symlink_to(real)
    with pytest.raises(ClientError, match="is a symlink; tunnelman does not write through it"):
        files.atomic_write(link, "x", error=ClientError, follow_links=False)
    assert real.read_text() == "keep"
    assert link.is_symlink()


def test_dangling_link_and_loop_are_refused(tmp_path: Path) -> None:
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "missing")
    with pytest.raises(ConfigError, match="which does not exist"):
        files.atomic_write(dangling, "x")
    assert not (tmp_path / "missing").exists()
    (tmp_path / "loop1").symlink_to("loop2")
    (tmp_path / "loop2").symlink_to("loop1")
    with pytest.raises(ConfigError, match="a symlink loop") as info:
        files.atomic_write(tmp_path / "loop1", "x")
    assert "\n" not in str(info.value)
    assert (tmp_path / "loop1").is_symlink()
    # a loop in a parent directory: the kernel's ELOOP, same line
    with pytest.raises(ConfigError, match="a symlink loop"):
        files.atomic_write(tmp_path / "loop1" / "f", "x")
    assert _listing(tmp_path) == ["dangling", "loop1", "loop2"]


def test_a_link_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        need("root, to make a symlink owned by another user")
    real = tmp_path / "victim"
    real.write_text("keep\n")
    link = tmp_path / "planted"
    link.symlink_to(real)
    os.chown(link, 65534, 65534, follow_symlinks=False)
    with pytest.raises(ClientError, match="belongs to another user") as info:
        files.atomic_write(link, "x", error=ClientError)
    assert "name the file itself" in str(info.value)
    assert real.read_text() == "keep\n"


def test_root_rewriting_a_users_file_keeps_its_owner(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        need("root, to rewrite another user's file")
    path = tmp_path / "theirs"
    path.write_text("x")
    os.chown(path, 65534, 65534)
    files.atomic_write(path, "y")
    st = path.stat()
    assert (st.st_uid, st.st_gid) == (65534, 65534)


# ----------------------------------------------------------------------------- non-regular targets


@pytest.fixture
def specials(tmp_path: Path) -> Iterator[dict[str, Path]]:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    sock_path = tmp_path / "sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    directory = tmp_path / "dir"
    directory.mkdir()
    to_null = tmp_path / "to-null"
    to_null.symlink_to("/dev/null")
    try:
        yield {
            "a character device": Path("/dev/null"),
            "a FIFO (named pipe)": fifo,
            "a socket": sock_path,
            "a directory": directory,
            "symlink:a character device": to_null,
        }
    finally:
        sock.close()


def test_non_regular_targets_are_refused_without_opening(specials: dict[str, Path]) -> None:
    before = os.stat("/dev/null")
    for label, path in specials.items():
        expected = re.escape(f"{label.removeprefix('symlink:')}, not a regular file")
        # A FIFO nobody writes to would block open() for reading: refusing must not hang.
        with pytest.raises(ClientError, match=expected):
            files.read_text(path, error=ClientError)
        with pytest.raises(ClientError, match=expected):
            files.atomic_write(path, "x", error=ClientError)
    after = os.stat("/dev/null")
    assert stat.S_ISCHR(after.st_mode)
    assert (after.st_ino, after.st_rdev) == (before.st_ino, before.st_rdev)
    assert stat.S_ISFIFO(specials["a FIFO (named pipe)"].lstat().st_mode)
    assert stat.S_ISSOCK(specials["a socket"].lstat().st_mode)
    assert specials["symlink:a character device"].is_symlink()


def test_dev_full_is_refused_not_written(tmp_path: Path) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    with pytest.raises(ConfigError, match="a character device, not a regular file"):
        files.atomic_write("/dev/full", "x")
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


def test_a_parent_that_is_a_file(tmp_path: Path) -> None:
    parent = tmp_path / "plain"
    parent.write_text("keep")
    for path in (parent / "f", parent / "sub" / "f"):
        with pytest.raises(ClientError, match="a parent of it is not a directory"):
            files.atomic_write(path, "x", error=ClientError)
    assert parent.read_text() == "keep"
    assert _listing(tmp_path) == ["plain"]


# ----------------------------------------------------------------------------- I/O failures


@pytest.fixture
def tiny_fs() -> Iterator[Path]:
    """A 64 KiB tmpfs (root only), unmounted afterwards."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        need("root and mount(8), for a 64 KiB tmpfs")
    mnt = Path(tempfile.mkdtemp(prefix="tunnelman-tinyfs-"))
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        mnt.rmdir()
        need(f"mount -t tmpfs failed: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        mnt.rmdir()


def _fill(directory: Path) -> None:
    with (directory / "filler").open("ab", buffering=0) as fh, contextlib.suppress(OSError):
        while True:
            fh.write(b"\0" * 1024)


def test_a_full_disk_leaves_the_file_intact(tiny_fs: Path) -> None:
    path = tiny_fs / "servers.json"
    original = b'{"Servers": {}}\n'
    path.write_bytes(original)
    _fill(tiny_fs)
    with pytest.raises(ClientError, match="no space left on the device") as info:
        files.atomic_write(path, "x" * 20_000, error=ClientError)
    assert "free some space" in str(info.value)
    assert path.read_bytes() == original
    assert _listing(tiny_fs) == ["filler", "servers.json"]


def _unprivileged(fn: Callable[[], None]) -> str:
    """Run `fn` in a child as `nobody`; what it raised (a TunnelmanError's text) or 'ok'."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to nobody, report, exit without running pytest's teardown
        os.close(read_fd)
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            fn()
            result = "ok"
        except TunnelmanError as exc:
            result = f"{type(exc).__name__}: {exc}"
        except BaseException as exc:
            result = f"not a TunnelmanError: {exc!r}"
        os.write(write_fd, result.encode())
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as fh:
        text = fh.read().decode()
    os.waitpid(pid, 0)
    return text


def test_permission_denied_is_one_line(tmp_path: Path) -> None:
    base = Path(tempfile.mkdtemp(prefix="tunnelman-eacces-"))  # nobody must reach it
    try:
        base.chmod(0o755)
        ro = base / "ro"
        ro.mkdir(mode=0o555)
        path = ro / "pg_service.conf"
        path.write_text("[other]\nhost=x\n")
        path.chmod(0o444)
        ro.chmod(0o555)

        def write() -> None:
            files.atomic_write(path, "new", error=ClientError)

        if os.geteuid() == 0:
            said = _unprivileged(write)
        else:
            try:
                write()
                said = "ok"
            except TunnelmanError as exc:
                said = f"{type(exc).__name__}: {exc}"
        assert said.startswith(f"ClientError: {path}: cannot write it (permission denied)"), said
        assert path.read_text() == "[other]\nhost=x\n"
        assert _listing(ro) == ["pg_service.conf"]
    finally:
        shutil.rmtree(base)


def test_a_read_only_file_system(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        need("root and mount(8), for a read-only tmpfs")
    mnt = Path(tempfile.mkdtemp(prefix="tunnelman-rofs-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], check=True)
    try:
        (mnt / "f").write_text("keep")
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        with pytest.raises(ConfigError, match=r"cannot write it \(read-only file system\)"):
            files.atomic_write(mnt / "f", "x")
        assert (mnt / "f").read_text() == "keep"
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        mnt.rmdir()
