"""The one error base class of tunnelman, and its families.

Every error a person can cause or fix carries a message they can act on: what is wrong, and the way
out. The CLI prints `str(error)` on one line and exits with `exit_code`; the TUI shows it as a
notification or a modal. Anything that is not a `TunnelmanError` is a bug and may show a traceback.

The exit codes are a documented contract for scripts (EXIT_CODES, shown by `tunnelman --help` and
in the README): a family's code is a class attribute, so subclasses (host-key kinds, engine
specific errors) inherit it, and the agent sends it along with the class name.

Every subclass, wherever it is defined, is registered by its name (`registered`, `lineage`), so
an error raised in the agent is rebuilt as the same class in the client (`agent.protocol`), or as
its nearest ancestor the client knows. A class with fields of its own (a port, a host key) says
how they cross: `wire_fields()` and `from_wire()`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self

# name -> class: every TunnelmanError subclass, filled as the modules that define them are imported.
_REGISTRY: dict[str, type[TunnelmanError]] = {}


class TunnelmanError(Exception):
    """An error with a message a person can act on."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message} ({hint})")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        known = _REGISTRY.get(cls.__name__)
        # The same class defined again (a module reloaded, a class in a function run twice) takes
        # the name over; two different classes of one name could not be told apart on the wire.
        if known is not None and (known.__module__, known.__qualname__) != (
            cls.__module__,
            cls.__qualname__,
        ):
            raise TypeError(
                f"two TunnelmanError classes named {cls.__name__}: "
                f"{known.__module__}.{known.__qualname__} and {cls.__module__}.{cls.__qualname__}"
            )
        _REGISTRY[cls.__name__] = cls

    def wire_fields(self) -> dict[str, Any]:
        """This class's own fields as JSON values, sent beside message, hint and exit code."""
        return {}

    @classmethod
    def from_wire(cls, message: str, *, hint: str | None, fields: Mapping[str, Any]) -> Self:
        """The error again from its message, hint and `wire_fields()` (in `fields`, with other
        keys). TypeError / ValueError / KeyError when a field is missing or of the wrong type:
        the caller then tries the nearest ancestor."""
        return cls(message, hint=hint)


_REGISTRY[TunnelmanError.__name__] = TunnelmanError


def registered(name: str) -> type[TunnelmanError] | None:
    """The class registered under `name`, if the module defining it has been imported."""
    return _REGISTRY.get(name)


def lineage(cls: type[TunnelmanError]) -> list[type[TunnelmanError]]:
    """`cls` and its registered ancestors, nearest first, ending with TunnelmanError."""
    return [
        c
        for c in cls.__mro__
        if isinstance(c, type) and issubclass(c, TunnelmanError) and _REGISTRY.get(c.__name__) is c
    ]


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

    def wire_fields(self) -> dict[str, Any]:
        return {
            key: value
            for key, value in (("port", self.port), ("pid", self.pid))
            if value is not None
        }

    @classmethod
    def from_wire(cls, message: str, *, hint: str | None, fields: Mapping[str, Any]) -> Self:
        return cls(
            message,
            hint=hint,
            port=_small_int(fields.get("port")),
            pid=_small_int(fields.get("pid")),
        )


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


class OpenSSHMissing(ConfigError):
    """The profile asks for engine = "openssh" and no ssh client is installed.

    Raised by `core.tunnel.openssh` (which re-exports it); defined here so a client rebuilding it
    from the agent's reply needs no engine module.
    """


def _small_int(value: object) -> int | None:
    """A non-negative int sent by the agent (a port, a pid), else None."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31:
        return value
    return None


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
