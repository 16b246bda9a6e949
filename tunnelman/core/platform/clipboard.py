"""Clipboard: how the TUI's `y` (copy the shown setting) reaches the user's clipboard.

Called by `tunnelman.tui.app`. Textual's `copy_to_clipboard` writes OSC 52, which works over SSH
and in most terminals, but Windows' console host (conhost: a Windows console without
Windows Terminal's `WT_SESSION`) and macOS Terminal.app (`TERM_PROGRAM=Apple_Terminal`) drop it
silently. There the system clipboard is used instead: `clip.exe` (reads UTF-16LE), `pbcopy`,
`wl-copy` under Wayland, `xclip -selection clipboard` or `xsel --clipboard --input` under X11.
`choose` is pure (environment + which-results in, a method out); `copy_with` runs the program
with the text on stdin. Where neither works, the caller says so rather than "Copied".
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from tunnelman.core.errors import TunnelmanError
from tunnelman.core.platform.programs import system_name

__all__ = ["OSC52", "ClipboardError", "Method", "choose", "copy_with", "osc52_works"]

Which = Callable[[str], str | None]


class ClipboardError(TunnelmanError):
    """The clipboard program failed or could not be run."""


@dataclass(frozen=True)
class Method:
    """One way to copy: OSC 52 (no argv) or a program reading the text on stdin."""

    label: str
    """What the notification names: "OSC 52 through the terminal", "clip.exe", "pbcopy", …"""
    argv: tuple[str, ...] = ()
    encoding: str = "utf-8"

    @property
    def osc52(self) -> bool:
        return not self.argv


OSC52 = Method("OSC 52 through the terminal")


def osc52_works(env: Mapping[str, str] | None = None, system: str | None = None) -> bool:
    """False where the terminal is known to drop OSC 52: conhost, macOS Terminal.app."""
    env = os.environ if env is None else env
    if (system or system_name()) == "win32" and not env.get("WT_SESSION"):
        return False
    return env.get("TERM_PROGRAM") != "Apple_Terminal"


def _programs(env: Mapping[str, str], system: str) -> list[tuple[str, tuple[str, ...], str]]:
    if system == "win32":
        return [("clip.exe", ("clip",), "utf-16-le")]
    if system == "darwin":
        return [("pbcopy", ("pbcopy",), "utf-8")]
    out: list[tuple[str, tuple[str, ...], str]] = []
    if env.get("WAYLAND_DISPLAY"):
        out.append(("wl-copy", ("wl-copy",), "utf-8"))
    if env.get("DISPLAY"):
        out.append(("xclip", ("xclip", "-selection", "clipboard"), "utf-8"))
        out.append(("xsel", ("xsel", "--clipboard", "--input"), "utf-8"))
    return out


def choose(
    env: Mapping[str, str] | None = None,
    system: str | None = None,
    which: Which | None = None,
) -> Method | None:
    """OSC 52 where the terminal takes it, else the first clipboard program found; or None."""
    env = os.environ if env is None else env
    system = system or system_name()
    if osc52_works(env, system):
        return OSC52
    which = which or shutil.which
    for label, argv, encoding in _programs(env, system):
        found = which(argv[0])
        if found:
            return Method(label, (found, *argv[1:]), encoding)
    return None


def copy_with(method: Method, text: str, *, timeout: float = 5.0) -> None:
    """Run the clipboard program with `text` on stdin; ClipboardError when it fails."""
    if method.osc52:
        raise ValueError("OSC 52 is written by the terminal UI, not here")
    try:
        # stdout/stderr to DEVNULL: xclip and wl-copy fork a child that keeps serving the
        # selection, and a captured pipe would wait for that child to exit.
        result = subprocess.run(
            list(method.argv),
            input=text.encode(method.encoding),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise ClipboardError(f"{method.label} failed: {exc}") from None
    if result.returncode != 0:
        raise ClipboardError(f"{method.label} failed (exit status {result.returncode})")
