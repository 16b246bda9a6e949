"""Start on connect: find a profile's cluster stopped (or already starting) before a tunnel opens,
start it, and wait until its writer instance is available.

Called through `tunnelman.core.aws` by the CLI's connecting commands (`up`, `psql`, `exec`, `env`,
`conn`; tunnelman/cli/wake.py asks the person) and the TUI's open-tunnel worker (a confirm modal).
`wake_needed` returns at once, without importing boto3, for a profile with no `cluster`. The
waiting is `rds.wait_for(..., writer=True)`; the TCP connect through the tunnel that follows is the
tunnel's own test forward at `start()`, given `RESUME_CONNECT_TIMEOUT` by `after_wake`.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Literal

from tunnelman.core.aws.rds import (
    RESUME_CONNECT_TIMEOUT,
    StatusCallback,
    change_state,
    cluster_state,
    wait_for,
)

if TYPE_CHECKING:
    from tunnelman.core.aws.model import Database
    from tunnelman.core.profiles import Profile

Need = Literal["start", "wait"]
""""start": the cluster is stopped; "wait": it is starting already (nothing to ask)."""

WAKE_TIMEOUT = 900.0
"""Seconds to wait for a cluster and its writer to become available (AWS quotes "minutes")."""

POLL_INTERVAL_ENV = "TUNNELMAN_AWS_POLL_INTERVAL"
"""Seconds between status checks while waiting (default 5; tests shorten it)."""

_DEFAULT_INTERVAL = 5.0


def poll_interval() -> float:
    """$TUNNELMAN_AWS_POLL_INTERVAL (at least 0.05 s), else 5 s."""
    raw = os.environ.get(POLL_INTERVAL_ENV, "")
    try:
        return max(float(raw), 0.05) if raw else _DEFAULT_INTERVAL
    except ValueError:
        return _DEFAULT_INTERVAL


def wake_needed(profile: Profile) -> tuple[Database, Need] | None:
    """The profile's cluster and what it needs before a connection can succeed, or None.

    None without a cluster (no AWS call, no boto3) and when it is neither stopped nor starting.
    One describe call, shared with the resume checks (`cluster_state`'s 30 s cache). Raises
    AWSError when AWS cannot be asked.
    """
    if not profile.cluster:
        return None
    db = cluster_state(profile)
    if db is None:
        return None
    if db.status == "stopped":
        return db, "start"
    if db.status == "starting":
        return db, "wait"
    return None


def wake(
    profile: Profile,
    db: Database,
    need: Need,
    *,
    on_status: StatusCallback | None = None,
    cancel: threading.Event | None = None,
    timeout: float = WAKE_TIMEOUT,
    interval: float | None = None,
) -> Database:
    """Start the cluster when `need` is "start", then wait for it and its writer instance.

    Returns its last state: "available" unless `cancel` was set (then AWS carries on). AWSError on
    a refusal, a failed state, or `timeout`.
    """
    if need == "start":
        change_state(profile, "start", db)
    return wait_for(
        profile,
        "start",
        on_status=on_status,
        cancel=cancel,
        timeout=timeout,
        interval=poll_interval() if interval is None else interval,
        writer=True,
    )


def after_wake(profile: Profile) -> Profile:
    """The profile to connect with once woken: a just-started endpoint may take a while to accept
    the tunnel's test connection, so allow `RESUME_CONNECT_TIMEOUT` for it."""
    from tunnelman.core.profiles import with_overrides

    if profile.connect_timeout >= RESUME_CONNECT_TIMEOUT:
        return profile
    return with_overrides(profile, connect_timeout=RESUME_CONNECT_TIMEOUT)
