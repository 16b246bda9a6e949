"""What several commands share: loading the named profile, option decorators, and the lines
printed once a tunnel is up (`psql_command`) or before one starts (`announce_resume`).

Light on purpose: click, the CLI's output and `core.profiles` only, so `ls` or `profile rm` can
use it without paramiko, boto3 or Textual (those are imported inside the functions that need them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import click

from tunnelman.cli.main import get_ctx
from tunnelman.cli.output import progress
from tunnelman.core import profiles as prof
from tunnelman.core.profiles import Profile

F = TypeVar("F", bound=Callable[..., object])


def load_profile(ctx: click.Context, name: str) -> Profile:
    """Profile NAME from the file `--config` (or its defaults) names; a missing file is an error.

    A command the warm path (`cli.lean`) handed over has read the file already: that reading is
    used, once, instead of parsing the file a second time.
    """
    from tunnelman.cli.lean import loaded_profiles

    config = get_ctx(ctx).config
    loaded = loaded_profiles(config)
    return (loaded if loaded is not None else prof.load(config, missing_ok=False)).get(name)


def accept_new_host_key_option(fn: F) -> F:
    """`--accept-new-host-key` (parameter `accept_new_host_key`): for every command that connects."""
    return click.option(
        "--accept-new-host-key",
        is_flag=True,
        help="Trust and record the bastion's host key if known_hosts has none for it yet "
        "(never accepts a CHANGED key).",
    )(fn)


def json_option(help_text: str) -> Callable[[F], F]:
    """`--json` (parameter `as_json`): machine-readable output; the help says its shape."""

    def decorate(fn: F) -> F:
        return click.option("--json", "as_json", is_flag=True, help=help_text)(fn)

    return decorate


def psql_command(profile: Profile, port: int) -> str:
    """A ready `psql "host=127.0.0.1 port=… …"` line: no password, ever."""
    from tunnelman.core import clients

    return clients.render("psql", profile, port).strip()


def announce_resume(profile: Profile) -> None:
    """Before connecting to a profile with a cluster: say when it is paused and will resume.

    Asks AWS (so imports boto3) only for profiles that name a cluster; one-shot clients already
    allow a 60 s connect timeout for those.
    """
    if not profile.cluster:
        return
    from tunnelman.core import aws

    note = aws.resume_hint(profile)
    if note:
        progress(f"tunnelman: {note}")


def connecting_text(profile: Profile) -> str:
    """The first line `up` prints: "Connecting to bastion user@host", or through the AWS way."""
    if profile.bastion is not None:  # "user@host", or "user@host over an SSM session to i-…"
        return f"Connecting to bastion {profile.route}"
    return f"Connecting through {profile.route}"
