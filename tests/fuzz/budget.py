"""Budgets of the fuzz tests: hypothesis profiles `ci` (the default) and `long`, and the counters.

`ci` keeps every fuzz test together under about a minute on a small machine: few examples, a
fixed seed (`derandomize`, so a CI run never fails by luck) and no example database (nothing is
written to `.hypothesis/`). `long` is selected with `TUNNELMAN_FUZZ=long` (what `scripts/fuzz-long`
does): many more examples, random seeds, the database in a temp dir. Example counts per test
can be scaled with `TUNNELMAN_FUZZ_SCALE` (a float, default 1).

Each test counts what it really tried (`count("profiles")`…); at the end of the session the
counts go to the terminal summary and, when `TUNNELMAN_FUZZ_REPORT` names a file, to that file
as JSON, which is where `scripts/fuzz-long` reads the figures of docs/reliability.md.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import Counter

from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir
from hypothesis.database import DirectoryBasedExampleDatabase

MODE = os.environ.get("TUNNELMAN_FUZZ", "ci")
SCALE = float(os.environ.get("TUNNELMAN_FUZZ_SCALE", "1"))
_SUPPRESSED = [
    HealthCheck.too_slow,
    HealthCheck.function_scoped_fixture,
    HealthCheck.data_too_large,
]

# Hypothesis keeps caches (e.g. `constants/`) in `.hypothesis/` of the working directory even with
# no example database: keep them out of the repo tree.
set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(), "tunnelman-fuzz-hypothesis-home"))

settings.register_profile(
    "ci",
    max_examples=40,
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=_SUPPRESSED,
)
settings.register_profile(
    "long",
    max_examples=1000,
    derandomize=False,
    database=DirectoryBasedExampleDatabase(
        os.path.join(tempfile.gettempdir(), "tunnelman-fuzz-hypothesis")
    ),
    deadline=None,
    print_blob=True,
    suppress_health_check=_SUPPRESSED,
)
settings.load_profile("long" if MODE == "long" else "ci")

COUNTS: Counter[str] = Counter()
START = time.monotonic()


def examples(ci: int, long: int) -> int:
    """The number of examples a test runs in this mode."""
    return max(1, int((long if MODE == "long" else ci) * SCALE))


def count(what: str, n: int = 1) -> None:
    COUNTS[what] += n
