"""The TUI's `y` (copy the shown setting) where the terminal ignores OSC 52.

Pressed in the real app (Textual's Pilot). The environment says "macOS Terminal.app under X11"
so the fallback path is taken on this Linux machine; the clipboard program is a real executable
named `xclip` on PATH that records its stdin and argv (there is no X server here to run the real
one against). Without any clipboard program, the notification must not say "Copied".
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from tests.tui_support import sync
from tunnelman.core import clients
from tunnelman.core import profiles as prof
from tunnelman.tui.app import make_app
from tunnelman.tui.hosts import InProcessHost

SIZE = (160, 45)


def _profile(tmp_path: Path) -> Path:
    config = tmp_path / "profiles.toml"
    prof.save_profile(
        config,
        "geo",
        {"bastion": "u@bastion.invalid", "endpoint": "db.example.com", "local_port": 15433},
    )
    return config


def _fake_xclip(bindir: Path, record: Path) -> None:
    bindir.mkdir()
    script = bindir / "xclip"
    script.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        f"open({str(record)!r}, 'wb').write(' '.join(sys.argv[1:]).encode() + b'\\n' + "
        "sys.stdin.buffer.read())\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


def _messages(app: object) -> list[str]:
    return [str(n.message) for n in app._notifications]  # type: ignore[attr-defined]


@sync
async def test_copy_falls_back_to_the_clipboard_program(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = tmp_path / "clipboard.txt"
    _fake_xclip(tmp_path / "bin", record)
    monkeypatch.setenv("TERM_PROGRAM", "Apple_Terminal")
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    config = _profile(tmp_path)
    app = make_app(config, initial_profile="geo", host=InProcessHost())
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("c")
        await pilot.pause()
        await pilot.press("y")
        await pilot.pause()
        expected = clients.render("psql", prof.load(config).get("geo"), 15433)
        assert record.read_bytes() == b"-selection clipboard\n" + expected.encode()
        assert app.clipboard == ""  # no OSC 52 was written
        assert any("to the clipboard (via xclip)" in m for m in _messages(app)), _messages(app)


@sync
async def test_copy_without_any_way_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TERM_PROGRAM", "Apple_Terminal")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    config = _profile(tmp_path)
    app = make_app(config, initial_profile="geo", host=InProcessHost())
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("c")
        await pilot.pause()
        await pilot.press("y")
        await pilot.pause()
        messages = _messages(app)
        assert not any("Copied" in m for m in messages), messages
        assert any(m.startswith("Not copied: this terminal ignores OSC 52") for m in messages)
        assert any("tunnelman conn geo --format psql" in m for m in messages)
        assert app.clipboard == ""


@sync
async def test_copy_uses_osc52_where_the_terminal_takes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TERM_PROGRAM", "iTerm.app")
    config = _profile(tmp_path)
    app = make_app(config, initial_profile="geo", host=InProcessHost())
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("c")
        await pilot.pause()
        await pilot.press("y")
        await pilot.pause()
        assert app.clipboard == clients.render("psql", prof.load(config).get("geo"), 15433)
        assert any("(via OSC 52 through the terminal)" in m for m in _messages(app))
