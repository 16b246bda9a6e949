"""Start on connect for the commands that connect (`up`, `psql`, `exec`, `env`, `conn`):
`--start-cluster`, the "is stopped. Start it now? [y/N]" question, and the progress lines.

Over `tunnelman.core.aws.wake`. A profile without `cluster` costs nothing here: no AWS call, no
boto3 import (tests/test_no_boto3.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import click

from tunnelman.cli.common import announce_resume
from tunnelman.cli.output import err, progress
from tunnelman.cli.prompts import interactive
from tunnelman.core.errors import AWSError, TunnelmanError
from tunnelman.core.profiles import Profile

F = TypeVar("F", bound=Callable[..., object])


def start_cluster_option(fn: F) -> F:
    """`--start-cluster` (parameter `start_cluster`)."""
    return click.option(
        "--start-cluster",
        is_flag=True,
        help="If the profile's cluster is stopped, start it without asking (needed without a "
        "terminal) and wait until its writer instance is available, then connect.",
    )(fn)


def prepare(
    ctx: click.Context, profile: Profile, *, start_cluster: bool, announce: bool = True
) -> Profile:
    """Before connecting: a stopped cluster is started (asked on a terminal, `--start-cluster`
    otherwise) and a starting one waited for; else the resume note (`announce`).

    Returns the profile to connect with (a longer connect timeout after a start). Ctrl-C while
    waiting exits 130; the start carries on in AWS.
    """
    if not profile.cluster:
        return profile
    from tunnelman.core import aws

    try:
        found = aws.wake_needed(profile)
    except AWSError:
        found = None  # the resume note says AWS could not be asked; connecting may still work
    if found is None:
        if announce:
            announce_resume(profile)
        return profile
    db, need = found
    what = f"{db.kind} '{db.id}'"
    name = profile.name
    if need == "start" and not start_cluster:
        if not interactive():
            raise AWSError(
                f"{what} is stopped and there is no terminal to ask: pass --start-cluster to "
                "start it and connect",
                hint=f"or run `tunnelman cluster start {name}` first",
            )
        if not click.confirm(
            f"{what[0].upper()}{what[1:]} is stopped. Start it now?", default=False, err=True
        ):
            raise TunnelmanError(
                f"{what} is stopped; not starting it",
                hint=f"start it with `tunnelman cluster start {name}`, or pass --start-cluster",
            )
    verb = "Starting" if need == "start" else "Waiting for"
    progress(
        f"tunnelman: {verb} {what} in {db.region}; waiting until its writer instance is "
        "available (Ctrl-C stops waiting)…"
    )
    seen = [0.0]

    def on_status(status: str, elapsed: float) -> None:
        seen[0] = elapsed
        if status != "available":
            progress(f"  {status}… ({elapsed:.0f} s)")

    try:
        aws.wake(profile, db, need, on_status=on_status)
    except KeyboardInterrupt:
        err(
            f"tunnelman: stopped waiting; {what} keeps starting in AWS: "
            f"check with `tunnelman cluster status {name}`"
        )
        ctx.exit(130)
    progress(f"tunnelman: {what} is available ({seen[0]:.0f} s); connecting …")
    return aws.after_wake(profile)
