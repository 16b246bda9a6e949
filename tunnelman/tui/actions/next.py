"""Next steps from the list: `o` hands the terminal to `tunnelman psql`, `h` shows a failure's
last error and hint, and the theme's colours reach our own Rich text.

`o` suspends the app (Textual's `App.suspend`) and runs the same executable's `psql NAME` with
this app's profile file, so it reuses the tunnel the agent holds (or opens one for the session),
prompts for a password on the terminal as the CLI does, and returns to the TUI when psql exits.
Where the terminal cannot be handed over (Textual raises SuspendNotSupported: a test's Pilot,
Textual Web, Windows without a console) the person is told what to run instead.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys

from textual.app import SuspendNotSupported
from textual.theme import Theme

from tunnelman.core.errors import TunnelmanError
from tunnelman.core.tunnel import TunnelState
from tunnelman.tui import format as fmt
from tunnelman.tui.actions.base import AppBase


class NextActions(AppBase):
    """`o` (psql in the terminal), `h` (the last error), and following the theme."""

    def psql_argv(self, name: str) -> list[str]:
        """The command `o` runs: this very Python and package, this app's profile file."""
        return [sys.executable, "-m", "tunnelman", "--config", str(self.config_path), "psql", name]

    def run_psql(self, name: str) -> None:
        """o: psql for `name` in the terminal, the TUI suspended until it exits."""
        from tunnelman.core.oneshot import find_program

        if name not in self.profiles:
            return
        try:
            find_program("psql")  # say it here: after a suspend the message would flash by
        except TunnelmanError as exc:
            self.notify(str(exc), title="psql is not installed", severity="error", timeout=12)
            return
        argv = self.psql_argv(name)
        try:
            with self.suspend():
                code = self._run_in_terminal(argv)
        except SuspendNotSupported:
            self.notify(
                "This terminal cannot be handed over to psql from here; run "
                f"`tunnelman psql {name}` in a shell instead.",
                title="psql",
                severity="warning",
                timeout=12,
            )
            return
        if code:
            self.notify(
                f"`tunnelman psql {name}` ended with exit status {code}.",
                title="psql",
                severity="warning",
            )

    @staticmethod
    def _run_in_terminal(argv: list[str]) -> int:
        """Run `argv` on the terminal; after a failure, wait for enter so its message is read."""
        try:
            code = subprocess.call(argv)
        except OSError as exc:
            sys.stderr.write(f"tunnelman: cannot run {argv[0]}: {exc}\n")
            code = 1
        if code:
            sys.stdout.write(
                f"\n[`tunnelman psql` ended with exit status {code}; press enter to return to tunnelman]\n"
            )
            sys.stdout.flush()
            with contextlib.suppress(OSError, ValueError):  # no usable stdin: return at once
                sys.stdin.readline()
        return code

    def show_last_error(self, name: str) -> None:
        """h: the highlighted profile's last error and its hint, in a notification."""
        state = self.state.get(name)
        tunnel = state.tunnel if state is not None else None
        error = (tunnel.error if tunnel is not None else None) or (
            state.last_error if state is not None else None
        )
        if not error:
            self.notify(f"'{name}' has no error to show.", title="Last error")
            return
        failed = self.state_of(name)[0] == TunnelState.FAILED
        self.notify(
            f"{error}\n\n"
            + ("enter tries again, " if failed else "")
            + "k runs the checks step by step.",
            title=f"Tunnel '{name}' " + ("failed" if failed else "— last error"),
            severity="error" if failed else "warning",
            timeout=20,
        )

    # ------------------------------------------------------------------ theme

    def get_css_variables(self) -> dict[str, str]:
        """Textual's theme variables; also copied into tui/format.py (Rich text's colours), so
        they are the theme's from the first drawing on, and after every switch."""
        variables = super().get_css_variables()
        fmt.use_theme(variables)
        return variables

    def follow_theme(self) -> None:
        """Redraw our Rich text after every theme switch (the CSS redraws itself)."""
        fmt.use_theme(self.theme_variables)
        self.theme_changed_signal.subscribe(self, self._theme_changed)

    def _theme_changed(self, theme: Theme) -> None:
        fmt.use_theme(self.theme_variables)
        self._refresh()
