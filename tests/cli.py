"""Running the tunnelman CLI as a user would: ``python -m tunnelman ARGS`` in a subprocess.

``run_cli`` is the one helper every test uses for that (no tests here); tests take it as the
``run_cli`` fixture (tests/conftest.py), which marks them ``cli``: out of the quick ``-m unit`` run.  The child gets this
test's environment (``tmp_home`` has already pointed HOME, XDG_* and ``TUNNELMAN_CONFIG``
inside the test's own home) or exactly ``env`` when given; stdin is not a terminal (empty, or
``input``); it runs in a session of its own (setsid) so it has no controlling terminal, as
under CI, and nothing it leaves behind shares the test's session.  ``TUNNELMAN`` is the argv
prefix for tests that need ``Popen`` or a pty instead.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

__all__ = ["TUNNELMAN", "CliResult", "RunCli", "run_cli"]
__test__ = False  # helpers only

TUNNELMAN = [sys.executable, "-m", "tunnelman"]


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
