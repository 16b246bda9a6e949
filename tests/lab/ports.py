"""TCP port helpers for the lab: pick a free loopback port, wait for a listener."""

from __future__ import annotations

import socket
import time

__all__ = ["free_port", "port_open", "wait_port", "wait_port_closed"]


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now (the kernel's choice).

    There is an unavoidable window between closing the probe socket and the caller binding
    the port; the kernel hands out ephemeral ports round-robin, so a clash is very unlikely.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when a TCP connection to ``host:port`` succeeds within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    """Wait until ``host:port`` accepts TCP connections; ``TimeoutError`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        if port_open(host, port, timeout=min(0.5, max(0.05, deadline - time.monotonic()))):
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"nothing listening on {host}:{port} after {timeout:.1f} s")
        time.sleep(0.02)


def wait_port_closed(host: str, port: int, timeout: float = 10.0) -> None:
    """Wait until ``host:port`` refuses connections; ``TimeoutError`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while port_open(host, port, timeout=0.2):
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{host}:{port} still accepts connections after {timeout:.1f} s")
        time.sleep(0.02)
