"""Connection settings: the texts the detail pane's tabs show, `y` copy and `w` write.

The port is the open tunnel's, else the profile's `local_port`; writing a client's file (IO) runs
in a `@work` thread worker.
"""

from __future__ import annotations

from textual import work

from tunnelman.core import profiles as prof
from tunnelman.core.errors import TunnelmanError
from tunnelman.tui import services
from tunnelman.tui.actions.base import AppBase
from tunnelman.tui.messages import Notice
from tunnelman.tui.state import is_open


class SettingsActions(AppBase):
    """c, y and w."""

    def conn_port(self, name: str) -> int | None:
        tunnel = self.state.tunnel_of(name)
        if tunnel is not None and is_open(tunnel) and tunnel.local_port:
            return tunnel.local_port
        profile = self.profiles.get(name)
        return profile.local_port if profile else None

    def conn_text(self, name: str, fmt: str) -> str:
        profile = self.profiles[name]
        port = self.conn_port(name)
        if port is None:
            return (
                "This profile has no fixed local_port: open the tunnel (enter) and the settings "
                "will show the port it got, or set local_port (e)."
            )
        text = services.render_conn(fmt, profile, port)
        notes = services.conn_notes(fmt, profile, port)
        return text.rstrip("\n") + "".join(f"\n\nnote: {n}" for n in notes)

    def conn_texts(self, name: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for fmt, _ in services.CONN_TABS:
            try:
                out[fmt] = self.conn_text(name, fmt)
            except TunnelmanError as exc:
                out[fmt] = str(exc)
        return out

    def copy_setting(self, name: str, fmt: str) -> None:
        """y: the shown setting to the clipboard: OSC 52 (works over SSH) where the terminal
        takes it, else the system's clipboard program (`core.platform.clipboard`)."""
        from tunnelman.core.platform import clipboard

        try:
            text = services.render_conn(fmt, self.profiles[name], self._need_port(name))
        except TunnelmanError as exc:
            self.notify(str(exc), severity="error")
            return
        title = dict(services.CONN_TABS).get(fmt, fmt)
        method = clipboard.choose()
        if method is None:
            self.notify(
                "Not copied: this terminal ignores OSC 52 and no clipboard program (clip.exe, "
                "pbcopy, wl-copy, xclip, xsel) was found. Select the setting with the mouse "
                f"(Shift+drag in most terminals), or run `tunnelman conn {name} --format {fmt}`.",
                severity="warning",
                timeout=12,
            )
            return
        if method.osc52:
            self.copy_to_clipboard(text)
        else:
            try:
                clipboard.copy_with(method, text)
            except clipboard.ClipboardError as exc:
                self.notify(
                    f"Not copied: {exc}. Select the setting with the mouse, or run "
                    f"`tunnelman conn {name} --format {fmt}`.",
                    severity="error",
                )
                return
        self.notify(
            f"Copied the {title} setting of '{name}' to the clipboard (via {method.label})."
        )

    def _need_port(self, name: str) -> int:
        port = self.conn_port(name)
        if port is None:
            raise TunnelmanError(
                f"'{name}' has no local port yet", hint="open its tunnel first, or set local_port"
            )
        return port

    def write_setting(self, name: str, fmt: str) -> None:
        """w: merge the shown setting into the client's own file (in a worker: file IO)."""
        try:
            port = self._need_port(name)
        except TunnelmanError as exc:
            self.notify(str(exc), severity="error")
            return
        profile = self.profiles[name]
        self._write(profile, fmt, port)

    @work(thread=True, group="write", exit_on_error=False)
    def _write(self, profile: prof.Profile, fmt: str, port: int) -> None:
        with self.reported("write", profile.name):
            line = services.write_conn(fmt, profile, port, self.config_path.parent)
            self.post_message(Notice(f"Wrote '{profile.name}' to {line}"))
