"""Transports: how the bytes of the first hop reach the bastion (or, for SSM port forwarding, the
database) when the profile says `transport = "ssm"` or `"eice"` instead of plain TCP.

A transport hands back a real `socket.socket` (one end of a `socket.socketpair()`, the other end
pumped into whatever carries the bytes: AWS's `session-manager-plugin` for SSM, a websocket for EC2
Instance Connect Endpoint), so paramiko, the jump hosts and the host key check work over it
unchanged: the SSH session still runs end to end with the bastion, whose host key is checked under
its usual name. Called by `tunnelman.core.ssh.connection.open_route` for the first hop, and by the
doctor (`tunnelman.core.diagnose`) for the transport's own steps.

- `ssm.py`:  AWS Systems Manager Session Manager: SSH over `AWS-StartSSHSession`, and the plugin
  process and discovery that the SSM port-forwarding engine (`tunnel/ssm_engine.py`) uses too;
- `eice.py`: EC2 Instance Connect Endpoint (a SigV4-signed websocket to the instance's port 22).

Importing this package is cheap: each transport's module (and boto3) is imported on first use.
"""

from __future__ import annotations

import socket
import threading
from typing import TYPE_CHECKING

from tunnelman.core.errors import ConfigError

if TYPE_CHECKING:
    from tunnelman.core.profiles import Profile
    from tunnelman.core.ssh.connection import _Canceller

__all__ = [
    "RENEW_FRACTION",
    "RENEW_MARGIN",
    "describe",
    "lifetime",
    "open_first_hop",
    "renew_after",
]


def open_first_hop(
    profile: Profile,
    timeout: float,
    *,
    cancel: threading.Event | None = None,
    canceller: _Canceller | None = None,
) -> socket.socket:
    """A socket whose bytes reach the bastion's SSH port over the profile's transport.

    `cancel` (set from another thread) aborts the opening; `canceller` (the SSH connection's)
    is told how to close what is being opened, so a cancelled connection leaves nothing behind.
    """
    if profile.transport == "ssm":
        from tunnelman.core.transport import ssm

        return ssm.open_socket(profile, timeout=timeout, cancel=cancel, canceller=canceller)
    if profile.transport == "eice":
        from tunnelman.core.transport.eice import open_socket

        return open_socket(profile, timeout=timeout, cancel=cancel)
    raise ConfigError(f"profile '{profile.name}': transport '{profile.transport}' has no socket")


def describe(profile: Profile) -> str:
    """One line saying how the profile's tunnel travels, led by the transport (the TUI's detail
    pane); `Profile.route` says the same way for messages ("via …"), from the same `hop`."""
    hop = profile.hop
    if hop == "ssm-forward":
        return f"ssm: port forwarding through {profile.instance_text}'s SSM agent"
    if hop == "ssm":
        return f"ssm: SSH to {profile.bastion} over Session Manager ({profile.instance_text})"
    if hop == "eice":
        return f"eice: SSH over EC2 Instance Connect Endpoint to {profile.instance_text}"
    return "ssh: TCP to the bastion"


RENEW_MARGIN = 300.0
"""Seconds before a transport's cap at which the tunnel opens its next connection (5 minutes)."""
RENEW_FRACTION = 0.1
"""...or this share of a shorter cap (a 10-minute session renews after 9)."""


def renew_after(cap: float) -> float:
    """Seconds into a connection with `cap` at which to open the next one."""
    return cap - min(RENEW_MARGIN, cap * RENEW_FRACTION)


def lifetime(profile: Profile) -> float | None:
    """Seconds a first-hop connection over the profile's transport may last (None: no known cap).

    An EC2 Instance Connect Endpoint ends each websocket after `maxTunnelDuration` (one hour, the
    most it allows): the tunnel renews before that, make-before-break, so new client connections
    never meet the cap; one that is still open on the old connection ends with it. A Session
    Manager session lasts at most the account's `maxSessionDuration` (its preferences document,
    read with ssm:GetDocument; often not set): SSH over SSM renews before that in the same way.
    When AWS ends a session otherwise, the reconnect loop opens the next.
    """
    if profile.transport == "eice":
        from tunnelman.core.aws.eice import MAX_TUNNEL_DURATION

        return float(MAX_TUNNEL_DURATION)
    if profile.transport == "ssm":
        from tunnelman.core.transport import ssm

        return ssm.max_session_seconds(profile)
    return None
