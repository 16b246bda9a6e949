"""Profile actions: new, edit, delete, the keyring password, discovery, reload.

The profile file is written on the UI thread (small, atomic, comment-preserving); the keyring may
block (a locked collection asks for unlocking), so it is written in a `@work` thread worker.
Screens are imported when first shown, as the modals are everywhere in the app: the first screen
does not pay for them.
"""

from __future__ import annotations

from functools import partial

from textual import work

from tunnelman.core import profiles as prof
from tunnelman.core.errors import TunnelmanError
from tunnelman.tui.actions.base import AppBase
from tunnelman.tui.messages import Notice


class ProfileActions(AppBase):
    """n, e, x, p, d and ctrl+r."""

    def new_profile(self) -> None:
        from tunnelman.tui.screens.profile_form import ProfileFormScreen

        self.push_screen(ProfileFormScreen(self.config_path), self._saved)

    def edit_profile(self, name: str) -> None:
        from tunnelman.tui.screens.profile_form import ProfileFormScreen

        self.push_screen(ProfileFormScreen(self.config_path, name), partial(self._saved, old=name))

    def discover(self) -> None:
        from tunnelman.tui.screens.discover import DiscoverScreen

        self.push_screen(DiscoverScreen(), self._saved)

    def _saved(self, name: str | None, old: str | None = None) -> None:
        if name is None:
            return
        if old is not None and old != name and (previous := self.state.get(old)) is not None:
            previous.cluster = None
        self.state[name].forget_cluster()
        self._reload_and_show(name)
        self.notify(f"Saved profile '{name}' in {self.config_path}.")

    def delete_profile(self, name: str) -> None:
        from tunnelman.tui.screens.modals import ConfirmScreen

        if name in self.state.open_tunnels():
            self.notify(f"Close the tunnel of '{name}' first (enter).", severity="warning")
            return

        def answered(yes: bool | None) -> None:
            if not yes:
                return
            try:
                prof.delete_profile(self.config_path, name)
            except TunnelmanError as exc:
                self.notify(str(exc), severity="error")
                return
            self.state[name].last_error = None
            self._reload_and_show()
            self.notify(f"Deleted profile '{name}'.")

        self.push_screen(
            ConfirmScreen(
                "Delete profile",
                f"Delete profile '{name}' from {self.config_path}? The rest of the file and its "
                "comments stay as they are; a password in the keyring stays too.",
                yes="Delete",
            ),
            answered,
        )

    def set_password(self, name: str) -> None:
        """p: ask twice (masked), store in the keyring in a worker."""
        from tunnelman.tui.screens.modals import SecretScreen

        profile = self.profiles.get(name)
        if profile is None:
            return
        note = (
            ""
            if profile.password == "keyring"
            else f' (note: its password setting is "{profile.password}")'
        )

        def answered(value: str | None) -> None:
            if value:
                self._store_password(name, value, note)

        self.push_screen(
            SecretScreen(
                "Database password",
                f"Password of {profile.user}@{profile.database} for '{name}', kept in the OS keyring:",
                confirm=True,
            ),
            answered,
        )

    @work(thread=True, group="password", exit_on_error=False, description="store a password")
    def _store_password(self, name: str, value: str, note: str) -> None:
        from tunnelman.core import credentials

        with self.reported("password", name):
            credentials.keyring_set(name, value)
            self.post_message(Notice(f"Stored the password of '{name}' in the keyring{note}."))

    def action_reload(self) -> None:
        self.load_profiles()
        self._refresh()
        if self.load_error:
            # markup=False: the message quotes the file ("[defaults]", a stray "[/]" in a value).
            self.notify(self.load_error, severity="error", markup=False)
        else:
            self.notify(f"Reloaded {len(self.profiles)} profiles.")
