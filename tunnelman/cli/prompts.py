"""Terminal prompts the core asks for through callbacks: host keys, key passphrases, passwords.

Shared by the CLI commands (`up`, `check`, the one-shot client commands). Each factory returns a
callback only when standard input is a terminal; otherwise None, which tells the core that nobody
can answer, so it fails with a message naming the non-interactive way out (`--accept-new-host-key`,
ssh-agent, the keyring) instead of hanging on a read. Prompts go to stderr; stdout stays clean.

The SSH modules are named for their types only: `host_key_policy` imports `known_hosts` when it
is called, so loading this module (every one-shot command does, warm or cold) costs no SSH code.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from tunnelman.core.credentials import Prompt
    from tunnelman.core.ssh import PassphrasePrompt
    from tunnelman.core.ssh.known_hosts import HostKeyInfo, HostKeyPolicy


def interactive() -> bool:
    """Whether a person can answer: stdin is a terminal."""
    try:
        return sys.stdin.isatty()
    except (AttributeError, ValueError):  # closed or replaced stdin
        return False


def ask_host_key(info: HostKeyInfo) -> bool:
    """OpenSSH's question about an unknown host key; True only for `yes` (or the fingerprint)."""
    click.echo(
        f"The authenticity of bastion '{info.target}' can't be established.\n"
        f"{info.display_type} key fingerprint is {info.fingerprint}\n"
        "(the SHA256 fingerprint as OpenSSH prints it: compare it with "
        "`ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub` on the bastion, or ask its administrator)",
        err=True,
    )
    while True:
        answer = click.prompt(
            "Are you sure you want to continue connecting (yes/no/[fingerprint])?",
            default="",
            show_default=False,
            err=True,
        ).strip()
        if answer.lower() in ("yes", "y") or answer == info.fingerprint:
            return True
        if answer.lower() in ("no", "n", ""):
            return False
        click.echo("Please type 'yes', 'no' or the fingerprint.", err=True)


def host_key_policy(accept_new: bool) -> HostKeyPolicy:
    """`--accept-new-host-key` accepts without asking; else ask on a terminal; else refuse."""
    from tunnelman.core.ssh.known_hosts import HostKeyPolicy

    if accept_new:
        return HostKeyPolicy(accept_new=True)
    return HostKeyPolicy(ask=ask_host_key if interactive() else None)


def _ask_passphrase(path: Path) -> str | None:
    value: str = click.prompt(
        f"Enter passphrase for key '{path}'",
        hide_input=True,
        default="",
        show_default=False,
        err=True,
    )
    return value or None


def passphrase_prompt() -> PassphrasePrompt | None:
    """A hidden passphrase prompt on a terminal, else None."""
    return _ask_passphrase if interactive() else None


def _ask_password(text: str) -> str | None:
    value: str = click.prompt(
        text.rstrip().rstrip(":"), hide_input=True, default="", show_default=False, err=True
    )
    return value or None


def password_prompt() -> Prompt | None:
    """A hidden database-password prompt on a terminal, else None."""
    return _ask_password if interactive() else None
