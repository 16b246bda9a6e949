"""Who holds the TUI's tunnels: this process, or the background agent once it exists.

The app talks to one `TunnelHost`; every method that may block (opening a tunnel, asking the agent)
is called from a thread worker, never from the UI thread. Core modules that colleagues own are
imported lazily here, so the TUI starts fast and tests can swap in another host.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tunnelman.core.errors import SSHKeyError, TunnelError, TunnelmanError

if TYPE_CHECKING:
    from tunnelman.core.profiles import Profile

STATES = ("starting", "up", "reconnecting", "failed", "stopped")


@dataclass(frozen=True)
class HostKeyQuestion:
    """What the unknown-host-key modal shows (mirrors core's HostKeyInfo)."""

    host: str
    port: int
    key_type: str
    fingerprint: str

    @classmethod
    def from_info(cls, info: object) -> HostKeyQuestion:
        return cls(
            host=str(getattr(info, "host", "?")),
            port=int(getattr(info, "port", 22)),
            key_type=str(getattr(info, "display_type", None) or getattr(info, "key_type", "?")),
            fingerprint=str(getattr(info, "fingerprint", "?")),
        )


@dataclass(frozen=True)
class TunnelView:
    """A tunnel's state as the TUI shows it (mirrors core's TunnelStatus)."""

    name: str
    state: str
    local_port: int | None = None
    since: float | None = None
    reconnects: int = 0
    error: str | None = None
    connections: int = 0

    @classmethod
    def from_status(cls, status: object) -> TunnelView:
        """Read a core `TunnelStatus` (or anything shaped like it)."""
        state = getattr(status, "state", "stopped")
        value = getattr(state, "value", state)
        since = getattr(status, "since", None)
        return cls(
            name=str(getattr(status, "name", "")),
            state=str(value),
            local_port=getattr(status, "local_port", None),
            since=float(since) if isinstance(since, int | float) else None,
            reconnects=int(getattr(status, "reconnects", 0) or 0),
            error=getattr(status, "error", None),
            connections=int(getattr(status, "connections", 0) or 0),
        )

    @property
    def is_open(self) -> bool:
        return self.state in ("starting", "up", "reconnecting")


AskHostKey = Callable[[HostKeyQuestion], bool]
AskPassphrase = Callable[[Path], "str | None"]
OnStatus = Callable[[TunnelView], None]


class TunnelHost(Protocol):
    """Opens, closes and lists tunnels. `open`/`close`/`statuses` may block: call them in workers."""

    survives_quit: bool
    """True when tunnels outlive the TUI (the agent holds them)."""

    def open(
        self,
        profile: Profile,
        *,
        config_path: Path,
        ask_host_key: AskHostKey,
        ask_passphrase: AskPassphrase,
        cancel: threading.Event,
        on_status: OnStatus,
    ) -> TunnelView: ...

    def close(self, name: str) -> None: ...

    def close_all(self) -> None: ...

    def statuses(self) -> dict[str, TunnelView]: ...


def _core(module: str) -> Any:
    """A core module owned by a colleague, imported on first use."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        raise TunnelError(f"{module} is not available in this build of tunnelman") from None


def host_key_policy(ask: AskHostKey) -> Any:
    """core's `HostKeyPolicy(accept_new=False, ask=…)`, translating its info for the modal."""
    for module in ("tunnelman.core.known_hosts", "tunnelman.core.ssh", "tunnelman.core.tunnel"):
        try:
            policy_cls = getattr(importlib.import_module(module), "HostKeyPolicy", None)
        except ModuleNotFoundError:
            continue
        if policy_cls is not None:
            return policy_cls(
                accept_new=False, ask=lambda info: ask(HostKeyQuestion.from_info(info))
            )
    raise TunnelError("the host-key checker (tunnelman.core.known_hosts) is not available")


class InProcessHost:
    """Tunnels held by this process: they close when the TUI quits (used until the agent exists)."""

    survives_quit = False

    def __init__(self) -> None:
        self._tunnels: dict[str, Any] = {}
        self._lock = threading.Lock()

    def open(
        self,
        profile: Profile,
        *,
        config_path: Path,
        ask_host_key: AskHostKey,
        ask_passphrase: AskPassphrase,
        cancel: threading.Event,
        on_status: OnStatus,
    ) -> TunnelView:
        del config_path  # only the agent needs to know where the profile came from
        tunnel_mod = _core("tunnelman.core.tunnel")
        tunnel = tunnel_mod.open_tunnel(
            profile,
            local_port=profile.local_port,
            host_keys=host_key_policy(ask_host_key),
            passphrase=ask_passphrase,
            on_status=lambda status: on_status(TunnelView.from_status(status)),
            cancel=cancel,
        )
        tunnel.start()
        with self._lock:
            old = self._tunnels.pop(profile.name, None)
            self._tunnels[profile.name] = tunnel
        if old is not None:
            old.stop()
        return TunnelView.from_status(tunnel.status)

    def close(self, name: str) -> None:
        with self._lock:
            tunnel = self._tunnels.pop(name, None)
        if tunnel is not None:
            tunnel.stop()

    def close_all(self) -> None:
        with self._lock:
            names = list(self._tunnels)
        for name in names:
            self.close(name)

    def names(self) -> list[str]:
        with self._lock:
            return list(self._tunnels)

    def statuses(self) -> dict[str, TunnelView]:
        with self._lock:
            tunnels = dict(self._tunnels)
        return {name: TunnelView.from_status(t.status) for name, t in tunnels.items()}


class AgentHost:
    """Tunnels held by the background agent: they outlive the TUI (the default).

    The agent cannot ask anybody; its client asks `ask_host_key` here when the agent reports an
    unknown key. `watch` follows the agent's state changes (also of tunnels opened elsewhere,
    e.g. `tunnelman up NAME --detach`).
    """

    survives_quit = True

    def __init__(self, client: Any = None) -> None:
        if client is None:
            from tunnelman.agent.client import AgentClient

            client = AgentClient()
        self.client = client
        # Tunnels whose key needs a passphrase: the agent cannot ask for one, so the TUI holds
        # them itself (asking in a modal) and they close when it quits.
        self.local = InProcessHost()

    def open(
        self,
        profile: Profile,
        *,
        config_path: Path,
        ask_host_key: AskHostKey,
        ask_passphrase: AskPassphrase,
        cancel: threading.Event,
        on_status: OnStatus,
    ) -> TunnelView:
        done = threading.Event()

        def abort_on_cancel() -> None:
            # The agent's `up` cannot be interrupted from here; take the tunnel down instead.
            while not done.wait(0.1):
                if cancel.is_set():
                    with contextlib.suppress(Exception):
                        self.client.down(profile.name)
                    return

        watcher = threading.Thread(target=abort_on_cancel, name="tunnelman-tui-cancel", daemon=True)
        watcher.start()
        try:
            status = self.client.up(
                profile.name,
                config_path,
                profile.local_port,
                host_keys=host_key_policy(ask_host_key),
            )
        except SSHKeyError as exc:
            if cancel.is_set():
                raise TunnelError("cancelled") from None
            if "passphrase" not in str(exc):
                raise
            return self.local.open(
                profile,
                config_path=config_path,
                ask_host_key=ask_host_key,
                ask_passphrase=ask_passphrase,
                cancel=cancel,
                on_status=on_status,
            )
        except TunnelmanError:
            if cancel.is_set():
                raise TunnelError("cancelled") from None
            raise
        finally:
            done.set()
        view = TunnelView.from_status(status)
        on_status(view)
        return view

    def close(self, name: str) -> None:
        if name in self.local.names():
            self.local.close(name)
        else:
            self.client.down(name)

    def close_all(self) -> None:
        self.local.close_all()
        self.client.down_all()

    def close_local(self) -> None:
        """Close the tunnels held here (passphrase keys); the agent's keep running."""
        self.local.close_all()

    def local_names(self) -> list[str]:
        return self.local.names()

    def statuses(self) -> dict[str, TunnelView]:
        views = {s.name: TunnelView.from_status(s) for s in self.client.status()}
        views.update(self.local.statuses())
        return views

    def watch(
        self, on_status: OnStatus, on_removed: Callable[[str], None], stop: threading.Event
    ) -> None:
        """Follow the agent until `stop`: every status change, every removal. Blocks."""
        while not stop.is_set():
            try:
                for event in self.client.subscribe(stop):
                    if event.kind == "status" and event.status is not None:
                        on_status(TunnelView.from_status(event.status))
                    elif event.kind == "removed":
                        on_removed(event.name)
            except (TunnelmanError, OSError):
                pass  # the agent went away; look again shortly
            stop.wait(1.0)


def agent_available() -> bool:
    """Whether this build has the background agent."""
    try:
        return importlib.util.find_spec("tunnelman.agent.client") is not None
    except ModuleNotFoundError:
        return False


def default_host() -> TunnelHost:
    """The agent when it is part of this build (tunnels outlive the TUI), else this process."""
    if agent_available():
        return AgentHost()
    return InProcessHost()
