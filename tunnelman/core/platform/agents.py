"""Which ssh-agent this machine offers, found the way paramiko's `Agent` will find it.

POSIX: the socket named by SSH_AUTH_SOCK. Windows (where paramiko ignores SSH_AUTH_SOCK): Pageant
(a window of class "Pageant") first, then the Windows OpenSSH agent's named pipe
`\\\\.\\pipe\\openssh-ssh-agent`, in paramiko's order. Nothing here imports paramiko: these are
the cheap checks `tunnelman check` and the engines make before connecting.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

__all__ = ["OPENSSH_PIPE", "find_agent", "missing_reason", "start_hint"]

OPENSSH_PIPE = r"\\.\pipe\openssh-ssh-agent"

SSH_AUTH_SOCK = "ssh-agent (SSH_AUTH_SOCK)"
WINDOWS_OPENSSH = "Windows OpenSSH agent"
PAGEANT = "Pageant"


def _openssh_pipe_open() -> bool:
    # os.listdir, not os.path.exists: opening the pipe to test it can leave it busy (paramiko's
    # own test does the same).
    directory, name = os.path.split(OPENSSH_PIPE)
    try:
        return any(name.lower() == n.lower() for n in os.listdir(directory))
    except OSError:
        return False


def _pageant_running() -> bool:
    if sys.platform == "win32":
        import ctypes

        try:
            return bool(ctypes.windll.user32.FindWindowA(b"Pageant", b"Pageant"))
        except (AttributeError, OSError):
            return False
    else:
        return False


def find_agent(environ: Mapping[str, str] | None = None) -> str | None:
    """A label for the agent paramiko would talk to ("Pageant", …); None: there is none."""
    if sys.platform == "win32":
        if _pageant_running():
            return PAGEANT
        if _openssh_pipe_open():
            return WINDOWS_OPENSSH
        return None
    else:  # noqa: RET505  (mypy narrows each platform branch)
        sock = (os.environ if environ is None else environ).get("SSH_AUTH_SOCK")
        return SSH_AUTH_SOCK if sock and os.path.exists(sock) else None


def missing_reason(platform: str = sys.platform) -> str:
    """Why no agent counts as running, for "no ssh-agent is running (…)"."""
    if platform == "win32":
        return "neither Pageant nor the Windows OpenSSH agent is running"
    return "SSH_AUTH_SOCK unset"


def start_hint(platform: str = sys.platform) -> str:
    """How to start one and load a key."""
    if platform == "win32":
        return (
            "start the agent (`Start-Service ssh-agent` in an administrator PowerShell, or run "
            "Pageant) and `ssh-add` your key"
        )
    return "start ssh-agent and `ssh-add` your key"
