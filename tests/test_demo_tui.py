"""`tunnelman demo` in a real terminal (tmux): the TUI opens on the sandbox profile, its tunnel
opens, `tunnelman psql demo` works from another process meanwhile, and quitting the TUI removes
the profile, the files and the processes.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.test_demo import REPO, USER_FILE, _env, _need, _pids_using, _system_postgres
from tunnelman.core import profiles as prof


class Tmux:
    """One private tmux server (its own socket), so no other session is touched."""

    def __init__(self, name: str) -> None:
        self.base = ["tmux", "-L", name]

    def run(self, *args: str) -> str:
        result = subprocess.run(
            [*self.base, *args], capture_output=True, text=True, timeout=30, check=True
        )
        return result.stdout

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-J", "-t", "demo")

    def wait_for(self, check: Callable[[str], bool], timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen()
            if check(text):
                return text
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} after {timeout:.0f} s; screen:\n{text}")
            time.sleep(0.25)

    def kill(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True, timeout=30, check=False)


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    if shutil.which("tmux") is None:
        _need("tmux is not installed")
    server = Tmux(f"tunnelman-demo-test-{os.getpid()}")
    yield server
    server.kill()


def test_demo_opens_the_tui_and_cleans_up_when_it_quits(tmp_path: Path, tmux: Tmux) -> None:
    _system_postgres()
    env = _env(tmp_path)
    config = Path(env["XDG_CONFIG_HOME"]) / "tunnelman" / "profiles.toml"
    config.parent.mkdir(parents=True)
    config.write_text(USER_FILE)
    script = tmp_path / "run.sh"
    exports = "".join(
        f"export {k}={shlex.quote(v)}\n"
        for k, v in env.items()
        if k in ("HOME", "XDG_CONFIG_HOME", "XDG_STATE_HOME", "PYTHONPATH", "PATH", "CI")
    )
    script.write_text(
        f"{exports}export TERM=xterm-256color\ncd {shlex.quote(str(REPO))}\n"
        f"{shlex.quote(sys.executable)} -m tunnelman demo\necho DEMO-EXIT=$?\nsleep 60\n"
    )
    tmux.run("new-session", "-d", "-s", "demo", "-x", "160", "-y", "45", f"sh {script}")

    tmux.wait_for(lambda s: "tunnelman demo sandbox" in s and "closed" in s, 120, "demo profile")
    profile = prof.load(config).get("demo")
    assert profile.identity_file is not None
    workdir = profile.identity_file.parent

    tmux.run("send-keys", "-t", "demo", "Enter")  # open the highlighted profile's tunnel
    tmux.wait_for(lambda s: "● up" in s, 60, "open tunnel")

    shot = subprocess.run(
        [
            sys.executable,
            "-m",
            "tunnelman",
            "psql",
            "demo",
            "-tA",
            "-c",
            "select count(*) from places",
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert shot.returncode == 0, shot.stderr
    assert shot.stdout.strip() == "8"

    tmux.run("send-keys", "-t", "demo", "q")
    tmux.wait_for(lambda s: "Close them and quit" in s, 30, "quit question")
    tmux.run("send-keys", "-t", "demo", "y")
    text = tmux.wait_for(lambda s: "DEMO-EXIT=" in s, 60, "exit of tunnelman demo")
    assert "DEMO-EXIT=0" in text
    assert f"sandbox stopped; profile 'demo' removed from {config}" in text
    assert config.read_text() == USER_FILE
    assert not (Path(env["HOME"]) / ".pgpass").exists()
    assert not workdir.exists()
    deadline = time.monotonic() + 10
    while _pids_using(workdir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _pids_using(workdir)
