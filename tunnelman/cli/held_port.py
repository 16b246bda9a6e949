"""Naming the holder of a busy local port when it is one of tunnelman's own tunnels.

Core's PortBusyError names the process ("pid 812 (python3: … -m tunnelman.agent …)"); when that
process is tunnelman's agent, stopping it would close every tunnel, so the useful answer is which
profile holds the port and the `tunnelman down NAME` that frees it. Core cannot ask the agent
(layers), so the CLI does it here, once, when such an error reaches `main()`.
"""

from __future__ import annotations

from tunnelman.core.errors import PortBusyError, TunnelmanError

# Commands that hold a local port in their own process while they run.
_HOLDING = ("up", "psql", "exec")
# Options, of the group and of those commands, that take a value (the profile is not it).
_VALUED = ("--config", "--port")


def _is_tunnelman(argv: list[str]) -> int | None:
    """Index of the program word (`…/tunnelman`, `-m tunnelman…`) in a command line, if any."""
    for i, word in enumerate(argv):
        # Either separator: a Windows path read on any system still names the program.
        base = word.replace("\\", "/").rsplit("/", 1)[-1].lower().removesuffix(".exe")
        if base in ("tunnelman", "tunnelman-script.py"):
            return i
        if word == "-m" and i + 1 < len(argv) and argv[i + 1].startswith("tunnelman"):
            return i + 1
    return None


def tunnelman_command(argv: list[str] | None) -> tuple[str, str] | None:
    """(command, profile) for a `tunnelman [--config P] up|psql|exec NAME …` command line."""
    if not argv:
        return None
    start = _is_tunnelman(argv)
    if start is None:
        return None
    words = iter(argv[start + 1 :])
    command = None
    for word in words:
        if word in _VALUED:
            next(words, None)
        elif word.startswith("-"):
            continue
        elif command is None:
            if word not in _HOLDING:
                return None
            command = word
        else:
            return command, word
    return None


def _agent_holder(port: int) -> str | None:
    """The profile whose agent-held tunnel listens on `port` (never starts an agent)."""
    from tunnelman.agent.client import AgentClient

    try:
        statuses = AgentClient().status()
    except (TunnelmanError, OSError):
        return None
    return next((s.name for s in statuses if s.local_port == port), None)


def name_own_holder(exc: PortBusyError) -> PortBusyError:
    """`exc`, or a clearer one when tunnelman itself (agent or `tunnelman up`) holds the port."""
    from tunnelman.core.tunnel import ports

    port = exc.port
    if not port:
        return exc
    argv = ports.process_argv(exc.pid) if exc.pid is not None else None
    if exc.pid is None or (argv is not None and _is_tunnelman(argv) is not None):
        name = _agent_holder(port)
        if name is not None:
            return PortBusyError(
                f"local port {port} is held by tunnelman's tunnel '{name}'",
                hint=f"run `tunnelman down {name}`, or choose another --port",
                port=port,
                pid=exc.pid,
            )
    found = tunnelman_command(argv)
    if found is None:
        return exc
    command, name = found
    return PortBusyError(
        f"local port {port} is held by tunnelman's tunnel '{name}' "
        f"(`tunnelman {command} {name}`, pid {exc.pid})",
        hint="close it there (Ctrl-C), or choose another --port",
        port=port,
        pid=exc.pid,
    )
