"""The TUI's state model (tunnelman/tui/state.py) without a Pilot: what the list shows while a
tunnel is opened, cancelled, fails, is closed or is reported by the agent, and the cluster's state.

The same rules run end to end against the lab in test_tui_lab.py; here each is one transition.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

from tests.tui_support import FAKE_CLUSTER
from tunnelman.core.errors import Cancelled
from tunnelman.core.tunnel import TunnelState, TunnelStatus
from tunnelman.tui.state import CONNECTING, ProfileState, UIState


def status(
    name: str, state: TunnelState, *, port: int | None = 5433, error: str | None = None
) -> TunnelStatus:
    return TunnelStatus(
        name=name,
        state=state,
        local_port=port,
        since=1000.0,
        reconnects=0,
        error=error,
        connections=0,
    )


def busy(state: ProfileState) -> bool:
    return state.busy  # read through a call: mypy would take an asserted property as fixed


def test_a_new_profile_shows_closed() -> None:
    ui = UIState()
    assert ui.shown("prod") == (TunnelState.STOPPED, None)
    assert ui.shown("prod") == ("stopped", None)  # the word the snapshots and tests compare
    assert ui.get("prod") is None  # reading does not make entries (worker threads read)
    assert ui.open_tunnels() == []


def test_opening_then_up() -> None:
    ui = UIState()
    state = ui["prod"]
    cancel = state.begin_connect()
    assert ui.shown("prod") == (CONNECTING, None)
    assert busy(state)
    assert ui.open_tunnels() == ["prod"]
    # the tunnel's own reports while the worker runs are not news: the worker has the last word
    assert not state.changed(status("prod", TunnelState.UP))
    state.connect_finished(cancel)
    assert state.changed(status("prod", TunnelState.UP))
    assert ui.shown("prod") == (TunnelState.UP, 5433)
    assert not busy(state)
    assert ui.open_tunnels() == ["prod"]


def test_a_finished_old_attempt_leaves_the_new_one_connecting() -> None:
    state = ProfileState("prod")
    first = state.begin_connect()
    state.cancel_connect()
    second = state.begin_connect()
    state.connect_finished(first)
    assert state.connecting is second
    assert state.shown() == (CONNECTING, None)


def test_cancel_sets_the_event_and_is_not_a_failure() -> None:
    state = ProfileState("hang")
    cancel = state.begin_connect()
    assert state.cancel_connect()
    assert cancel.is_set()
    assert not state.cancel_connect()  # nothing left to cancel
    # the cancelled attempt's final status (from the agent's watch) is no failure to show
    assert state.changed(status("hang", TunnelState.FAILED, error=str(Cancelled())))
    assert state.tunnel is None
    assert state.last_error is None
    assert state.shown() == (TunnelState.STOPPED, None)


def test_a_failure_is_shown_until_the_next_attempt() -> None:
    state = ProfileState("reports")
    state.begin_connect()
    state.connect_failed("bastion 10.20.0.5:2222 did not answer within 15 s")
    assert state.shown() == (TunnelState.FAILED, None)
    assert state.connecting is None
    state.begin_connect()
    assert state.last_error is None


def test_a_failed_status_from_the_agent_keeps_its_error() -> None:
    state = ProfileState("lab")
    assert state.changed(status("lab", TunnelState.FAILED, port=None, error="host key changed"))
    assert state.last_error == "host key changed"
    assert state.shown() == (TunnelState.FAILED, None)


def test_closing_then_gone() -> None:
    ui = UIState()
    state = ui["prod"]
    state.changed(status("prod", TunnelState.UP))
    state.closing()
    assert ui.shown("prod") == (TunnelState.STOPPED, None)
    assert ui.open_tunnels() == []
    assert state.changed(None)  # the host no longer holds it
    assert state.tunnel is None


def test_news_that_is_not_news() -> None:
    state = ProfileState("prod")
    # a "stopped" for a tunnel we never showed, and a "starting" of an attempt cancelled meanwhile
    assert not state.changed(status("prod", TunnelState.STOPPED))
    assert not state.changed(status("prod", TunnelState.STARTING))
    assert state.tunnel is None
    state.changed(status("prod", TunnelState.RECONNECTING))
    assert state.shown() == (TunnelState.RECONNECTING, 5433)


def test_cluster_running_follows_its_status() -> None:
    state = ProfileState("prod")
    assert state.wants_cluster()
    state.begin_cluster()
    assert busy(state)
    assert not state.wants_cluster()
    state.cluster_loaded(FAKE_CLUSTER)
    assert state.cluster_running() is True
    for word, running in (("stopping", False), ("stopped", False), ("rebooting", None)):
        state.cluster_loaded(dataclasses.replace(FAKE_CLUSTER, status=word))
        assert state.cluster_running() is running
    state.begin_cluster()
    state.cluster_failed("AWS refused: AccessDenied")
    assert (state.cluster_loading, state.cluster_error) == (False, "AWS refused: AccessDenied")
    state.forget_cluster()
    assert state.wants_cluster()


def test_cancel_all_sets_every_attempt() -> None:
    ui = UIState()
    events = [ui[name].begin_connect() for name in ("a", "b")]
    ui["c"].changed(status("c", TunnelState.UP))
    ui.cancel_all()
    assert all(e.is_set() for e in events)
    assert ui.open_tunnels() == ["c", "a", "b"]  # open first, then those being opened


def test_the_state_model_needs_no_textual() -> None:
    code = "import sys, tunnelman.tui.state; print('textual' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
