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
import struct
import sys
from pathlib import Path

from tunnelman.core.errors import PortBusyError, TunnelError
from tunnelman.core.platform import net

__all__ = [
    "bind_error",
    "ensure_port_free",
    "established_on_loopback",
    "free_local_port",
    "listening_on_loopback",
    "loopback_traffic",
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


# sock_diag (netlink): the kernel's byte counts of TCP sockets, as `ss -ti` shows them.
_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST_DUMP = 0x1 | 0x300
_NLMSG_DONE, _NLMSG_ERROR = 3, 2
_INET_DIAG_INFO = 2
# ESTABLISHED, FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, LAST_ACK, CLOSING: the states with a tcp_info
_TCPF_OPEN = (1 << 1) | (1 << 4) | (1 << 5) | (1 << 8) | (1 << 9) | (1 << 11)
_TCPI_BYTES = struct.Struct("=QQ")  # tcpi_bytes_acked, tcpi_bytes_received
_TCPI_BYTES_AT = 120  # their offset in struct tcp_info (Linux ≥ 4.2)
_DIAG_MSG = struct.Struct("=BBBBHH16s16sIQIIIII")  # struct inet_diag_msg (72 bytes)


if sys.platform == "linux":

    def loopback_traffic(port: int) -> dict[int, tuple[int, int]] | None:
        """The sockets accepted on 127.0.0.1:`port` by other processes than this one, by cookie:
        (bytes they received from their client, bytes they sent it that the client acknowledged).

        For the OpenSSH engine's direct mode, where ssh owns the port: the bytes never pass through
        tunnelman. None where the kernel cannot be asked (not Linux, or no sock_diag).
        """
        try:
            replies = _sock_diag_dump()
        except OSError:
            return None
        ours = _own_socket_inodes()
        found: dict[int, tuple[int, int]] = {}
        for msg, info in replies:
            fields = _DIAG_MSG.unpack_from(msg)
            sport = socket.ntohs(fields[4])
            src = fields[6][:4]
            cookie, inode = fields[9], fields[14]
            if sport != port or src != b"\x7f\0\0\x01" or inode in ours:
                continue
            if info is None or len(info) < _TCPI_BYTES_AT + _TCPI_BYTES.size:
                return None  # a kernel without the byte counters
            acked, received = _TCPI_BYTES.unpack_from(info, _TCPI_BYTES_AT)
            found[cookie] = (received, acked)
        return found

    def _sock_diag_dump() -> list[tuple[bytes, bytes | None]]:
        """Every IPv4 TCP socket of the host that is established or closing: (inet_diag_msg, tcp_info)."""
        request = struct.pack(
            "=BBBBI4s4s16s16sI8s",
            socket.AF_INET,
            socket.IPPROTO_TCP,
            1 << (_INET_DIAG_INFO - 1),
            0,
            _TCPF_OPEN,
            b"", b"", b"", b"", 0, b"\xff" * 8,
        )  # fmt: skip
        header = struct.pack(
            "=IHHII", 16 + len(request), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST_DUMP, 1, 0
        )
        out: list[tuple[bytes, bytes | None]] = []
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as sock:
            sock.settimeout(2.0)
            sock.send(header + request)
            while True:
                data = sock.recv(1 << 16)
                offset = 0
                while offset + 16 <= len(data):
                    length, kind, _flags, _seq, _pid = struct.unpack_from("=IHHII", data, offset)
                    if length < 16:
                        return out
                    if kind == _NLMSG_DONE:
                        return out
                    if kind == _NLMSG_ERROR:
                        raise OSError(errno.EIO, "sock_diag refused the request")
                    body = data[offset + 16 : offset + length]
                    out.append(
                        (body[: _DIAG_MSG.size], _attribute(body, _DIAG_MSG.size, _INET_DIAG_INFO))
                    )
                    offset += (length + 3) & ~3

    def _attribute(body: bytes, start: int, wanted: int) -> bytes | None:
        """The payload of the netlink attribute of type `wanted` after `start`, if any."""
        offset = start
        while offset + 4 <= len(body):
            length, kind = struct.unpack_from("=HH", body, offset)
            if length < 4:
                return None
            if kind == wanted:
                return body[offset + 4 : offset + length]
            offset += (length + 3) & ~3
        return None

else:

    def loopback_traffic(port: int) -> dict[int, tuple[int, int]] | None:
        """Not Linux: the kernel's per-socket byte counts cannot be read (see the Linux one)."""
        return None


def _own_socket_inodes() -> set[int]:
    inodes: set[int] = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/self/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
    return inodes


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
