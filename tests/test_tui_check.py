"""The TUI's check screen against the real lab (OpenSSH sshd, PostgreSQL+PostGIS): the doctor's
steps appear one by one as they complete, a failure shows ✗ with its fix, Esc closes the screen.

The screen is hosted in the smallest App that can push it, so these tests do not depend on how
the main app wires it (key `k`, the palette)."""

from __future__ import annotations

import threading
from typing import Any

from textual.app import App
from textual.widgets import Static

from tests.conftest import LabProfile
from tests.tui_support import sync, wait_for
from tunnelman.core.diagnose import STEPS
from tunnelman.tui.screens.check import CheckScreen

SIZE = (140, 45)


class Host(App[None]):
    """Pushes the check screen on start; nothing else."""

    def __init__(self, screen: CheckScreen) -> None:
        super().__init__()
        self.check_screen = screen

    def on_mount(self) -> None:
        self.push_screen(self.check_screen)


def lines(screen: CheckScreen) -> list[str]:
    return [str(w.render()) for w in screen.query(".check-line").results(Static)]


def marks(screen: CheckScreen) -> dict[str, str]:
    """step -> ✓ / ✗ / - as the screen shows it."""
    found: dict[str, str] = {}
    for line in lines(screen):
        for name in STEPS:
            if line[2:].startswith(f"{name}  ") or line[2:].rstrip() == name:
                found[name] = line[0]
    return found


def status(screen: CheckScreen) -> str:
    return str(screen.query_one("#check-status", Static).render())


@sync
async def test_steps_appear_live_then_all_pass(lab_profile: LabProfile) -> None:
    lab_profile.write(password="prompt")
    asked: list[str] = []
    answer = threading.Event()

    def password(text: str) -> str | None:
        # Holds the doctor at "log in to database" until the test has looked at the screen.
        asked.append(text)
        answer.wait(30)
        return lab_profile.password

    screen = CheckScreen("lab", lab_profile.config, password=password)
    app = Host(screen)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: asked, 30, "the password to be asked")
        await wait_for(pilot, lambda: len(marks(screen)) == 6, 10, "six steps shown")
        # Shown while the doctor is still running: the steps up to the forward, nothing after.
        assert marks(screen) == dict.fromkeys(STEPS[:6], "✓")
        assert not screen.finished
        assert status(screen) == "… log in to database"
        assert "Password for postgres@geo" in asked[0]
        answer.set()
        await wait_for(pilot, lambda: screen.finished, 30, "the check to finish")
        assert marks(screen) == dict.fromkeys(STEPS, "✓"), lines(screen)
        shown = "\n".join(lines(screen))
        assert f"matches {lab_profile.known_hosts}" in shown
        assert "PostGIS 3." in shown
        assert "PostgreSQL 1" in shown
        assert lab_profile.password not in shown
        assert status(screen) == "All checks passed."
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is not screen, 5, "Esc to close the screen")


@sync
async def test_a_readable_key_shows_the_cross_and_the_fix(lab_profile: LabProfile) -> None:
    lab_profile.identity_file.chmod(0o640)
    screen = CheckScreen("lab", lab_profile.config)
    app = Host(screen)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: screen.finished, 30, "the check to finish")
        assert marks(screen) == {"config": "✓", "key": "✗", **dict.fromkeys(STEPS[2:], "-")}
        shown = lines(screen)
        failed = next(i for i, line in enumerate(shown) if line.startswith("✗ key"))
        assert "readable by others" in shown[failed]
        # The fix is the line right under the ✗.
        assert f"fix: run `chmod 600 {lab_profile.identity_file}`" in shown[failed + 1]
        assert status(screen) == "A step failed: the fix is under it."
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is not screen, 5, "Esc to close the screen")


@sync
async def test_a_profile_without_endpoint_fails_at_config(lab_profile: LabProfile) -> None:
    lab_profile.write(endpoint=None)
    screen = CheckScreen("lab", lab_profile.config)
    app = Host(screen)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: screen.finished, 30, "the check to finish")
        assert marks(screen) == {"config": "✗", **dict.fromkeys(STEPS[1:], "-")}
        shown = lines(screen)
        assert "profile 'lab' has no endpoint" in shown[0]
        assert 'fix: add endpoint = "HOST[:PORT]"' in shown[1]
        assert not screen.ok


def test_closing_mid_check_stops_the_doctor(lab_profile: LabProfile) -> None:
    """Esc while a step waits: the worker stops after that step, closing the test tunnel."""
    lab_profile.write(password="prompt")
    asked = threading.Event()
    answer = threading.Event()

    def password(_text: str) -> str | None:
        asked.set()
        answer.wait(30)
        return None

    screen = CheckScreen("lab", lab_profile.config, password=password)

    @sync
    async def run() -> None:
        app = Host(screen)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, asked.is_set, 30, "the password to be asked")
            await pilot.press("escape")
            await wait_for(pilot, lambda: app.screen is not screen, 5, "Esc to close the screen")
            answer.set()
            await pilot.pause(0.5)

    run()
    seen = [r.step for r in screen.results]
    # The result of the step that was running when the screen closed is never shown.
    assert seen == list(STEPS[:6])
    assert not screen.finished


@sync
async def test_k_in_the_app_checks_the_highlighted_profile(
    lab_profile: LabProfile, keyring_backend: Any
) -> None:
    """Key `k` on the main screen (also "Check profile" in the palette) opens this screen for the
    highlighted profile, asking through the app's own modals (none needed here: the password is
    in the keyring and the host key is known)."""
    from tunnelman.core import credentials
    from tunnelman.tui.app import make_app
    from tunnelman.tui.hosts import InProcessHost

    credentials.keyring_set("lab", lab_profile.password)
    app = make_app(lab_profile.config, initial_profile="lab", host=InProcessHost())
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("k")
        await wait_for(pilot, lambda: isinstance(app.screen, CheckScreen), 5, "the check screen")
        screen = app.screen
        assert isinstance(screen, CheckScreen)
        assert screen.name_checked == "lab"
        await wait_for(pilot, lambda: screen.finished, 60, "the check to finish")
        assert marks(screen) == dict.fromkeys(STEPS, "✓"), lines(screen)
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is not screen, 5, "Esc to close the screen")
    credentials.keyring_delete("lab")
