"""The TUI's live figures without a Pilot: the rate history and health rules of `ProfileState`
(tui/state.py) and their text (tui/format.py: sparkline, the list's rate cell, the health row).

End to end, through real tunnels and databases: test_tui_traffic.py.
"""

from __future__ import annotations

import dataclasses

from tests.tui_support import FAKE_CLUSTER
from tunnelman.core.health import Health
from tunnelman.core.tunnel import TunnelState, TunnelStatus
from tunnelman.tui.format import colour, health_line, rate_cell, sparkline, tunnel_text
from tunnelman.tui.state import RATE_HISTORY, ProfileState


def up(
    sent: float | None = 0.0, received: float | None = 0.0, since: float = 1000.0
) -> TunnelStatus:
    return TunnelStatus(
        name="geo",
        state=TunnelState.UP,
        local_port=5433,
        since=since,
        reconnects=0,
        error=None,
        connections=1,
        bytes_sent=None if sent is None else 10,
        bytes_received=None if received is None else 20,
        rate_sent=sent,
        rate_received=received,
    )


HEALTHY = Health("ok", reach_ms=2, round_trip_ms=1.2, server_version="15.5", postgis="3.3.2")


# ----------------------------------------------------------------------------- rate history


def test_history_samples_sent_plus_received_and_keeps_five_minutes() -> None:
    state = ProfileState("geo", tunnel=up(100.0, 900.0))
    for _ in range(RATE_HISTORY + 20):
        state.sample_rate()
    assert len(state.rates) == RATE_HISTORY == 300
    assert set(state.rates) == {1000.0}
    assert state.rate() == 1000.0


def test_history_goes_when_the_tunnel_closes() -> None:
    state = ProfileState("geo", tunnel=up(0.0, 5.0))
    state.sample_rate()
    state.closing()
    state.sample_rate()
    assert list(state.rates) == []
    assert state.rate() is None


def test_not_counted_is_no_rate_not_zero() -> None:
    state = ProfileState("geo", tunnel=up(None, None))
    assert state.rate() is None
    state.sample_rate()
    assert list(state.rates) == [0.0]


def test_sparkline_scales_to_the_peak_newest_on_the_right() -> None:
    values = [0.0] * 6 + [1e6] * 6 + [5e5] * 6
    assert sparkline(values, per=6) == "▁█▅"
    assert sparkline([], per=6) == ""
    # an idle tunnel's few bytes stay low bars: the scale is at least 16 kB/s
    assert sparkline([100.0, 200.0], per=1) == "▁▁"
    # at most `columns` bars: the oldest values drop out; a partial oldest bucket still counts
    assert sparkline([9e6] + [1e6] * 12, columns=2, per=6) == "██"
    assert len(sparkline([1.0] * 300)) == 50
    assert sparkline([1e6] * 7, per=6) == "██"


def test_rate_cell_is_blank_when_idle() -> None:
    assert rate_cell(None) == ""
    assert rate_cell(300.0) == ""
    assert rate_cell(2.1 * 1024 * 1024) == "2.1 MB/s"


# ----------------------------------------------------------------------------- health


def test_health_is_checked_once_up_then_every_interval() -> None:
    state = ProfileState("geo", tunnel=up())
    assert state.wants_health(now=0.0)
    since = state.begin_health(now=0.0)
    assert since == 1000.0
    assert not state.wants_health(now=100.0)  # one check at a time
    state.health_checked(since, HEALTHY)
    assert state.health_shown() is HEALTHY
    assert not state.wants_health(now=29.0)
    assert state.wants_health(now=30.0)
    assert state.wants_health(now=5.0, interval=5.0)


def test_health_of_an_earlier_connection_is_not_shown_and_a_reconnect_is_checked() -> None:
    state = ProfileState("geo", tunnel=up(since=1000.0))
    state.health_checked(state.begin_health(0.0), HEALTHY)
    state.changed(up(since=2000.0))  # back up after a reconnect
    assert state.health_shown() is None
    assert state.wants_health(now=1.0)


def test_no_health_check_when_not_up_or_the_cluster_is_paused() -> None:
    state = ProfileState("geo", tunnel=dataclasses.replace(up(), state=TunnelState.RECONNECTING))
    assert not state.wants_health(0.0)
    assert state.health_shown() is None
    state = ProfileState("geo", tunnel=up())
    v1 = dataclasses.replace(FAKE_CLUSTER, serverless="v1", capacity=0, auto_pause=True)
    state.cluster_loaded(v1)
    assert not state.wants_health(0.0)  # a check would resume the paused cluster


def test_an_idle_tunnel_to_an_auto_pausing_cluster_is_checked_once() -> None:
    state = ProfileState("geo", tunnel=dataclasses.replace(up(), connections=0))
    state.cluster_loaded(dataclasses.replace(FAKE_CLUSTER, acu_min=0))  # v2, may auto-pause
    assert state.wants_health(0.0)
    state.health_checked(state.begin_health(0.0), HEALTHY)
    assert not state.wants_health(600.0)  # checks would keep it awake
    state.changed(up())  # a client uses it (1 connection): it is awake anyway
    assert state.wants_health(600.0)


def test_health_row_and_activity_in_the_detail_text() -> None:
    text = tunnel_text(
        up(1024.0, 2 * 1024 * 1024),
        connecting=False,
        last_error=None,
        now=1060.0,
        history=[0.0] * 12 + [3 * 1024 * 1024] * 6,
        health=HEALTHY,
    ).plain
    lines = {line[:12].strip(): line[12:] for line in text.splitlines()}
    assert lines["health"] == "database ✓ 1 ms · PostgreSQL 15.5 · PostGIS 3.3.2"
    assert lines["rate"] == "↑ 1.0 kB/s  ↓ 2.0 MB/s  (peak 3.0 MB/s)"
    assert lines["activity"] == "▁▁█  5 min"
    checking = tunnel_text(up(), connecting=False, last_error=None, now=0, health_checking=True)
    assert "health      checking…" in checking.plain
    assert "health" not in tunnel_text(up(), connecting=False, last_error=None, now=0).plain
    # The theme's error colour (a TUI test run before may have set a theme: `format.COLOURS`).
    error = health_line(Health("unreachable", reason="x"), checking=False).style
    assert error == f"bold {colour('error')}"
    assert colour("error")
