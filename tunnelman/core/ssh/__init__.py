"""SSH to the bastion, in four parts.

- `keys`         which private key is offered, read by OpenSSH's rules (permissions, ssh-agent,
                 passphrases): `Identity`, `load_identity`, `load_private_key`
- `connect`      each step of a connection with its own error: resolve, TCP, handshake, host key,
                 authentication, jump hosts, the test forward: `connect`, `open_route`
- `known_hosts`  OpenSSH's known_hosts, read and written as ssh does: `HostKeyPolicy`, `verify`
- `config`       what ~/.ssh/config (through `ssh -G`) says about a bastion

`from tunnelman.core import ssh` gives the names below. paramiko is imported inside the functions
that need it, so importing this package costs nothing on paths that never open a connection.
"""

from __future__ import annotations

from tunnelman.core.ssh.connect import (
    authenticate,
    check_host_key,
    connect,
    forward_error,
    name_hop,
    open_route,
    open_socket,
    resolve,
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
