"""`tunnelman check NAME`: the doctor (`tunnelman.core.diagnose`), printed step by step.

Each step prints ✓ or ✗ with a detail as it completes; a failure prints the fix and the steps it
blocks are listed as skipped. Exit 0 when every step passes, 1 otherwise. Questions (an unknown
host key, a key passphrase, the database password) are asked on the terminal, when there is one.
"""

from __future__ import annotations

import click

from tunnelman.cli.common import accept_new_host_key_option
from tunnelman.cli.main import get_ctx
from tunnelman.cli.output import out
from tunnelman.cli.prompts import host_key_policy, passphrase_prompt, password_prompt
from tunnelman.core import profiles as prof
from tunnelman.core.diagnose import ALL_STEPS, Doctor, StepResult

_WIDTH = max(len(s) for s in ALL_STEPS) + 2
_INDENT = f"\n  {''.ljust(_WIDTH)}"


def step_lines(result: StepResult) -> list[str]:
    """How one step reads on the terminal: its mark line, then what goes under it."""
    label = result.step.ljust(_WIDTH)
    if result.passed:
        notes = "".join(f"{_INDENT}{prof.printable(note)}" for note in result.notes)
        return [f"✓ {label}{result.detail}{notes}"]
    if result.failed:
        # Several problems in the profile file come as several lines: keep them under the first.
        detail = _INDENT.join(prof.printable(x) for x in result.detail.split("\n"))
        lines = [f"✗ {label}{detail}"]
        if result.hint:
            lines.append(f"  {''.ljust(_WIDTH)}fix: {result.hint}")
        return lines
    return [f"- {label}skipped"]


@click.command("check")
@click.argument("name")
@accept_new_host_key_option
@click.pass_context
def check_cmd(ctx: click.Context, name: str, accept_new_host_key: bool) -> None:
    """Diagnose NAME step by step: config, key, bastion, host key, forward, login, PostGIS.

    Each step prints ✓ or ✗ with what to fix; steps after a failure are skipped. Exit status 0
    when everything passes.
    """
    doctor = Doctor(
        get_ctx(ctx).config,
        name,
        host_keys=host_key_policy(accept_new_host_key),
        passphrase=passphrase_prompt(),
        password=password_prompt(),
    )
    ok = True
    for result in doctor.run():
        ok = ok and not result.failed
        for line in step_lines(result):
            out(line)
    if not ok:
        ctx.exit(1)
    out("All checks passed.")
