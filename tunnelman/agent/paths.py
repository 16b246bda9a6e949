"""Where the agent lives on disk: its private runtime directory, socket, locks, state and log.

Used by the agent (`server`) and by every client (`client`, so by one-shot commands on each run):
it imports nothing heavier than platformdirs. Everything sits in one directory that only the user
can enter (0700, owned by the user; checked, not just created), in the platformdirs per-user
runtime dir (`$XDG_RUNTIME_DIR/tunnelman` on Linux). `TUNNELMAN_AGENT_DIR` overrides it (a
relative one is taken from the current directory, and handed on absolute to the agent, which runs
in /).

    agent.sock   the Unix socket (0600)
    agent.lock   held (flock) by the running agent for its whole life; holds its pid
    start.lock   held by whoever is starting an agent, so two starts give one agent
    agent.json   the running agent's pid, address (and token over TCP), tunnels; gone on clean exit
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunnelman.core.errors import AgentError

ENV_DIR = "TUNNELMAN_AGENT_DIR"
ENV_TRANSPORT = "TUNNELMAN_AGENT_TRANSPORT"  # "unix" | "tcp": force one (tests use tcp)
ENV_LOG = "TUNNELMAN_AGENT_LOG"
# sun_path is 108 bytes on Linux, 104 on macOS: stay clear of both.
_MAX_SOCKET_PATH = 100


def _platform_runtime_dir() -> Path:
    import warnings

    import platformdirs

    with warnings.catch_warnings():
        # Without XDG_RUNTIME_DIR platformdirs falls back to /tmp/runtime-UID and warns; we check
        # that directory's owner and mode ourselves below.
        warnings.simplefilter("ignore")
        return Path(platformdirs.user_runtime_dir("tunnelman"))


def use_tcp() -> bool:
    """Whether the agent listens on loopback TCP + token instead of a Unix socket."""
    forced = os.environ.get(ENV_TRANSPORT, "").strip().lower()
    if forced in ("tcp", "unix"):
        return forced == "tcp"
    return not hasattr(socket, "AF_UNIX")


@dataclass(frozen=True)
class AgentPaths:
    """The files of one user's agent."""

    dir: Path

    @property
    def socket(self) -> Path:
        return self.dir / "agent.sock"

    @property
    def lock(self) -> Path:
        return self.dir / "agent.lock"

    @property
    def start_lock(self) -> Path:
        return self.dir / "start.lock"

    @property
    def state(self) -> Path:
        return self.dir / "agent.json"

    def read_state(self) -> dict[str, Any] | None:
        """What the last agent wrote about itself (None: nothing, or unreadable)."""
        try:
            data = json.loads(self.state.read_text("utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def write_state(self, data: dict[str, Any]) -> None:
        """Atomically, 0600 (it may hold the TCP token)."""
        import tempfile

        fd, tmp = tempfile.mkstemp(prefix=".agent.", suffix=".json", dir=self.dir)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh)
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.state)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def agent_dir() -> Path:
    """The agent's directory (not created)."""
    env = os.environ.get(ENV_DIR)
    if env:
        return Path(env).expanduser().absolute()
    base = _platform_runtime_dir()
    if len(str(base / "agent.sock")) > _MAX_SOCKET_PATH and not use_tcp():
        import tempfile

        base = Path(tempfile.gettempdir()) / f"tunnelman-{_uid()}"
    return base


def _uid() -> int:
    return os.getuid() if hasattr(os, "getuid") else 0


def paths(*, create: bool = False) -> AgentPaths:
    """The agent's files; with `create`, make the directory and insist it is private."""
    directory = agent_dir()
    if create:
        ensure_private_dir(directory)
    return AgentPaths(directory)


def ensure_private_dir(directory: Path) -> None:
    """Create `directory` 0700; refuse one that is a symlink, someone else's, or open to others."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = directory.lstat()
    except OSError as exc:
        raise AgentError(
            f"cannot create the agent's directory {directory}: {exc.strerror or exc}",
            hint=f"set {ENV_DIR} to a private directory you own",
        ) from None
    if not stat.S_ISDIR(info.st_mode):
        raise AgentError(
            f"the agent's directory {directory} is not a directory (a symlink?)",
            hint=f"remove it, or set {ENV_DIR} to a private directory you own",
        )
    from tunnelman.core.platform import keys  # not on the warm path, which creates nothing

    if not keys.POSIX_MODES:
        return  # a directory under the user's profile: its ACL keeps others out
    if info.st_uid != _uid():
        raise AgentError(
            f"the agent's directory {directory} belongs to another user (uid {info.st_uid}): "
            "refusing to use it",
            hint=f"set {ENV_DIR} (or XDG_RUNTIME_DIR) to a private directory you own",
        )
    if info.st_mode & 0o077:
        os.chmod(directory, 0o700)


def log_path() -> Path:
    """`agent.log` next to tunnelman's own log; `TUNNELMAN_AGENT_LOG` wins."""
    env = os.environ.get(ENV_LOG)
    if env:
        return Path(env).expanduser().absolute()
    from tunnelman.core.logs import default_log_path

    return default_log_path().with_name("agent.log")
