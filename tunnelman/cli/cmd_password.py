"""`tunnelman password set|delete NAME`: the database password in the OS keyring."""

from __future__ import annotations

import sys

import click

from tunnelman.cli.common import load_profile
from tunnelman.cli.output import out
from tunnelman.core import credentials
from tunnelman.core.errors import CredentialError


@click.group("password")
def password_group() -> None:
    """Keep a profile's database password in the OS keyring (service "tunnelman")."""


@password_group.command("set")
@click.argument("name")
@click.option("--stdin", "from_stdin", is_flag=True, help="Read the password from standard input.")
@click.pass_context
def password_set(ctx: click.Context, name: str, from_stdin: bool) -> None:
    """Store NAME's password: asked twice (hidden), or read from --stdin."""
    load_profile(ctx, name)  # a password for a profile that exists
    if from_stdin:
        value = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        value = click.prompt(
            f"Password for '{name}'", hide_input=True, confirmation_prompt=True, err=True
        )
    else:
        raise CredentialError(
            "no terminal to ask for the password",
            hint=f"pipe it in: `tunnelman password set {name} --stdin`",
        )
    if not value:
        raise CredentialError("empty password: nothing stored")
    credentials.keyring_set(name, value)
    out(f"Stored the password of '{name}' in the keyring.")


@password_group.command("delete")
@click.argument("name")
@click.pass_context
def password_delete(ctx: click.Context, name: str) -> None:
    """Remove NAME's password from the keyring."""
    del ctx  # the profile need not exist any more: cleaning up after a removed profile is fine
    if credentials.keyring_delete(name):
        out(f"Removed the password of '{name}' from the keyring.")
    else:
        out(f"No password of '{name}' was in the keyring.")
