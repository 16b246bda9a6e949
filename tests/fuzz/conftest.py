"""The fuzz tests' hook: the counts of what was tried end the session's report.

Budgets, hypothesis profiles and counters live in `tests.fuzz.budget`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.fuzz.budget import COUNTS, MODE, START


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not COUNTS:
        return
    elapsed = time.monotonic() - START
    terminalreporter.section(f"tunnelman fuzz ({MODE})")
    for key in sorted(COUNTS):
        terminalreporter.write_line(f"{key:>28}: {COUNTS[key]}")
    terminalreporter.write_line(f"{'seconds':>28}: {elapsed:.0f}")
    report = os.environ.get("TUNNELMAN_FUZZ_REPORT")
    if report:
        data = {"mode": MODE, "seconds": round(elapsed, 1), "counts": dict(sorted(COUNTS.items()))}
        Path(report).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
