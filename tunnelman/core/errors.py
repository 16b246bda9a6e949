"""The one error base class of tunnelman, and its families.

Every error a person can cause or fix carries a message they can act on: what is wrong, and the way
out. The CLI prints `str(error)` on one line and exits with `exit_code`; the TUI shows it as a
notification or a modal. Anything that is not a `TunnelmanError` is a bug and may show a traceback.

The exit codes are a documented contract for scripts (EXIT_CODES, shown by `tunnelman --help` and
in the README): a family's code is a class attribute, so subclasses (host-key kinds, engine
specific errors) inherit it, and the agent sends it along with the class name.
"""

from __future__ import annotations


class TunnelmanError(Exception):
    """An error with a message a person can act on."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message} ({hint})")


class ConfigError(TunnelmanError):
    """The profile file is missing, malformed, or holds a bad value."""

    exit_code = 2


class ProfileNotFound(ConfigError):
    """No profile of that name."""


class SSHKeyError(TunnelmanError):
    """The private key cannot be used: permissions, format, passphrase."""

    exit_code = 4


class HostKeyError(TunnelmanError):
    """The bastion's host key is unknown (and nobody can confirm it) or has changed."""

    exit_code = 4


class PassphraseRequired(SSHKeyError):
    """The key is passphrase-protected and nobody here can type it (the agent, no terminal)."""


class TunnelError(TunnelmanError):
    """The tunnel could not be opened or has died."""


class Cancelled(TunnelError):
    """A start in progress was cancelled (the `cancel` event, Esc in the TUI, Ctrl-C)."""

    def __init__(self, message: str = "cancelled", *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)


class PortBusyError(TunnelError):
    """The local port is taken by another process.

    `port` and `pid` (the holder, when it could be found) let the CLI name the holder when it is
    one of tunnelman's own tunnels.
    """

    exit_code = 5

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        port: int | None = None,
        pid: int | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.port = port
        self.pid = pid


class BastionUnreachable(TunnelError):
    """The bastion's name does not resolve, refuses, or times out."""

    exit_code = 3


class AuthenticationFailed(TunnelError):
    """The bastion refused our key."""

    exit_code = 4


class ForwardingFailed(TunnelError):
    """The bastion refused to forward, or could not reach the database endpoint."""

    exit_code = 6


class CredentialError(TunnelmanError):
    """No password could be obtained: keyring missing or locked, nobody to prompt, AWS refused."""


class ClientError(TunnelmanError):
    """A client program or client file could not be used (psql missing, bad file)."""


class AWSError(TunnelmanError):
    """AWS refused or failed: credentials, permissions, region, unknown cluster."""


class AgentError(TunnelmanError):
    """The background agent could not be reached or refused a request."""


# code -> what it means; `tunnelman --help`, `up --help` and the README show this table.
EXIT_CODES: tuple[tuple[int, str], ...] = (
    (0, "success"),
    (1, "any other error (the message says what and how to fix it)"),
    (2, "bad profile file, unknown profile or bad command line"),
    (3, "the bastion cannot be reached (name does not resolve, refused, timed out, hung up)"),
    (
        4,
        "authentication: the key was refused or cannot be used, or the host key is unknown/changed",
    ),
    (5, "the local port is already in use"),
    (6, "the bastion refuses to forward, or cannot reach the database endpoint"),
    (127, "a client program (psql, pg_dump, ...) was not found"),
    (130, "interrupted (Ctrl-C)"),
)
