"""Running the tunnelman CLI as a user would: ``python -m tunnelman ARGS`` in a subprocess.

``run_cli`` is the one helper every test uses for that (no tests here); tests take it as the
``run_cli`` fixture (tests/conftest.py), which marks them ``cli``: out of the quick ``-m unit`` run.  The child gets this
test's environment (``tmp_home`` has already pointed HOME, XDG_* and ``TUNNELMAN_CONFIG``
inside the test's own home) or exactly ``env`` when given; stdin is not a terminal (empty, or
``input``); it runs in a session of its own (setsid) so it has no controlling terminal, as
under CI, and nothing it leaves behind shares the test's session.  ``TUNNELMAN`` is the argv
prefix for tests that need ``Popen`` or a pty instead; ``run_on_pty`` runs it on a pseudo-terminal
and answers its one [y/N] question.
"""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

__all__ = ["TUNNELMAN", "CliResult", "RunCli", "run_cli", "run_on_pty"]
__test__ = False  # helpers only

TUNNELMAN = [sys.executable, "-m", "tunnelman"]
REPO = Path(__file__).resolve().parents[1]


class CliResult(subprocess.CompletedProcess[str]):
    """A finished CLI run; ``elapsed``: wall-clock seconds it took."""

    elapsed: float = 0.0


def run_cli(
    *args: str,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
    timeout: float = 120,
    cwd: str | Path | None = None,
    new_session: bool = True,
) -> CliResult:
    """``tunnelman ARGS`` to completion; never raises for a non-zero exit.

    ``env``: the child's whole environment (default: this process's).  ``input``: text fed
    on stdin (default: stdin is /dev/null).  ``new_session=False`` keeps the child in the
    test's session (for a test about what a terminal's session sees).
    """
    started = time.monotonic()
    done = subprocess.run(
        [*TUNNELMAN, *args],
        input=input,
        stdin=subprocess.DEVNULL if input is None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=None if env is None else dict(env),
        cwd=cwd,
        check=False,
        start_new_session=new_session,
    )
    result = CliResult(done.args, done.returncode, done.stdout, done.stderr)
    result.elapsed = time.monotonic() - started
    return result


class RunCli(Protocol):
    """The type of the ``run_cli`` fixture: `run_cli` itself."""

    def __call__(
        self,
        *args: str,
        env: Mapping[str, str] | None = None,
        input: str | None = None,
        timeout: float = 120,
        cwd: str | Path | None = None,
        new_session: bool = True,
    ) -> CliResult: ...


def run_on_pty(args: list[str], env: dict[str, str], answer: str) -> tuple[int, str]:
    """Run the CLI on a pseudo-terminal and answer its [y/N] question."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [*TUNNELMAN, *args],
        stdin=slave, stdout=slave, stderr=slave, env=env, cwd=str(REPO), close_fds=True,
    )  # fmt: skip
    os.close(slave)
    output = b""
    answered = False
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                output += chunk
                if not answered and b"[y/N]" in output:
                    os.write(master, answer.encode() + b"\n")
                    answered = True
            elif proc.poll() is not None:
                break
        return proc.wait(timeout=30), output.decode("utf-8", "replace")
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
