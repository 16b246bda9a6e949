"""Helpers for the TUI tests: waiting in a Pilot, reading widgets, a hanging bastion, stand-ins.

`FakeHost`, `FakeAws` and `fixed_health` exist only for the SVG snapshots, which must not depend on random ports,
real clocks or moto's random endpoint names; every behaviour they stand in for is also tested
against the real lab (sshd, PostgreSQL, moto) in tests/test_tui_lab.py (the health check and the
traffic figures in tests/test_tui_traffic.py). `host_fixtures` makes the `agent` and `host`
fixtures of those lab tests (the TUI on the real agent and on this process).
"""

from __future__ import annotations

import asyncio
import functools
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, Self, cast

import pytest
from textual.pilot import Pilot
from textual.widgets import Static

from tunnelman.core.aws import Action, Database, Discovery, Member, Need
from tunnelman.core.health import Health
from tunnelman.core.tunnel import TunnelState, TunnelStatus
from tunnelman.tui.hosts import (
    AgentHost,
    AskHostKey,
    AskPassphrase,
    InProcessHost,
    OnRemoved,
    OnStatus,
    TunnelHost,
)

if TYPE_CHECKING:
    from tunnelman.core.profiles import Profile
    from tunnelman.tui.app import TunnelmanApp

P = ParamSpec("P")
FIXED_NOW = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC: the snapshots' clock


def sync(fn: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
    """Run an async Pilot test with asyncio.run (no async pytest plugin needed)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        asyncio.run(fn(*args, **kwargs))

    return wrapper


async def wait_for(
    pilot: Pilot[Any], condition: Callable[[], object], timeout: float = 20.0, what: str = ""
) -> None:
    """Let the app run until `condition()` is true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what or condition}")
        await pilot.pause(0.05)


async def wait_for_screen(
    pilot: Pilot[Any],
    app: TunnelmanApp,
    kind: type[object],
    selector: str,
    timeout: float = 20.0,
    what: str = "",
) -> None:
    """Let the app run until a `kind` screen is on top and shows `selector` (a modal drawn)."""
    await wait_for(
        pilot,
        lambda: isinstance(app.screen, kind) and app.screen.query(selector),
        timeout,
        what or f"a {kind.__name__} showing {selector}",
    )


def host_fixtures() -> tuple[Callable[..., Iterator[AgentHost]], Callable[..., TunnelHost]]:
    """The `agent` and `host` fixtures of a module (`agent, host = host_fixtures()`)."""

    @pytest.fixture(name="agent")
    def agent(tmp_home: Path) -> Iterator[AgentHost]:
        """The real background agent (private to this test's XDG_RUNTIME_DIR), stopped afterwards."""
        from tunnelman.agent.client import AgentClient

        host = AgentHost(AgentClient())
        try:
            yield host
        finally:
            host.client.shutdown()

    @pytest.fixture(name="host", params=["agent", "in-process"])
    def host(request: pytest.FixtureRequest) -> TunnelHost:
        """Both ways the TUI holds tunnels: the agent (the default) and this process."""
        if request.param == "agent":
            return cast(TunnelHost, request.getfixturevalue("agent"))
        return InProcessHost()

    return agent, host


def text_of(app: TunnelmanApp, selector: str) -> str:
    """The plain text a Static shows."""
    return str(app.screen.query_one(selector, Static).render())


def main_text(app: TunnelmanApp, selector: str) -> str:
    """The plain text of a Static on the main screen, whatever screen is on top."""
    main = app.main
    assert main is not None
    return str(main.query_one(selector, Static).render())


class HangingBastion:
    """A TCP listener on 127.0.0.1 that accepts connections and never says a word."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port: int = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted.append(conn)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(2)
        for conn in self.accepted:
            conn.close()
        self.sock.close()


@dataclass
class FakeHost:
    """A TunnelHost whose tunnels open at once on fixed ports (snapshots only; see the docstring)."""

    survives_quit: bool = False
    since: float = FIXED_NOW - 754
    fail: dict[str, str] = field(default_factory=dict)
    tunnels: dict[str, TunnelStatus] = field(default_factory=dict)
    # Seconds an attempt takes before it fails: the first screen is drawn and settled before the
    # failure arrives, however busy the machine (a failure racing the first fill left the State
    # column as wide as "◌ connecting…" in one CI run).
    fail_after: float = 0.5

    def open(
        self,
        profile: Profile,
        *,
        config_path: Path,
        ask_host_key: AskHostKey,
        ask_passphrase: AskPassphrase,
        cancel: threading.Event,
        on_status: OnStatus,
    ) -> TunnelStatus:
        from tunnelman.core.errors import BastionUnreachable

        if profile.name in self.fail:
            cancel.wait(self.fail_after)
            raise BastionUnreachable(self.fail[profile.name])
        status = TunnelStatus(
            name=profile.name,
            state=TunnelState.UP,
            local_port=profile.local_port or 15432,
            since=self.since,
            reconnects=0,
            error=None,
            connections=2,
        )
        self.tunnels[profile.name] = status
        return status

    def close(self, name: str) -> None:
        self.tunnels.pop(name, None)

    def close_all(self) -> None:
        self.tunnels.clear()

    def close_local(self) -> None:
        if not self.survives_quit:
            self.close_all()

    def local_names(self) -> list[str]:
        return [] if self.survives_quit else list(self.tunnels)

    def statuses(self) -> dict[str, TunnelStatus]:
        return {name: replace(status) for name, status in self.tunnels.items()}

    def rate_history(self) -> dict[str, list[float]]:
        return {}

    def watch(self, on_status: OnStatus, on_removed: OnRemoved, stop: threading.Event) -> None:
        pass  # only this TUI opens its tunnels


FAKE_CLUSTER = Database(
    kind="cluster",
    id="database-1",
    region="us-east-2",
    status="available",
    engine="aurora-postgresql",
    engine_version="15.4",
    engine_mode="provisioned",
    endpoint="database-1.cluster-abc123xyz.us-east-2.rds.amazonaws.com",
    reader_endpoint="database-1.cluster-ro-abc123xyz.us-east-2.rds.amazonaws.com",
    port=5432,
    serverless="v2",
    acu_min=0.5,
    acu_max=8,
    members=(
        Member("database-1-instance-1", "writer", status="available"),
        Member("database-1-instance-2", "reader", status="available"),
    ),
)
"""A Serverless v2 cluster as core.aws reports it (0.5–8 ACU, a writer and a reader)."""


@dataclass
class FakeAws:
    """Stands in for core.aws in snapshots (moto's endpoint names are random): an `AwsApi`."""

    cluster: Database = FAKE_CLUSTER
    calls: list[str] = field(default_factory=list)

    def cluster_status(self, profile: Profile) -> Database:
        self.calls.append(f"status {profile.name}")
        return self.cluster

    def start_cluster(self, profile: Profile) -> Database:
        self.calls.append(f"start {profile.name}")
        self.cluster = replace(self.cluster, status="starting")
        return self.cluster

    def stop_cluster(self, profile: Profile) -> Database:
        self.calls.append(f"stop {profile.name}")
        self.cluster = replace(self.cluster, status="stopping")
        return self.cluster

    def wait_for(
        self,
        profile: Profile,
        action: Action,
        *,
        on_status: Callable[[str, float], None] | None = None,
        cancel: threading.Event | None = None,
        interval: float = 5.0,
        writer: bool = False,
    ) -> Database:
        self.calls.append(f"wait {profile.name} {action}{' writer' if writer else ''}")
        target = "available" if action == "start" else "stopped"
        self.cluster = replace(self.cluster, status=target)
        if on_status is not None:
            on_status(target, 0.0)
        return self.cluster

    def wake_needed(self, profile: Profile) -> tuple[Database, Need] | None:
        if self.cluster.status == "stopped":
            return self.cluster, "start"
        return (self.cluster, "wait") if self.cluster.status == "starting" else None

    def wake(
        self,
        profile: Profile,
        db: Database,
        need: Need,
        *,
        on_status: Callable[[str, float], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> Database:
        self.calls.append(f"wake {profile.name} {need}")
        self.cluster = replace(self.cluster, status="available")
        return self.cluster

    def discover(self, regions: Sequence[str] = (), *, aws_profile: str | None = None) -> Discovery:
        self.calls.append(f"discover {' '.join(regions)}".rstrip())
        return Discovery(regions=list(regions), databases=[self.cluster])


FIXED_HEALTH = Health("ok", reach_ms=4.1, round_trip_ms=3.2, server_version="15.5", postgis="3.3.2")


def fixed_health(profile: Profile, port: int) -> Health:
    """The snapshots' health check: always `FIXED_HEALTH` (a `HealthProbe`)."""
    return FIXED_HEALTH
