"""SSH to the bastion, in six parts.

- `keys`         which private key is offered, read by OpenSSH's rules (permissions, ssh-agent,
                 passphrases): `Identity`, `load_identity`, `load_private_key`
- `tcp`          the TCP connection to the bastion (resolve, connect), each failure in its words
- `preconnect`   that connection started early, before the SSH code loads (the cold one-shot)
- `connection`   each step of a connection with its own error: TCP (`tcp`), handshake, host key,
                 authentication, jump hosts, the test forward: `connect`, `open_route`
- `known_hosts`  OpenSSH's known_hosts, read and written as ssh does: `HostKeyPolicy`, `verify`
- `config`       what ~/.ssh/config (through `ssh -G`) says about a bastion

`from tunnelman.core import ssh` gives the names below, each loaded on first use; paramiko is
imported inside the functions that need it. So importing this package, or only `known_hosts`,
costs nothing on paths that never open a connection.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunnelman.core.ssh.connection import (
        authenticate,
        check_host_key,
        connect,
        forward_error,
        name_hop,
        open_route,
        start_transport,
        test_forward,
    )
    from tunnelman.core.ssh.keys import (
        Identity,
        PassphrasePrompt,
        agent_available,
        agent_has_key,
        check_key_permissions,
        load_identity,
        load_private_key,
        no_agent_error,
        public_key_blob,
    )
    from tunnelman.core.ssh.known_hosts import (
        HostKeyChanged,
        HostKeyInfo,
        HostKeyPolicy,
        HostKeyUnknown,
    )
    from tunnelman.core.ssh.tcp import open_socket, resolve

__all__ = [
    "HostKeyChanged",
    "HostKeyInfo",
    "HostKeyPolicy",
    "HostKeyUnknown",
    "Identity",
    "PassphrasePrompt",
    "agent_available",
    "agent_has_key",
    "authenticate",
    "check_host_key",
    "check_key_permissions",
    "connect",
    "forward_error",
    "load_identity",
    "load_private_key",
    "name_hop",
    "no_agent_error",
    "open_route",
    "open_socket",
    "public_key_blob",
    "resolve",
    "start_transport",
    "test_forward",
]

# Where each name lives (no module is named like a function it holds: an imported submodule would
# hide it). Loaded on first use (PEP 562), so importing `tunnelman.core.ssh.known_hosts`
# (the TUI, the agent's client) does not load the connection code and the tunnel package with it.
_HOME = {
    **dict.fromkeys(
        (
            "authenticate",
            "check_host_key",
            "connect",
            "forward_error",
            "name_hop",
            "open_route",
            "start_transport",
            "test_forward",
        ),
        "connection",
    ),
    **dict.fromkeys(
        (
            "Identity",
            "PassphrasePrompt",
            "agent_available",
            "agent_has_key",
            "check_key_permissions",
            "load_identity",
            "load_private_key",
            "no_agent_error",
            "public_key_blob",
        ),
        "keys",
    ),
    **dict.fromkeys(("open_socket", "resolve"), "tcp"),
    **dict.fromkeys(
        ("HostKeyChanged", "HostKeyInfo", "HostKeyPolicy", "HostKeyUnknown"), "known_hosts"
    ),
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value
