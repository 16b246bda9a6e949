"""The benchmark runs end to end in quick mode and prints every row of its table.

`python3 bench/run.py --quick` stands up its own lab (sshd + PostgreSQL), measures tiny sizes once
and prints the markdown table without writing docs/benchmarks.md. Here it must finish within
~60 s and show each row with a number (or "missing" with the reason printed below the table).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.lab import need
from tests.lab.postgres import postgres_missing
from tests.lab.sshd import sshd_missing

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.long  # about 40 s: the longer run (TUNNELMAN_LONG=1)
@pytest.mark.timeout(180)
def test_quick_bench_prints_every_row(tmp_path: Path) -> None:
    for reason in (sshd_missing(), postgres_missing(postgis=False)):
        if reason:
            need(reason)
    if shutil.which("pgbench") is None and not list(
        Path("/usr/lib/postgresql").glob("*/bin/pgbench")
    ):
        need("pgbench not installed")
    sys.path.insert(0, str(REPO))
    from bench.run import ROWS

    out = tmp_path / "bench.md"
    res = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=170,
        cwd=tmp_path,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    table = [line for line in res.stdout.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| measurement | direct | `ssh -N -L` | tunnelman |")
    body = table[1:]
    for key, label in ROWS.items():
        prefix = label.split("{")[0]
        rows = [line for line in body if line.startswith(f"| {prefix}")]
        assert rows, f"row {key} ({label}) missing from:\n{res.stdout}"
        cells = [c.strip() for c in rows[0].strip("|").split("|")]
        tunnelman = cells[3]
        assert tunnelman == "missing" or tunnelman[0].isdigit(), rows[0]
    assert "Machine: " in res.stdout
    assert "bench:begin" in out.read_text()
    assert "target ≥ 0.9" in res.stdout
