"""Passwords: the OS keyring (service "tunnelman", user = profile name), prompts, and AWS sources.

Called by the CLI (`password set/delete`, one-shot commands, `conn --write`), the TUI and the
agent. Keyring failures (no backend, locked collection, D-Bus errors) become one `CredentialError`
that names `password = "prompt"` as the way out. Passwords are returned to the caller and never
logged. `resolve_login` also returns the user: a Secrets Manager secret names its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tunnelman.core.errors import CredentialError

if TYPE_CHECKING:
    from tunnelman.core.profiles import PasswordSource, Profile

SERVICE = "tunnelman"
_WAY_OUT = 'or set password = "prompt" in the profile to be asked each time'


def _keyring_error(action: str, exc: BaseException) -> CredentialError:
    import keyring.errors

    reason = str(exc).strip() or type(exc).__name__
    if isinstance(exc, keyring.errors.NoKeyringError):
        return CredentialError(
            f"cannot {action}: no usable OS keyring ({reason})",
            hint=f"start and unlock a Secret Service keyring (e.g. gnome-keyring), {_WAY_OUT}",
        )
    if isinstance(exc, keyring.errors.KeyringLocked):
        return CredentialError(
            f"cannot {action}: the keyring is locked", hint=f"unlock it, {_WAY_OUT}"
        )
    return CredentialError(f"cannot {action}: keyring error: {reason}", hint=_WAY_OUT)


def _backend(action: str = "use the keyring") -> object:
    import keyring
    import keyring.errors

    try:
        backend = keyring.get_keyring()
    except Exception as exc:  # keyring's backend discovery raises assorted errors
        raise _keyring_error(action, exc) from None
    priority = getattr(backend, "priority", 1)
    if isinstance(priority, int | float) and priority <= 0:
        kind = f"{type(backend).__module__}.{type(backend).__name__}"
        reason = (
            "no Secret Service answered on D-Bus and no other backend is installed"
            if kind == "keyring.backends.fail.Keyring"
            else f"backend {kind} cannot store passwords"
        )
        raise _keyring_error(action, keyring.errors.NoKeyringError(reason))
    return backend


def keyring_get(name: str) -> str | None:
    """The stored password for profile `name`, or None when none is stored."""
    import keyring

    _backend(f"read the password of '{name}' from the keyring")
    try:
        return keyring.get_password(SERVICE, name)
    except Exception as exc:  # D-Bus, locked collection, prompt dismissed…
        raise _keyring_error(f"read the password of '{name}' from the keyring", exc) from None


def keyring_set(name: str, password: str) -> None:
    """Store the password for profile `name`."""
    import keyring

    if not password:
        raise CredentialError("refusing to store an empty password", hint='use password = "none"')
    _backend(f"save the password of '{name}' in the keyring")
    try:
        keyring.set_password(SERVICE, name, password)
    except Exception as exc:
        raise _keyring_error(f"save the password of '{name}' in the keyring", exc) from None


def keyring_delete(name: str) -> bool:
    """Remove the stored password; False when there was none."""
    import keyring
    import keyring.errors

    _backend(f"delete the password of '{name}' from the keyring")
    try:
        keyring.delete_password(SERVICE, name)
    except keyring.errors.PasswordDeleteError:
        return False
    except Exception as exc:
        raise _keyring_error(f"delete the password of '{name}' from the keyring", exc) from None
    return True


Prompt = Callable[[str], str | None]
"""Asks a person for a secret given a prompt text; returns None when nobody can answer."""


def resolve_password(
    profile: Profile,
    *,
    prompt: Prompt | None = None,
    offer_save: Callable[[str], bool] | None = None,
) -> str | None:
    """The password for `profile` according to its `password` setting; None for "none".

    keyring: stored value, else ask (when `prompt` is given) and offer to save it.
    prompt: always ask. iam / secretsmanager: from AWS (imports boto3 only here).
    """
    source = profile.password
    if source == "none":
        return None
    if source == "keyring":
        stored = keyring_get(profile.name)
        if stored is not None:
            return stored
        if prompt is None:
            raise CredentialError(
                f"no password for '{profile.name}' in the keyring",
                hint=f"run `tunnelman password set {profile.name}`, {_WAY_OUT}",
            )
        value = prompt(f"Password for {profile.user}@{profile.database} ({profile.name}): ")
        if not value:
            raise CredentialError(f"no password given for '{profile.name}'")
        if offer_save is not None and offer_save(value):
            keyring_set(profile.name, value)
        return value
    if source == "prompt":
        if prompt is None:
            raise CredentialError(
                f"profile '{profile.name}' asks for its password, but there is no terminal",
                hint=f'run it from a terminal or store it: `tunnelman password set {profile.name}` and password = "keyring"',
            )
        value = prompt(f"Password for {profile.user}@{profile.database} ({profile.name}): ")
        if not value:
            raise CredentialError(f"no password given for '{profile.name}'")
        return value
    from tunnelman.core import aws  # boto3 only for AWS sources

    if source == "iam":
        return aws.iam_token(profile)
    return aws.secret_login(profile).password


@dataclass(frozen=True)
class Login:
    """Who logs in to the database and with what (None: no password, libpq's own ways apply)."""

    user: str
    password: str | None = field(repr=False)
    source: PasswordSource = "none"


def resolve_login(
    profile: Profile,
    *,
    prompt: Prompt | None = None,
    offer_save: Callable[[str], bool] | None = None,
) -> Login:
    """The user and password for `profile` (see `resolve_password`).

    secretsmanager: the secret's `username` replaces the profile's user when present.
    iam: a fresh token (15 minutes) signed for the real endpoint; the caller must use TLS
    (`clients.effective_sslmode` raises sslmode to require).
    """
    source = profile.password
    if source == "secretsmanager":
        from tunnelman.core import aws  # boto3 only for AWS sources

        secret = aws.secret_login(profile)
        return Login(user=secret.username or profile.user, password=secret.password, source=source)
    password = resolve_password(profile, prompt=prompt, offer_save=offer_save)
    return Login(user=profile.user, password=password, source=source)
