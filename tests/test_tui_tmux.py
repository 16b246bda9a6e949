"""The real binary in a real terminal: `python3 -m tunnelman --config …` inside tmux (160x45).

Drives it with `tmux send-keys` and reads the screen with `capture-pane`, as a person would see it:
the lab profiles are listed, enter opens the tunnel and its port appears (a psycopg query goes
through it), a bastion that never answers leaves `?` instantly usable and can be cancelled, and
`q` quits cleanly (the agent keeps the tunnel; the tmux pane closes).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import LabProfile
from tests.lab import need
from tests.lab.ports import port_open
from tests.lab.toml_profile import write_profile
from tests.tui_support import HangingBastion
from tunnelman.agent.client import AgentClient

REPO = Path(__file__).resolve().parents[1]


class Tmux:
    """A private tmux server (its own socket) running one command in a 160x45 window."""

    def __init__(self, name: str) -> None:
        self.argv = ["tmux", "-L", name]

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.argv, *args], capture_output=True, text=True, check=check, timeout=10
        )

    def start(self, command: str) -> None:
        self.run("new-session", "-d", "-s", "tui", "-x", "160", "-y", "45", command)

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", "tui", *keys)

    def screen(self) -> str:
        result = self.run("capture-pane", "-p", "-t", "tui", check=False)
        return result.stdout

    def alive(self) -> bool:
        return self.run("has-session", "-t", "tui", check=False).returncode == 0

    def wait(self, test: Callable[[str], object], timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen()
            if test(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; the screen:\n{text}")
            time.sleep(0.05)

    def kill(self) -> None:
        self.run("kill-server", check=False)


@pytest.fixture
def tmux(tmp_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Tmux]:
    if shutil.which("tmux") is None:
        need("tmux is not installed (apt-get install tmux)")
    # The new tmux server copies our environment; COLUMNS/LINES from a runner would override the
    # real window size for the program inside (Python's shutil.get_terminal_size reads them first).
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.delenv("LINES", raising=False)
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    server = Tmux(f"tunnelman-test-{os.getpid()}")
    try:
        yield server
    finally:
        server.kill()
        AgentClient().shutdown()  # the TUI handed its tunnel to this test's private agent


def test_real_binary_in_tmux(lab_profile: LabProfile, tmux: Tmux, tmp_home: Path) -> None:
    with HangingBastion() as hanging:
        base = dict(lab_profile.keys)
        write_profile(
            lab_profile.config,
            "hang",
            **{
                **base,
                "bastion": f"{lab_profile.sshd.user}@127.0.0.1:{hanging.port}",
                "description": "bastion that never answers",
                "connect_timeout": 60,
            },
        )
        # `env -u`: a shell may export COLUMNS/LINES of the 80x24 it started in; Python's
        # get_terminal_size would believe them over the real 160x45 window.
        command = (
            f"env -u COLUMNS -u LINES {sys.executable} -m tunnelman --config {lab_profile.config}"
        )
        tmux.start(command)

        # the list shows the lab profiles
        screen = tmux.wait(
            lambda s: "bastion that never answers" in s and "Open tunnel" in s, 20, "the list"
        )
        rows = [line for line in screen.splitlines() if "○ closed" in line]
        assert any(row.startswith("│ lab ") and "tunnelman test lab" in row for row in rows), screen
        assert any(row.startswith("│ hang ") for row in rows), screen

        # enter opens the highlighted tunnel; the port appears
        tmux.keys("Enter")
        screen = tmux.wait(lambda s: re.search(r"listening\s+127\.0\.0\.1:\d+", s), 30, "the port")
        match = re.search(r"listening\s+127\.0\.0\.1:(\d+)", screen)
        assert match is not None
        port = int(match.group(1))
        assert "● up" in screen

        def lab_row(text: str) -> str:
            return next((line for line in text.splitlines() if line.startswith("│ lab ")), "")

        # The list shows the whole port too: its column widens in the frame after the detail
        # pane's (the pane can be drawn first), so wait for that frame, briefly.
        screen = tmux.wait(lambda s: f"● up      {port}" in lab_row(s), 5, "the whole port")
        assert f"● up      {port}" in lab_row(screen), lab_row(screen)
        with psycopg.connect(lab_profile.postgres.dsn(host="127.0.0.1", port=port)) as conn:
            row = conn.execute("select postgis_version()").fetchone()
        assert row is not None

        # another profile's bastion hangs: `?` still opens help at once
        tmux.keys("Down")
        tmux.wait(lambda s: "bastion that never answers" in s and "Open tunnel" in s, 5, "hang row")
        tmux.keys("Enter")
        tmux.wait(lambda s: "connecting…" in s, 10, "connecting…")
        while not hanging.accepted:
            time.sleep(0.05)
        started = time.monotonic()
        tmux.keys("?")
        tmux.wait(lambda s: "tunnelman — keys" in s, 3, "the help screen")
        help_seconds = time.monotonic() - started
        sys.stderr.write(f"\nhelp opened {help_seconds:.3f} s after `?` while connecting\n")
        assert help_seconds < 1.5
        tmux.keys("Escape")
        tmux.wait(lambda s: "tunnelman — keys" not in s, 3, "help to close")
        # enter again cancels the hanging connect
        tmux.keys("Enter")
        tmux.wait(lambda s: "Cancelled connecting 'hang'" in s, 5, "the cancel notice")

        # q quits cleanly: the agent keeps the lab tunnel, the pane closes
        tmux.keys("q")
        deadline = time.monotonic() + 10
        while tmux.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not tmux.alive(), tmux.screen()
        assert port_open("127.0.0.1", port)  # the agent holds it after the TUI is gone
