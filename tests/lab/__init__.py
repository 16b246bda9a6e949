"""The integration test lab: real sshd, PostgreSQL/PostGIS, moto, Secret Service, netns.

Everything here starts real processes on loopback (or inside network namespaces the lab
created) and stops them again.  The pytest fixtures live in ``tests/conftest.py``; this
package holds the plain classes so scripts and benches can use them without pytest.

``need(reason)`` is the one place that decides between skipping and failing when a system
service cannot be provided: skip on a developer machine, fail in CI (``CI`` set to anything
but ``""``, ``"0"`` or ``"false"``), so CI never goes green by skipping everything.
"""

from __future__ import annotations

import os
from typing import NoReturn

__all__ = ["in_ci", "need"]


def in_ci() -> bool:
    """True when the ``CI`` environment variable is set to a true-ish value."""
    value = os.environ.get("CI", "").strip().lower()
    return value not in ("", "0", "false", "no", "off")


def long_run() -> bool:
    """True under ``TUNNELMAN_LONG=1``: the documented longer run (acceptance-length waits, such
    as 30 s link cuts) instead of the CI budget."""
    return os.environ.get("TUNNELMAN_LONG", "").strip().lower() in ("1", "true", "yes", "on")


def need(reason: str) -> NoReturn:
    """Skip the current test (locally) or fail it (in CI) because ``reason`` is missing."""
    import pytest

    if in_ci():
        pytest.fail(f"lab service unavailable in CI: {reason}", pytrace=False)
    pytest.skip(reason)
