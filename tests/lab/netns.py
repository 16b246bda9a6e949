"""Network namespaces: a private "VPC" on one machine (root only).

``NetnsPair`` creates two namespaces, ``bastion`` and ``db``, joined by a veth pair on
198.18.<n>.0/30 (the "private" link), plus by default an "uplink" veth from the test's own
(root) namespace to ``bastion``.  Put sshd in ``bastion`` and PostgreSQL in ``db``: the
database is then reachable only through the bastion, and ``link_down("uplink")`` takes the
bastion away from the client, ``link_up`` brings it back::

    with NetnsPair() as net:
        bastion = Sshd(host=net.bastion_addr, netns=net.bastion.name)
        pg = Postgres(host=net.db_addr, netns=net.db.name)

Addresses come only from 198.18.0.0/15 (RFC 2544, reserved for such tests); every namespace
and interface is one this module created (``tmlab…`` names) and is deleted by ``close()``.
Interface names stay within the kernel's 15 characters.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Self

from tests.lab import procs

__all__ = ["LAB_NET", "Netns", "NetnsPair", "VethLink", "netns_missing", "tcp_probe"]

LAB_NET = ipaddress.ip_network("198.18.0.0/15")
_counter = itertools.count()


def netns_missing() -> str | None:
    """A reason why network namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 not installed (apt-get install iproute2)"
    name = f"tmlab{os.getpid()}p"
    res = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        return f"ip netns add failed: {res.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if check and res.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {res.stderr.strip()}")
    return res


@dataclass(frozen=True)
class Netns:
    """A network namespace made by the lab."""

    name: str

    def argv(self, argv: Sequence[str]) -> list[str]:
        """``ip netns exec <name> …argv``."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """``subprocess.run`` inside the namespace (default: 30 s timeout, output captured)."""
        kwargs.setdefault("timeout", 30)
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        kwargs.setdefault("check", False)
        return subprocess.run(self.argv(argv), **kwargs)  # noqa: PLW1510

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """``subprocess.Popen`` inside the namespace; the caller stops it."""
        return subprocess.Popen(self.argv(argv), **kwargs)


@dataclass(frozen=True)
class VethLink:
    """A veth pair: ``dev_a`` in ``ns_a`` (None: the test's own namespace), ``dev_b`` in ``ns_b``."""

    dev_a: str
    dev_b: str
    ns_a: Netns | None
    ns_b: Netns
    addr_a: str
    addr_b: str
    prefix: int

    def down(self) -> None:
        """Cut the link (both ends lose carrier; packets are dropped, not refused)."""
        _ip("-n", self.ns_b.name, "link", "set", "dev", self.dev_b, "down")

    def up(self) -> None:
        _ip("-n", self.ns_b.name, "link", "set", "dev", self.dev_b, "up")
        # Routes of a downed interface are flushed: restore the connected route if needed.
        _ip("-n", self.ns_b.name, "addr", "replace", f"{self.addr_b}/{self.prefix}",
            "dev", self.dev_b)  # fmt: skip


def _pick_subnet(seed: int) -> int:
    """A third octet n for 198.18.n.0/24 that no route here uses yet."""
    used = _ip("route", "show", "root", "198.18.0.0/15", check=False).stdout
    for i in range(250):
        n = (seed + i) % 250 + 1
        if f"198.18.{n}." not in used:
            return n
    raise RuntimeError("no free 198.18.n.0/24 for a namespace pair")


def tcp_probe(ns: Netns | None, host: str, port: int, timeout: float = 1.0) -> bool:
    """True when a TCP connection from namespace ``ns`` (None: here) to host:port succeeds."""
    code = (
        "import socket,sys\n"
        f"try: socket.create_connection(({host!r}, {port}), timeout={timeout}).close()\n"
        "except OSError: sys.exit(1)\n"
    )
    argv = [sys.executable, "-c", code]
    if ns is not None:
        argv = ns.argv(argv)
    res = subprocess.run(argv, capture_output=True, timeout=timeout + 20, check=False)
    return res.returncode == 0


class NetnsPair:
    """Namespaces ``bastion`` and ``db`` joined by ``private``; ``uplink`` joins the test's
    namespace to ``bastion`` (``uplink=False`` leaves the pair unreachable from here).

    Addresses (``subnet`` n, default picked per instance): uplink 198.18.n.1 (here) /
    198.18.n.2 (bastion); private 198.18.n.5 (bastion) / 198.18.n.6 (db).  The rest of
    198.18.n.0/24 is an ``unreachable`` route here, so the db cannot be reached directly.
    """

    def __init__(self, *, uplink: bool = True, subnet: int | None = None) -> None:
        n = next(_counter)
        self._picked = subnet is None
        self.subnet = subnet if subnet is not None else _pick_subnet(os.getpid() + n)
        tag = f"{os.getpid() % 100000}{n}"
        self.bastion = Netns(f"tmlab{tag}b")
        self.db = Netns(f"tmlab{tag}d")
        self._tag = tag
        self._want_uplink = uplink
        self.uplink: VethLink | None = None
        self.private: VethLink | None = None
        self._created: list[Netns] = []
        self._blackhole: str | None = None

    @property
    def host_addr(self) -> str:
        """This (root) namespace's end of the uplink."""
        return f"198.18.{self.subnet}.1"

    @property
    def bastion_addr(self) -> str:
        """The bastion's uplink address: where sshd listens."""
        return f"198.18.{self.subnet}.2"

    @property
    def bastion_private_addr(self) -> str:
        return f"198.18.{self.subnet}.5"

    @property
    def db_addr(self) -> str:
        """The database's address, reachable from the bastion only."""
        return f"198.18.{self.subnet}.6"

    def __enter__(self) -> Self:
        self.create()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def create(self) -> None:
        for addr in (self.host_addr, self.db_addr):
            if ipaddress.ip_address(addr) not in LAB_NET:
                raise ValueError(f"{addr} is outside {LAB_NET}")
        procs.on_exit(self.close)
        try:
            # Without this, packets to the db's /30 would follow the default route out of the
            # machine (and a sandbox proxy may even "accept" them): make them fail here.
            self._claim_subnet()
            for ns in (self.bastion, self.db):
                _ip("netns", "add", ns.name)
                self._created.append(ns)
                _ip("-n", ns.name, "link", "set", "dev", "lo", "up")
            self.private = self._veth(
                f"tmv{self._tag}p", self.bastion, self.bastion_private_addr,
                f"tmv{self._tag}q", self.db, self.db_addr,
            )  # fmt: skip
            if self._want_uplink:
                self.uplink = self._veth(
                    f"tmv{self._tag}u", None, self.host_addr,
                    f"tmv{self._tag}v", self.bastion, self.bastion_addr,
                )  # fmt: skip
        except BaseException:
            self.close()
            raise

    def _claim_subnet(self) -> None:
        # `ip route add` fails when the route exists: the claim is atomic, so two test processes
        # (xdist workers) that picked the same free subnet at once cannot both have it.
        for attempt in range(20):
            blackhole = f"198.18.{self.subnet}.0/24"
            res = _ip("route", "add", "unreachable", blackhole, check=False)
            if res.returncode == 0:
                self._blackhole = blackhole
                return
            if not self._picked or "exists" not in res.stderr.lower():
                raise RuntimeError(f"ip route add unreachable {blackhole}: {res.stderr.strip()}")
            self.subnet = _pick_subnet(self.subnet + attempt + 1)
        raise RuntimeError("no free 198.18.n.0/24 for a namespace pair")

    def _veth(
        self, dev_a: str, ns_a: Netns | None, addr_a: str, dev_b: str, ns_b: Netns, addr_b: str
    ) -> VethLink:
        if max(len(dev_a), len(dev_b)) > 15:
            raise ValueError("interface name too long")
        _ip("link", "add", dev_a, "type", "veth", "peer", "name", dev_b)
        try:
            if ns_a is not None:
                _ip("link", "set", "dev", dev_a, "netns", ns_a.name)
            _ip("link", "set", "dev", dev_b, "netns", ns_b.name)
            pre_a = ["-n", ns_a.name] if ns_a is not None else []
            _ip(*pre_a, "addr", "add", f"{addr_a}/30", "dev", dev_a)
            _ip(*pre_a, "link", "set", "dev", dev_a, "up")
            _ip("-n", ns_b.name, "addr", "add", f"{addr_b}/30", "dev", dev_b)
            _ip("-n", ns_b.name, "link", "set", "dev", dev_b, "up")
        except BaseException:
            if ns_a is None:
                _ip("link", "del", dev_a, check=False)
            raise
        return VethLink(dev_a, dev_b, ns_a, ns_b, addr_a, addr_b, 30)

    def _link(self, which: Literal["uplink", "private"]) -> VethLink:
        link = self.uplink if which == "uplink" else self.private
        if link is None:
            raise RuntimeError(f"no {which} link")
        return link

    def link_down(self, which: Literal["uplink", "private"] = "uplink") -> None:
        """Cut the bastion's link to the client (``uplink``) or to the db (``private``)."""
        self._link(which).down()

    def link_up(self, which: Literal["uplink", "private"] = "uplink") -> None:
        self._link(which).up()

    def close(self) -> None:
        """Kill anything still running in the namespaces, delete them and their links."""
        procs.on_exit_cancel(self.close)
        if self.uplink is not None:
            _ip("link", "del", self.uplink.dev_a, check=False)
            self.uplink = None
        if self._blackhole is not None:
            _ip("route", "del", "unreachable", self._blackhole, check=False)
            self._blackhole = None
        for ns in reversed(self._created):
            res = _ip("netns", "pids", ns.name, check=False)
            pids = [int(p) for p in res.stdout.split() if p.isdigit()]
            with contextlib.suppress(Exception):
                procs.kill_tree(pids, 15, timeout=3)
            _ip("netns", "del", ns.name, check=False)
        self._created.clear()
        self.private = None
