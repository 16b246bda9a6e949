"""How the CLI and the TUI talk to the agent, and start it when they need it.

`AgentClient.find`/`status`/`ping` never start an agent and never fail because none runs (no agent:
None / empty, in about a millisecond: one stat of the socket path, or one refused connect), so
one-shot commands can call `find` on every run. `up` starts the agent on demand: under `start.lock`,
so two concurrent starts give one agent; a socket or state file left by an agent that died
(`kill -9`, a crash) is cleaned up and reported through `notify` ("the agent had stopped; started a
new one"). Imports stay light (no click, no paramiko); `TunnelStatus` is imported when an answer
holds tunnels.

Host keys: the agent cannot ask anybody, so `up` takes the caller's `HostKeyPolicy`. When the
agent reports an unknown key, `policy.ask` (the terminal prompt, the TUI modal) is asked here with
the fingerprint and, on yes, the request is repeated with `accept_fingerprint`: the agent then
records that key and only that key.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tunnelman.agent import protocol
from tunnelman.agent.paths import ENV_DIR, ENV_LOG, AgentPaths, log_path, paths, use_tcp
from tunnelman.core.errors import AgentError
from tunnelman.core.platform import net

if TYPE_CHECKING:
    import subprocess
    import threading

    from tunnelman.core.ssh.known_hosts import HostKeyPolicy
    from tunnelman.core.tunnel import TunnelStatus

CONNECT_TIMEOUT = 2.0
QUICK_TIMEOUT = 15.0  # ping / status: the agent answers these from memory
STOP_TIMEOUT = 60.0  # down: closing a tunnel waits for its connections a little
START_TIMEOUT = 25.0  # spawn until the new agent answers (it may wait for a stopping one)
UP_TIMEOUT = 300.0  # the agent's own timeouts end an `up` long before this
EXIT_ALREADY_RUNNING = 3  # as server.EXIT_ALREADY_RUNNING (not imported: server is heavy)


class AgentGone(AgentError):
    """No agent answered: none runs, or it exited (idle, crashed) during the request."""


class FeatureMissing(AgentError):
    """The running agent is older than this client and lacks a feature the request needs."""


@dataclass(frozen=True)
class AgentInfo:
    """What a running agent says about itself (`ping`)."""

    pid: int
    version: str
    protocol: int
    started: float
    tunnels: int
    idle_timeout: float
    transport: str
    address: str
    log: str
    features: tuple[str, ...] = ()

    @classmethod
    def from_wire(cls, reply: dict[str, Any]) -> AgentInfo:
        """A `ping` reply; ProtocolError naming the field that has the wrong type."""

        def number(key: str) -> float:
            value = protocol.reply_number(
                reply, key, what=f"ping: '{key}'", default=0.0, maximum=float("inf")
            )
            return value or 0.0

        def text(key: str, default: str) -> str:
            return protocol.reply_str(reply, key, what=f"ping: '{key}'", default=default)

        version = "protocol" if "protocol" in reply else "v"
        return cls(
            pid=protocol.reply_int(reply, "pid", what="ping: 'pid'", default=0) or 0,
            version=text("version", "?"),
            protocol=protocol.reply_int(reply, version, what=f"ping: '{version}'", default=0) or 0,
            started=protocol.reply_number(reply, "started", what="ping: 'started'", default=0.0)
            or 0.0,
            tunnels=protocol.reply_int(reply, "tunnels", what="ping: 'tunnels'", default=0) or 0,
            idle_timeout=number("idle_timeout"),
            transport=text("transport", "?"),
            address=text("address", ""),
            log=text("log", ""),
            features=_features(reply.get("features")),
        )


@dataclass(frozen=True)
class AgentEvent:
    """One change pushed by `subscribe`: a tunnel's new status, its removal, or the agent's end."""

    kind: Literal["status", "removed", "shutdown"]
    name: str = ""
    status: TunnelStatus | None = None


@dataclass(frozen=True)
class Crash:
    """Traces of an agent that died without cleaning up."""

    pid: int | None
    tunnels: list[str]


class AgentClient:
    """One user's agent, as seen from a CLI command or the TUI. Cheap to create."""

    def __init__(
        self,
        *,
        notify: Callable[[str], None] | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self._notify = notify
        self._connect_timeout = connect_timeout
        self._files: AgentPaths | None = None
        self._token: str | None = None

    @property
    def files(self) -> AgentPaths:
        if self._files is None:
            self._files = paths()
        return self._files

    # ------------------------------------------------------------------------- connecting

    def _connect(self) -> protocol.LineSocket | None:
        """A connection to the running agent; None when no agent listens (never started, gone)."""
        files = self.files
        if use_tcp():
            state = files.read_state()
            port = state.get("port") if state else None
            if not state or state.get("transport") != "tcp" or not isinstance(port, int):
                return None
            token = state.get("token")
            self._token = token if isinstance(token, str) else None
            family: int = socket.AF_INET
            address: Any = ("127.0.0.1", port)
        else:
            if not files.socket.exists():
                return None
            family = net.unix_family()
            address = str(files.socket)
        try:
            sock = self._connect_socket(family, address)
        except (FileNotFoundError, ConnectionRefusedError):
            return None  # nobody listens: a stale socket, or an agent that is just stopping
        except TimeoutError:
            raise AgentError(
                f"the agent did not accept a connection within {self._connect_timeout:g} s",
                hint="it may be stuck: `tunnelman agent stop`, or kill the pid in "
                f"{files.lock}; its log is {log_path()}",
            ) from None
        except OSError as exc:
            raise AgentError(
                f"cannot connect to the agent at {address}: {exc.strerror or exc}"
            ) from None
        return protocol.LineSocket(sock)

    def _connect_socket(self, family: int, address: Any) -> socket.socket:
        """A connected socket. A Unix socket whose listen backlog is full refuses at once with
        EAGAIN instead of waiting (as TCP does): a burst of clients retries until the timeout."""
        deadline = time.monotonic() + self._connect_timeout
        pause = 0.002
        while True:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.settimeout(self._connect_timeout)
            try:
                sock.connect(address)
            except BlockingIOError:
                sock.close()
                if time.monotonic() + pause >= deadline:
                    raise TimeoutError from None
                time.sleep(pause)
                pause = min(pause * 2, 0.05)
                continue
            except BaseException:
                sock.close()
                raise
            return sock

    def _exchange(
        self, lines: protocol.LineSocket, op: str, timeout: float, fields: dict[str, Any]
    ) -> dict[str, Any]:
        message: dict[str, Any] = {"v": protocol.VERSION, "op": op, **fields}
        if self._token is not None:
            message["token"] = self._token
        lines.sock.settimeout(timeout)
        try:
            lines.send(message)
            reply = lines.recv()
        except TimeoutError:
            raise AgentError(
                f"the agent did not answer '{op}' within {timeout:g} s",
                hint=f"its log is {log_path()}",
            ) from None
        except OSError as exc:
            reply = None
            if not isinstance(exc, ConnectionResetError | BrokenPipeError):
                raise AgentError(f"lost the connection to the agent: {exc}") from None
        if reply is None:
            raise AgentGone(
                f"the agent stopped while answering '{op}'", hint=f"its log is {log_path()}"
            )
        if reply.get("ok") is not True:
            raise protocol.error_from_wire(reply)
        return reply

    def _request(self, op: str, *, timeout: float = QUICK_TIMEOUT, **fields: Any) -> dict[str, Any]:
        """One request to the running agent; AgentError when none runs."""
        lines = self._connect()
        if lines is None:
            raise AgentGone("the agent is not running")
        try:
            return self._exchange(lines, op, timeout, fields)
        finally:
            lines.close()

    # ------------------------------------------------------------------------- queries

    def _ask(self, op: str, fields: dict[str, Any]) -> dict[str, Any] | None:
        """A question (ping, status) to the running agent; None when none runs.

        Asked twice if the connection closes unanswered: an agent flooded with connections drops
        the oldest that have not spoken yet, which may, rarely, be ours. One that has stopped
        refuses the second connect.
        """
        for attempt in (1, 2):
            lines = self._connect()
            if lines is None:
                return None
            try:
                return self._exchange(lines, op, QUICK_TIMEOUT, fields)
            except AgentGone:
                if attempt == 2:
                    return None  # it was exiting (idle) as we asked
            finally:
                lines.close()
        return None

    def ping(self) -> AgentInfo | None:
        """The running agent's facts; None when no agent runs (never starts one)."""
        reply = self._ask("ping", {})
        return None if reply is None else AgentInfo.from_wire(reply)

    def status(self) -> list[TunnelStatus]:
        """Every tunnel the agent holds; empty when no agent runs (never starts one)."""
        reply = self._ask("status", {})
        return [] if reply is None else protocol.reply_tunnels(reply)

    def rate_history(self) -> dict[str, list[float]]:
        """Each held tunnel's last minutes of rates (bytes/s both ways, one a second, oldest
        first); empty when no agent runs or it is older than the "history" feature."""
        reply = self._ask("status", {"history": True})
        return {} if reply is None else protocol.reply_history(reply)

    def find(self, name: str) -> TunnelStatus | None:
        """NAME's tunnel if the agent holds it; None otherwise. Never starts an agent, never fails."""
        try:
            _check_name(name)
            reply = self._ask("status", {"name": name})
            tunnels = [] if reply is None else protocol.reply_tunnels(reply)
        except (AgentError, OSError):
            return None
        return next((t for t in tunnels if t.name == name), None)

    def up_port(self, name: str) -> int | None:
        """The local port of NAME's tunnel when the agent holds it up; None otherwise (no agent
        too). As `find`, but reads the reply itself: the warm path (`cli.lean`) skips importing
        `core.tunnel` (and through it the SSH modules) this way."""
        try:
            _check_name(name)
            reply = self._ask("status", {"name": name})
        except (AgentError, OSError):
            return None
        tunnels = reply.get("tunnels") if reply is not None else None
        for tunnel in tunnels if isinstance(tunnels, list) else []:
            if not isinstance(tunnel, dict) or tunnel.get("name") != name:
                continue
            port = tunnel.get("local_port")
            if tunnel.get("state") == "up" and isinstance(port, int) and 0 < port <= 65535:
                return port
        return None

    def crashed(self) -> Crash | None:
        """Traces of an agent that died without cleaning up (none when one is alive)."""
        from tunnelman.agent.locks import is_locked, read_pid

        files = self.files
        try:
            if is_locked(files.lock):
                return None
        except OSError:
            return None
        state = files.read_state()
        if state is None and not files.socket.exists():
            return None
        tunnels = state.get("tunnels") if state else None
        pid = read_pid(files.lock)
        return Crash(pid=pid, tunnels=sorted(tunnels) if isinstance(tunnels, dict) else [])

    # ------------------------------------------------------------------------- actions

    def up(
        self,
        name: str,
        config: str | os.PathLike[str],
        port: int | None = None,
        *,
        host_keys: HostKeyPolicy | None = None,
        timeout: float = UP_TIMEOUT,
        linger: float | None = None,
    ) -> TunnelStatus:
        """Have the agent open NAME's tunnel (starting the agent if needed); return once it is up.

        `config` is the profile file the agent reads NAME from. `host_keys`: `accept_new` is passed
        on; `ask` is asked here about an unknown key (see the module docstring). Raises the error
        the agent met (HostKeyUnknown, AuthenticationFailed, PortBusyError, …).
        `linger`: seconds the agent keeps the tunnel once no client uses it (a one-shot's); None:
        held until `down`. FeatureMissing when the running agent is too old to linger.
        """
        from tunnelman.core.ssh.known_hosts import HostKeyUnknown

        _check_name(name)
        accept_new = bool(host_keys and host_keys.accept_new)
        ask = host_keys.ask if host_keys is not None else None
        fields: dict[str, Any] = {
            "name": name,
            "config": str(Path(config).expanduser().absolute()),
            "port": port,
            "accept_new": accept_new,
            "ssh_auth_sock": os.environ.get("SSH_AUTH_SOCK"),
            "aws_env": protocol.aws_settings(),
        }
        if linger is not None:
            info = self.ensure_running()
            if "linger" not in info.features:
                raise FeatureMissing(
                    f"the running agent (pid {info.pid}, tunnelman {info.version}) cannot linger",
                    hint="`tunnelman agent stop` (its tunnels close); the next command starts a "
                    "newer one",
                )
            fields["linger"] = linger
        try:
            reply = self._up(timeout, fields)
        except HostKeyUnknown as exc:
            if ask is None or accept_new:
                raise
            if not ask(exc.info):
                raise HostKeyUnknown(
                    f"host key of bastion {exc.info.target} not accepted "
                    f"({exc.info.display_type} {exc.info.fingerprint})",
                    info=exc.info,
                    known_hosts=exc.known_hosts,
                    hint="nothing was recorded; run again and answer yes once you have checked it",
                ) from None
            reply = self._up(timeout, {**fields, "accept_fingerprint": exc.info.fingerprint})
        return protocol.status_from_wire(reply.get("tunnel"))

    def _up(self, timeout: float, fields: dict[str, Any]) -> dict[str, Any]:
        """`up` on a running agent; once more on a new one if it went away in between (idle exit
        between our ping and our request, or a crash: its tunnels are gone either way)."""
        for attempt in (1, 2):
            self.ensure_running()
            try:
                return self._request("up", timeout=timeout, **fields)
            except AgentGone:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def down(self, name: str) -> TunnelStatus:
        """Close NAME's tunnel; AgentError naming what is held when NAME is not."""
        _check_name(name)
        if self.ping() is None:
            raise AgentError(
                f"no tunnel '{name}' is held: the agent is not running",
                hint="`tunnelman up NAME --detach` opens one",
            )
        reply = self._request("down", timeout=STOP_TIMEOUT, name=name)
        return protocol.status_from_wire(reply.get("tunnel"))

    def down_all(self) -> list[TunnelStatus]:
        """Close every tunnel the agent holds; empty when no agent runs."""
        lines = self._connect()
        if lines is None:
            return []
        try:
            reply = self._exchange(lines, "down_all", STOP_TIMEOUT, {})
        finally:
            lines.close()
        return protocol.reply_tunnels(reply)

    def shutdown(self, wait: float = STOP_TIMEOUT) -> AgentInfo | None:
        """Stop the agent (its tunnels close) and wait until it has exited; None if none ran."""
        from tunnelman.agent.locks import is_locked

        info = self.ping()
        if info is None:
            return None
        with contextlib.suppress(AgentError):  # it may go away before answering
            self._request("shutdown", timeout=wait)
        deadline = time.monotonic() + wait
        while is_locked(self.files.lock):
            if time.monotonic() >= deadline:
                raise AgentError(
                    f"the agent (pid {info.pid}) did not stop within {wait:g} s",
                    hint=f"its log is {info.log or log_path()}",
                )
            time.sleep(0.05)
        return info

    def subscribe(self, stop: threading.Event | None = None) -> Iterator[AgentEvent]:
        """State changes as they happen: first the current tunnels, then each change.

        Ends (after a "shutdown" event) when the agent goes away, or when `stop` is set. Yields
        nothing when no agent runs. Blocking: run it in a thread (a TUI worker).
        """
        lines = self._connect()
        if lines is None:
            return
        try:
            reply = self._exchange(lines, "subscribe", QUICK_TIMEOUT, {})
            for status in protocol.reply_tunnels(reply):
                yield AgentEvent("status", status.name, status)
            lines.sock.settimeout(0.5)
            while stop is None or not stop.is_set():
                try:
                    event = lines.recv()
                except TimeoutError:
                    continue
                except OSError:
                    event = None
                if event is None or event.get("event") == "shutdown":
                    yield AgentEvent("shutdown")
                    return
                if event.get("event") == "removed":
                    yield AgentEvent(
                        "removed", protocol.reply_str(event, "name", what="a removal's name")
                    )
                elif event.get("event") == "status":
                    status = protocol.status_from_wire(event.get("tunnel"))
                    yield AgentEvent("status", status.name, status)
        finally:
            lines.close()

    # ------------------------------------------------------------------------- starting

    def ensure_running(self, timeout: float = START_TIMEOUT) -> AgentInfo:
        """The running agent, started now if none runs (see the module docstring)."""
        info = self.ping()
        if info is not None:
            return self._check_version(info)
        from tunnelman.agent.locks import FileLock

        files = paths(create=True)
        self._files = files
        start_lock = FileLock(files.start_lock)
        if not start_lock.acquire(timeout=timeout):
            raise AgentError(
                f"another tunnelman has been starting the agent for {timeout:g} s",
                hint=f"its log is {log_path()}",
            )
        try:
            info = self.ping()  # started by whoever held the lock before us
            if info is not None:
                return self._check_version(info)
            crash = self.crashed()
            if crash is not None:
                with contextlib.suppress(OSError):
                    files.socket.unlink()
                with contextlib.suppress(OSError):
                    files.state.unlink()
            proc = self._spawn()
            info = self._wait_ready(proc, timeout)
        finally:
            start_lock.release()
        if crash is not None and self._notify is not None:
            lost = f" (the tunnels it held were closed: {', '.join(crash.tunnels)})"
            self._notify(
                "the agent had stopped; started a new one" + (lost if crash.tunnels else "")
            )
        return info

    @staticmethod
    def _check_version(info: AgentInfo) -> AgentInfo:
        if info.protocol != protocol.VERSION:
            raise AgentError(
                f"the running agent (pid {info.pid}, tunnelman {info.version}) speaks protocol "
                f"version {info.protocol}, this tunnelman {protocol.VERSION}",
                hint="stop it with `tunnelman agent stop` (its tunnels close); the next command "
                "starts a matching one",
            )
        return info

    def _spawn(self) -> subprocess.Popen[bytes]:
        """`python -m tunnelman.agent` detached: its own session, stdio on /dev/null."""
        import subprocess

        import tunnelman

        env = dict(os.environ)
        # The agent starts in / : a relative directory or log file would name another place there.
        if env.get(ENV_DIR):
            env[ENV_DIR] = str(self.files.dir)
        if env.get(ENV_LOG):
            env[ENV_LOG] = str(log_path())
        # The agent runs the same tunnelman as this process, installed or not.
        root = str(Path(tunnelman.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        from tunnelman.core.platform import process

        # Its own session (POSIX) or a detached, windowless process (Windows).
        kwargs: dict[str, Any] = process.detached_kwargs()
        proc = subprocess.Popen(
            [sys.executable, "-m", "tunnelman.agent", "--detached"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=True,
            cwd=os.path.abspath(os.sep),  # hold no directory busy
            env=env,
            **kwargs,
        )
        # Reap it whenever it exits, so a long-lived caller (the TUI) keeps no zombie.
        import threading  # not on the warm path, which only asks for a port

        threading.Thread(target=proc.wait, name="tunnelman-agent-reaper", daemon=True).start()
        return proc

    def _wait_ready(self, proc: subprocess.Popen[bytes], timeout: float) -> AgentInfo:
        deadline = time.monotonic() + timeout
        while True:
            info = self.ping()
            if info is not None:
                return self._check_version(info)
            code = proc.poll()
            if code is not None and code != EXIT_ALREADY_RUNNING:
                raise AgentError(
                    f"the agent exited at start (status {code})",
                    hint=f"see its log {log_path()}",
                )
            if time.monotonic() >= deadline:
                raise AgentError(
                    f"the agent did not start within {timeout:g} s",
                    hint=f"see its log {log_path()}",
                )
            time.sleep(0.05)


def _features(value: object) -> tuple[str, ...]:
    """`ping`'s feature names (an older agent sends none)."""
    if not isinstance(value, list):
        return ()
    return tuple(v for v in value if isinstance(v, str))


def _check_name(name: str) -> None:
    """A profile name must be text: bytes that are not UTF-8 in argv arrive as lone surrogates."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        try:
            raw = os.fsencode(name)  # the bytes as they were in argv, where that is possible
        except UnicodeEncodeError:
            raw = name.encode("utf-8", "surrogatepass")
        shown = raw.decode("utf-8", "backslashreplace")
        raise AgentError(
            f"profile name '{shown}' is not valid text (bytes that are not UTF-8)",
            hint="`tunnelman status` lists the names of the tunnels the agent holds",
        ) from None
