"""Who holds the TUI's tunnels: the background agent (the default), or this process.

The app talks to one `TunnelHost` in core's own types (`TunnelStatus`, `HostKeyInfo`); every
method that may block (opening a tunnel, asking the agent) is called from a thread worker, never
from the UI thread. The tunnel engines (paramiko) are imported on the first `open`, so the TUI
starts fast; tests swap in another host.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from tunnelman.core.errors import Cancelled, PassphraseRequired, TunnelmanError
from tunnelman.core.ssh.known_hosts import HostKeyInfo, HostKeyPolicy

if TYPE_CHECKING:
    from tunnelman.agent.client import AgentClient
    from tunnelman.core.profiles import Profile
    from tunnelman.core.tunnel import Tunnel, TunnelStatus

AskHostKey = Callable[[HostKeyInfo], bool]
AskPassphrase = Callable[[Path], "str | None"]
OnStatus = Callable[["TunnelStatus"], None]
OnRemoved = Callable[[str], None]


class TunnelHost(Protocol):
    """Opens, closes, lists and follows tunnels. Every method but `local_names` may block:
    call them in workers."""

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
    ) -> TunnelStatus:
        """Open `profile`'s tunnel; `Cancelled` once `cancel` is set."""
        ...

    def close(self, name: str) -> None: ...

    def close_all(self) -> None: ...

    def close_local(self) -> None:
        """Close the tunnels that end with the TUI (all of them unless `survives_quit`)."""
        ...

    def local_names(self) -> list[str]:
        """The tunnels that end with the TUI."""
        ...

    def statuses(self) -> dict[str, TunnelStatus]: ...

    def rate_history(self) -> dict[str, list[float]]:
        """The last minutes of each tunnel's rate (bytes/s both ways, one a second, oldest
        first), where the host kept them before this TUI looked (the agent's)."""
        ...

    def watch(self, on_status: OnStatus, on_removed: OnRemoved, stop: threading.Event) -> None:
        """Report changes made elsewhere (another process) until `stop`; returns at once if
        nothing but this TUI changes them."""
        ...


def host_key_policy(ask: AskHostKey) -> HostKeyPolicy:
    """Never accept a new host key silently: ask a person (the TUI's modal)."""
    return HostKeyPolicy(accept_new=False, ask=ask)


class InProcessHost:
    """Tunnels held by this process: they close when the TUI quits (the demo, tests)."""

    survives_quit = False

    def __init__(self) -> None:
        self._tunnels: dict[str, Tunnel] = {}
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
    ) -> TunnelStatus:
        from tunnelman.core.tunnel import open_tunnel

        del config_path  # only the agent needs to know where the profile came from
        tunnel = open_tunnel(
            profile,
            local_port=profile.local_port,
            host_keys=host_key_policy(ask_host_key),
            passphrase=ask_passphrase,
            on_status=on_status,
            cancel=cancel,
        )
        tunnel.start()
        with self._lock:
            old = self._tunnels.pop(profile.name, None)
            self._tunnels[profile.name] = tunnel
        if old is not None:
            old.stop()
        return tunnel.status

    def close(self, name: str) -> None:
        with self._lock:
            tunnel = self._tunnels.pop(name, None)
        if tunnel is not None:
            tunnel.stop()

    def close_all(self) -> None:
        for name in self.local_names():
            self.close(name)

    def close_local(self) -> None:
        self.close_all()

    def local_names(self) -> list[str]:
        with self._lock:
            return list(self._tunnels)

    def statuses(self) -> dict[str, TunnelStatus]:
        with self._lock:
            tunnels = dict(self._tunnels)
        return {name: t.status for name, t in tunnels.items()}

    def rate_history(self) -> dict[str, list[float]]:
        with self._lock:
            tunnels = dict(self._tunnels)
        out: dict[str, list[float]] = {}
        for name, tunnel in tunnels.items():
            traffic = tunnel.traffic
            if traffic is not None:
                out[name] = [r.sent + r.received for r in traffic.history()]
        return out

    def watch(self, on_status: OnStatus, on_removed: OnRemoved, stop: threading.Event) -> None:
        """Nothing to follow: only this process changes its tunnels, and `open` reports them."""


class AgentHost:
    """Tunnels held by the background agent: they outlive the TUI (the default).

    The agent cannot ask anybody; its client asks `ask_host_key` here when the agent reports an
    unknown key. `watch` follows the agent's state changes (also of tunnels opened elsewhere,
    e.g. `tunnelman up NAME --detach`).
    """

    survives_quit = True

    def __init__(self, client: AgentClient | None = None) -> None:
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
    ) -> TunnelStatus:
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
        except PassphraseRequired:
            if cancel.is_set():
                raise Cancelled() from None
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
                raise Cancelled() from None
            raise
        finally:
            done.set()
        on_status(status)
        return status

    def close(self, name: str) -> None:
        if name in self.local.local_names():
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
        return self.local.local_names()

    def statuses(self) -> dict[str, TunnelStatus]:
        statuses = {s.name: s for s in self.client.status()}
        statuses.update(self.local.statuses())
        return statuses

    def rate_history(self) -> dict[str, list[float]]:
        history = self.client.rate_history()
        history.update(self.local.rate_history())
        return history

    def watch(self, on_status: OnStatus, on_removed: OnRemoved, stop: threading.Event) -> None:
        """Follow the agent until `stop`: every status change, every removal. Blocks."""
        while not stop.is_set():
            try:
                for event in self.client.subscribe(stop):
                    if event.kind == "status" and event.status is not None:
                        on_status(event.status)
                    elif event.kind == "removed":
                        on_removed(event.name)
            except (TunnelmanError, OSError):
                pass  # the agent went away; look again shortly
            stop.wait(1.0)


def default_host() -> TunnelHost:
    """The agent: tunnels outlive the TUI."""
    return AgentHost()
