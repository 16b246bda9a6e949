"""Local ports: is 127.0.0.1:PORT free, and if not, which process holds it; a free port; who listens.

Called by both engines before they connect (so a busy port fails in milliseconds, before any SSH
work) and when binding fails, and by the CLI to name a port's holder. The holder is found the way
`ss -ltnp` does it, from /proc/net/tcp{,6} (listening sockets and their inodes: the one parser of
those tables here) and /proc/PID/fd (who owns the inode); on systems without /proc, or for another
user's process, the message just names the port.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from pathlib import Path

from tunnelman.core.errors import PortBusyError, TunnelError
from tunnelman.core.platform import net

__all__ = [
    "bind_error",
    "ensure_port_free",
    "established_on_loopback",
    "free_local_port",
    "listening_on_loopback",
    "port_busy_error",
    "port_holder",
    "port_holder_pid",
    "process_argv",
]

_LISTEN = "0A"
_ESTABLISHED = "01"
_LOOPBACK_HEX = "0100007F"  # 127.0.0.1 as /proc/net/tcp writes it (little-endian hex)


def _listeners(port: int, proc: Path) -> list[tuple[str, str]] | None:
    """(local address in hex, socket inode) of every TCP socket listening on `port`.

    None when neither table can be read (no /proc: macOS, Windows).
    """
    found: list[tuple[str, str]] = []
    readable = False
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        readable = True
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != _LISTEN:
                continue
            addr, _, port_hex = fields[1].rpartition(":")
            with contextlib.suppress(ValueError):
                if int(port_hex, 16) == port:
                    found.append((addr, fields[9]))
    return found if readable else None


def _listening_inodes(port: int, proc: Path) -> set[str]:
    return {inode for _addr, inode in _listeners(port, proc) or []}


def established_on_loopback(port: int, *, proc: Path = Path("/proc")) -> int | None:
    """How many connections 127.0.0.1:`port` has accepted and not closed (None: no /proc)."""
    try:
        lines = (proc / "net" / "tcp").read_text().splitlines()[1:]
    except OSError:
        return None
    wanted = f"{_LOOPBACK_HEX}:{port:04X}"
    return sum(
        1
        for fields in (line.split() for line in lines)
        if len(fields) > 3 and fields[1] == wanted and fields[3] == _ESTABLISHED
    )


def listening_on_loopback(port: int, *, proc: Path = Path("/proc")) -> bool | None:
    """Whether a socket listens on 127.0.0.1:`port` (None: this system has no /proc to tell)."""
    found = _listeners(port, proc)
    if found is None:
        return None
    return any(addr == _LOOPBACK_HEX for addr, _inode in found)


def free_local_port() -> int:
    """A port 127.0.0.1 can listen on right now (for callers that must know it in advance)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _describe_process(pid: str, proc: Path) -> str:
    name = ""
    with contextlib.suppress(OSError):
        name = (proc / pid / "comm").read_text().strip()
    cmdline = ""
    with contextlib.suppress(OSError):
        cmdline = (proc / pid / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    if cmdline and len(cmdline) > 80:
        cmdline = cmdline[:77] + "…"
    if name and cmdline and not cmdline.startswith(name):
        return f"pid {pid} ({name}: {cmdline})"
    return f"pid {pid} ({cmdline or name or '?'})"


def port_holder(port: int, *, proc: Path = Path("/proc")) -> str | None:
    """'pid 1234 (postgres …)' for the process listening on TCP `port`, or None if not found."""
    pid = port_holder_pid(port, proc=proc)
    return None if pid is None else _describe_process(str(pid), proc)


def process_argv(pid: int, *, proc: Path = Path("/proc")) -> list[str] | None:
    """The command line of process `pid`, or None when it cannot be read (gone, no /proc)."""
    try:
        raw = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return None
    return [os.fsdecode(part) for part in raw.split(b"\0") if part] or None


def port_holder_pid(port: int, *, proc: Path = Path("/proc")) -> int | None:
    """The pid of the process listening on TCP `port`, or None if not found."""
    inodes = _listening_inodes(port, proc)
    if not inodes:
        return None
    wanted = {f"socket:[{inode}]" for inode in inodes if inode != "0"}
    try:
        pids = [p.name for p in proc.iterdir() if p.name.isdigit()]
    except OSError:
        return None
    for pid in pids:
        fd_dir = proc / pid / "fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd_dir / fd)
            except OSError:
                continue
            if target in wanted:
                return int(pid)
    return None


def port_busy_error(port: int, host: str = "127.0.0.1") -> PortBusyError:
    """The error for a busy local port, naming the holder when it can be found."""
    pid = port_holder_pid(port)
    holder = None if pid is None else _describe_process(str(pid), Path("/proc"))
    by = f" by {holder}" if holder else " by another program"
    return PortBusyError(
        f"local port {port} is already in use{by}",
        hint=(
            "pick another port with --port N or local_port in the profile, or stop that program"
            + ("; a local PostgreSQL?" if port in (5432, 5433) else "")
        ),
        port=port,
        pid=pid,
    )


def bind_error(port: int, exc: OSError, host: str = "127.0.0.1") -> TunnelError:
    """A TunnelmanError for a failed bind of `host`:`port`."""
    if exc.errno == errno.EADDRINUSE:
        return port_busy_error(port, host)
    if exc.errno == errno.EACCES:
        return TunnelError(
            f"not allowed to listen on {host}:{port} (permission denied)",
            hint="ports below 1024 need root: use a port such as 5433",
        )
    if net.port_reserved(exc):
        return TunnelError(
            f"not allowed to listen on {host}:{port} (Windows reserves it, or another program "
            "holds it exclusively)",
            hint="use another port (--port or local_port); `netsh interface ipv4 show "
            "excludedportrange protocol=tcp` lists the reserved ones",
        )
    return TunnelError(f"cannot listen on {host}:{port}: {exc.strerror or exc}")


def ensure_port_free(port: int, host: str = "127.0.0.1") -> None:
    """Raise PortBusyError (naming the holder) unless `host`:`port` can be bound right now."""
    if not port:
        return
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        # The same option the forward server uses, so the answer matches what it will see.
        net.prepare_listener(sock)
        sock.bind((host, port))
    except OSError as exc:
        raise bind_error(port, exc, host) from None
    finally:
        sock.close()
