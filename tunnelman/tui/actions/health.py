"""Live figures of up tunnels: the rate history (sampled once a second) and the health check.

Rates: the statuses the tunnel actions already poll once a second carry the current rates (also
for the agent's tunnels, whose `watch` reports state changes only); `_live_tick` samples them
into each `ProfileState`'s five-minute history, which the detail pane draws as a sparkline. The
first time a tunnel is seen up, the host's own history of it (the agent samples its tunnels once a
second whether a TUI runs or not) fills the sparkline, so a reopened TUI shows the last minutes.

Health: right after a tunnel comes up (the `TunnelChanged` that says so) and then every
`HEALTH_INTERVAL` seconds, a thread worker runs `core.health.probe` through its local port
(or the probe a test gave `make_app`); the `HealthChecked` it posts goes into the state model.
One check per profile at a time; a check never asks for a password, and the login it finds
(keyring, AWS) is reused for `LOGIN_TTL` seconds (its absence for `NO_LOGIN_TTL`) rather than
looked up every 30 s.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from textual import on, work

from tunnelman.core.logs import get_logger
from tunnelman.core.tunnel import TunnelState
from tunnelman.tui.actions.base import AppBase
from tunnelman.tui.messages import HealthChecked, RatesKnown, TunnelChanged
from tunnelman.tui.state import HEALTH_INTERVAL

if TYPE_CHECKING:
    from tunnelman.core.credentials import Login
    from tunnelman.core.health import Health
    from tunnelman.core.profiles import Profile

log = get_logger("tui")

HealthProbe = Callable[["Profile", int], "Health"]
"""Checks the database behind a tunnel on 127.0.0.1:PORT (`HealthActions._probe`, or a test's)."""


LOGIN_TTL = 600.0
"""Seconds a login found for the checks is reused (IAM tokens last 15 minutes)."""
NO_LOGIN_TTL = 60.0
"""Seconds "no usable password" is believed: a password stored meanwhile is used within a minute,
and a locked keyring asks its owner (the desktop's own unlock dialog) at most once a minute."""


class HealthActions(AppBase):
    """The once-a-second rate sample and the periodic health check of every up tunnel."""

    def __init__(self, *args: Any, health: HealthProbe | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.health_probe: HealthProbe = health or self._probe
        self.health_interval = HEALTH_INTERVAL
        # name -> (the profile it was found for, login, why none, when): one check per profile
        # at a time, so only that check's worker reads or writes its entry.
        self._logins: dict[str, tuple[Profile, Login | None, str | None, float]] = {}
        self._history_asked: set[str] = set()  # tunnels whose host history was asked for

    def _probe(self, profile: Profile, port: int) -> Health:
        """`core.health.probe` with the login found for `profile` in the last `LOGIN_TTL` s."""
        from tunnelman.core import health  # psycopg loads with the first check

        cached = self._logins.get(profile.name)
        if cached is not None:
            ttl = LOGIN_TTL if cached[1] is not None else NO_LOGIN_TTL
            if cached[0] != profile or time.monotonic() - cached[3] > ttl:
                cached = None
        if cached is None:
            try:
                login, why = health.usable_login(profile)
            except Exception as exc:  # keyring backends and boto3 raise assorted errors
                login, why = None, f"{type(exc).__name__}: {exc}"
            cached = (profile, login, why, time.monotonic())
            self._logins[profile.name] = cached
        _, login, why, _ = cached
        found = health.probe(profile, port, login, no_login=why)
        if found.outcome == "login-failed":
            self._logins.pop(profile.name, None)  # a password set since is read at the next check
        return found

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
    def _history_when_first_up(self, message: TunnelChanged) -> None:
        """The first time a tunnel is seen up here: what the host kept of its rates."""
        status = message.status
        if (
            status is None
            or status.state is not TunnelState.UP
            or message.name in self._history_asked
        ):
            return
        self._history_asked.add(message.name)
        self._fetch_history(message.name)

    @work(thread=True, group="history", exit_on_error=False)
    def _fetch_history(self, name: str) -> None:
        try:
            rates = self.host.rate_history().get(name)
        except Exception as exc:  # an agent gone or older: the sparkline starts empty
            log.info("no rate history of %s from the host: %s", name, exc)
            return
        if rates:
            self.post_message(RatesKnown(name, rates))

    @on(RatesKnown)
    def _seed_rates(self, message: RatesKnown) -> None:
        state = self.state.get(message.name)
        if state is None or not state.is_open:
            return
        seen = list(state.rates)
        state.rates.clear()
        # The host's record, then what this TUI sampled meanwhile (one a second each).
        keep = state.rates.maxlen or len(message.rates) + len(seen)
        state.rates.extend((message.rates + seen)[-keep:])

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
