"""The one error base class of tunnelman, and its families.

Every error a person can cause or fix carries a message they can act on: what is wrong, and the way
out. The CLI prints `str(error)` on one line and exits with `exit_code`; the TUI shows it as a
notification or a modal. Anything that is not a `TunnelmanError` is a bug and may show a traceback.
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


class HostKeyError(TunnelmanError):
    """The bastion's host key is unknown (and nobody can confirm it) or has changed."""


class TunnelError(TunnelmanError):
    """The tunnel could not be opened or has died."""


class PortBusyError(TunnelError):
    """The local port is taken by another process."""


class BastionUnreachable(TunnelError):
    """The bastion's name does not resolve, refuses, or times out."""


class AuthenticationFailed(TunnelError):
    """The bastion refused our key."""


class ForwardingFailed(TunnelError):
    """The bastion refused to forward, or could not reach the database endpoint."""


class CredentialError(TunnelmanError):
    """No password could be obtained: keyring missing or locked, nobody to prompt, AWS refused."""


class ClientError(TunnelmanError):
    """A client program or client file could not be used (psql missing, bad file)."""


class AWSError(TunnelmanError):
    """AWS refused or failed: credentials, permissions, region, unknown cluster."""


class AgentError(TunnelmanError):
    """The background agent could not be reached or refused a request."""
