"""EC2 Instance Connect Endpoint: a SigV4-signed websocket to a private instance's port 22.

Placeholder in this branch: the websocket is written in another branch, which replaces this file.
`tunnelman.core.transport.open_first_hop` imports exactly `open_socket` from here.
"""

from __future__ import annotations

import socket
import threading
from typing import TYPE_CHECKING

from tunnelman.core.errors import ConfigError

if TYPE_CHECKING:
    from tunnelman.core.profiles import Profile

__all__ = ["open_socket"]


def open_socket(
    profile: Profile, *, timeout: float, cancel: threading.Event | None = None
) -> socket.socket:
    """A socket to the instance's port 22 through its EC2 Instance Connect Endpoint."""
    raise ConfigError("transport 'eice' is not in this build yet")
