"""Tunnels: one profile's 127.0.0.1 port forwarded through the bastion to the database, and its life.

Called by the CLI (`up`, one-shot `psql`/`exec`, `check`, `demo`), the agent (`supervise=True`)
and the TUI, always through `open_tunnel(profile, …)`, which picks the profile's engine:

- `base.py`: what every engine shares (states, status, callbacks, start guard, teardown
  contract, reconnect loop and backoff, route check, clients waiting through a reconnect) and
  `Capabilities`, where the engines differ;
- `paramiko_engine.py`: the default engine (`engine = "sshtunnel"`): paramiko + sshtunnel's
  forwarder with our relay;
- `openssh.py`: `engine = "openssh"`: the system `ssh -N -L` behind our own listener;
- `ssm_engine.py`: `transport = "ssm"` without a bastion: SSM port forwarding through AWS's
  session-manager-plugin behind our own listener (SSH over SSM is the other engines' business:
  `tunnelman.core.transport` hands them the first hop's socket);
- `relay.py`: the bytes between client sockets and SSH channels (or ssh's port);
- `ports.py`: free ports, busy ports and who holds them (the one /proc/net/tcp parser).

Importing this package is cheap (no paramiko, no sshtunnel): the agent's client and the status
commands use `TunnelStatus` and `TunnelState` from here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from tunnelman.core.ssh.known_hosts import HostKeyPolicy
from tunnelman.core.tunnel.base import Capabilities, Tunnel, TunnelState, TunnelStatus
from tunnelman.core.tunnel.ports import free_local_port

if TYPE_CHECKING:
    from tunnelman.core.profiles import Profile
    from tunnelman.core.ssh import PassphrasePrompt

__all__ = [
    "Capabilities",
    "Tunnel",
    "TunnelState",
    "TunnelStatus",
    "engine_class",
    "free_local_port",
    "open_tunnel",
]


def engine_class(engine: str) -> type[Tunnel]:
    """The Tunnel class for a profile's `engine` value (validated by the profile loader)."""
    if engine == "openssh":
        from tunnelman.core.tunnel.openssh import OpenSSHTunnel

        return OpenSSHTunnel
    from tunnelman.core.tunnel.paramiko_engine import ParamikoTunnel

    return ParamikoTunnel


def open_tunnel(
    profile: Profile,
    *,
    local_port: int | None = None,
    host_keys: HostKeyPolicy = HostKeyPolicy(),  # noqa: B008 - frozen, shared safely
    passphrase: PassphrasePrompt | None = None,
    on_status: Callable[[TunnelStatus], None] | None = None,
    cancel: threading.Event | None = None,
    supervise: bool = False,
) -> Tunnel:
    """A tunnel for `profile` with its engine, not yet started (`start()` or `with`).

    `local_port` beats the profile's (0: any free port). `host_keys` says what to do with an
    unknown host key; `passphrase` is asked only if a key must be decrypted here; `on_status` is
    called from the tunnel's threads on every state change; `cancel` aborts a `start()` in
    progress; `supervise` (the agent) keeps the port and reconnects after the link is lost.
    """
    cls = engine_class(profile.engine)
    if profile.hop == "ssm-forward":
        from tunnelman.core.tunnel.ssm_engine import SsmTunnel

        cls = SsmTunnel  # SSM port forwarding: no SSH, whatever the engine
    return cls(
        profile,
        local_port=local_port,
        host_keys=host_keys,
        passphrase=passphrase,
        on_status=on_status,
        cancel=cancel,
        supervise=supervise,
    )
