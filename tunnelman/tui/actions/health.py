"""Live figures of up tunnels: the rate history (sampled once a second) and the health check.

Rates: the statuses the tunnel actions already poll once a second carry the current rates (also
for the agent's tunnels, whose `watch` reports state changes only); `_live_tick` samples them
into each `ProfileState`'s five-minute history, which the detail pane draws as a sparkline.

Health: right after a tunnel comes up (the `TunnelChanged` that says so) and then every
`HEALTH_INTERVAL` seconds, a thread worker runs `core.health.check` through its local port
(or the probe a test gave `make_app`); the `HealthChecked` it posts goes into the state model.
One check per profile at a time; a check never asks for a password.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from textual import on, work

from tunnelman.core.logs import get_logger
from tunnelman.tui.actions.base import AppBase
from tunnelman.tui.messages import HealthChecked, TunnelChanged
from tunnelman.tui.state import HEALTH_INTERVAL

if TYPE_CHECKING:
    from tunnelman.core.health import Health
    from tunnelman.core.profiles import Profile

log = get_logger("tui")

HealthProbe = Callable[["Profile", int], "Health"]
"""Checks the database behind a tunnel on 127.0.0.1:PORT (`core.health.check`, or a test's)."""


def _default_probe(profile: Profile, port: int) -> Health:
    from tunnelman.core.health import check  # psycopg loads with the first check

    return check(profile, port)


class HealthActions(AppBase):
    """The once-a-second rate sample and the periodic health check of every up tunnel."""

    def __init__(self, *args: Any, health: HealthProbe | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.health_probe: HealthProbe = health or _default_probe
        self.health_interval = HEALTH_INTERVAL

    def on_mount(self) -> None:
        self.set_interval(self.poll_interval, self._live_tick)

    def _live_tick(self) -> None:
        if self._exit:
            return
        now = self.clock()
        for state in self.state:
            state.sample_rate()
            if state.wants_health(now, self.health_interval):
                self._start_health(state.name)

    @on(TunnelChanged)
    def _check_when_up(self, message: TunnelChanged) -> None:
        """A tunnel that just came up (or back up) is checked at once, not in 30 s."""
        state = self.state.get(message.name)
        if state is not None and state.wants_health(self.clock(), self.health_interval):
            self._start_health(message.name)

    def _start_health(self, name: str) -> None:
        state = self.state[name]
        profile = self.profiles.get(name)
        port = state.tunnel.local_port if state.tunnel is not None else None
        if profile is None or not port:
            return
        since = state.begin_health(self.clock())
        self._refresh(name)
        self._check_health(profile, port, since)

    @work(thread=True, group="health", exit_on_error=False)
    def _check_health(self, profile: Profile, port: int, since: float | None) -> None:
        try:
            health = self.health_probe(profile, port)
        except Exception as exc:  # a bug in the check must not leave it "checking…" forever
            from tunnelman.core.health import Health

            log.error("health check of %s failed", profile.name, exc_info=exc)
            health = Health("error", reason=f"{type(exc).__name__}: {exc} (details in the log)")
        self.post_message(HealthChecked(profile.name, since, health))

    @on(HealthChecked)
    def _health_checked(self, message: HealthChecked) -> None:
        self.state[message.name].health_checked(message.since, message.health)
        self._refresh(message.name)
