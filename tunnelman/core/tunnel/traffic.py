"""What a tunnel carried: bytes each way, the current rates, and the last minutes of them.

Each engine owns one `Traffic` per tunnel (across reconnects). Its relay threads count into a
`Flow` per client connection, each field written by one thread only (no lock on the hot path:
one integer add per packet or splice). When the bytes never pass through Python (the OpenSSH
engine's direct mode, where ssh owns the port), a `source` callable reads the kernel's own
counters instead (`ports.loopback_traffic`, Linux).

Rates come from one sampler thread per process, alive while any tunnel is up: once a second it
records each running tunnel's totals, so `status` shows the rate over the last few seconds
whoever asks and however rarely, and `history()` is the last five minutes, one rate a second
(the TUI's sparkline).
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

from tunnelman.core.logs import get_logger

__all__ = ["Flow", "KernelCounts", "Rates", "Traffic", "human_bytes"]

_log = get_logger("traffic")

SAMPLE_INTERVAL = 1.0
HISTORY = 300  # samples: five minutes at one a second
RATE_WINDOW = 3  # samples the current rate is averaged over

Source = Callable[[], "tuple[int, int] | None"]
"""(bytes sent to the database, bytes received from it) counted outside Python, or None."""


def human_bytes(count: float) -> str:
    """`count` bytes for people: "512 B", "1.4 kB", "50.3 MB", "2.0 GB" (powers of 1024)."""
    size = float(count)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


class Flow:
    """One client connection's bytes. `up`: client → database; `down` and `down_direct`:
    database → client (the relay's buffered path and the transport thread's direct path)."""

    __slots__ = ("down", "down_direct", "up")

    def __init__(self) -> None:
        self.up = 0
        self.down = 0
        self.down_direct = 0


@dataclass(frozen=True)
class Rates:
    """Bytes per second, each way, averaged over the last few seconds."""

    sent: float = 0.0
    received: float = 0.0


class Traffic:
    """One tunnel's byte counts, each way: `sent` to the database, `received` from it."""

    def __init__(self, source: Source | None = None) -> None:
        self._lock = threading.Lock()
        self._live: set[Flow] = set()
        self._closed_sent = 0
        self._closed_received = 0
        self._source = source
        self._running = False
        # Called on the sampler's thread after each of its samples (no engine lock held there).
        self.on_sample: Callable[[], object] | None = None
        self._samples: collections.deque[tuple[float, int, int]] = collections.deque(
            maxlen=HISTORY + 1
        )

    # ------------------------------------------------------------------ counting

    def flow(self) -> Flow:
        """Counters for a new client connection; hand it back with `done`."""
        flow = Flow()
        with self._lock:
            self._live.add(flow)
        return flow

    def done(self, flow: Flow) -> None:
        with self._lock:
            if flow in self._live:
                self._live.discard(flow)
                self._closed_sent += flow.up
                self._closed_received += flow.down + flow.down_direct

    def totals(self) -> tuple[int, int]:
        """(bytes sent to the database, bytes received from it) so far."""
        with self._lock:
            sent = self._closed_sent + sum(f.up for f in self._live)
            received = self._closed_received + sum(f.down + f.down_direct for f in self._live)
        if self._source is not None:
            outside = self._source()
            if outside is not None:
                sent += outside[0]
                received += outside[1]
        return sent, received

    # ------------------------------------------------------------------ rates

    def running(self, on: bool) -> None:
        """Sample once a second while `on` (the tunnel is up); stop sampling when off."""
        self._running = on
        if on:
            _sampler.add(self)
        else:
            _sampler.discard(self)

    def sample(self, now: float | None = None) -> None:
        sent, received = self.totals()
        with self._lock:
            self._samples.append((time.monotonic() if now is None else now, sent, received))

    def rates(self) -> Rates:
        with self._lock:
            last = self._samples[-1][0] if self._samples else None
        if self._running and (last is None or time.monotonic() - last > 1.5 * SAMPLE_INTERVAL):
            # The sampler thread is late (busy relay threads hold the GIL between its turns):
            # sample on this read, so a busy tunnel never shows 0 B/s for want of samples.
            self.sample()
        with self._lock:
            samples = list(self._samples)[-(RATE_WINDOW + 1) :]
        if len(samples) < 2:
            return Rates()
        (t0, s0, r0), (t1, s1, r1) = samples[0], samples[-1]
        if t1 <= t0 or time.monotonic() - t1 > 3 * SAMPLE_INTERVAL:
            return Rates()  # not sampled lately: the tunnel is not up
        return Rates(sent=max(0, s1 - s0) / (t1 - t0), received=max(0, r1 - r0) / (t1 - t0))

    def history(self) -> list[Rates]:
        """One rate per sample interval, oldest first, up to five minutes."""
        with self._lock:
            samples = list(self._samples)
        return [
            Rates(sent=max(0, s1 - s0) / (t1 - t0), received=max(0, r1 - r0) / (t1 - t0))
            for (t0, s0, r0), (t1, s1, r1) in itertools.pairwise(samples)
            if t1 > t0
        ]


class KernelCounts:
    """A `Source` from the kernel's per-socket counters (`ports.loopback_traffic`): the totals of
    the sockets open now plus those of the sockets seen before that have closed since.

    It also tallies the sockets that appeared or went between reads (`changes()`): the OpenSSH
    engine's direct mode, where ssh accepts the clients itself, learns of them only here (at the
    sampler's pace, once a second: a shorter connection may go unseen, as the event log leaves
    out connections shorter than two seconds anyway).
    """

    def __init__(self, read: Callable[[], dict[int, tuple[int, int]] | None]) -> None:
        self._read = read
        self._lock = threading.Lock()
        self._seen: dict[int, tuple[int, int]] = {}
        self._closed = (0, 0)
        self._present: set[int] = set()
        self._arrived = 0
        self._left = 0

    def __call__(self) -> tuple[int, int] | None:
        now = self._read()
        with self._lock:
            if now is None:
                now = {}
            else:  # an unreadable look tells nothing of who came or went
                self._arrived += len(now.keys() - self._present)
                self._left += len(self._present - now.keys())
                self._present = set(now)
            sent, received = self._closed
            for cookie, (up, down) in self._seen.items():
                if cookie not in now:
                    sent, received = sent + up, received + down
            self._closed = (sent, received)
            self._seen = now
            return (
                sent + sum(up for up, _ in now.values()),
                received + sum(down for _, down in now.values()),
            )

    def changes(self) -> tuple[int, int]:
        """(sockets that appeared, sockets that went) since the last call."""
        with self._lock:
            out = (self._arrived, self._left)
            self._arrived = self._left = 0
        return out


class _Sampler:
    """The one thread that samples every running `Traffic` once a second; it ends when none is."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._traffic: weakref.WeakSet[Traffic] = weakref.WeakSet()
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()

    def add(self, traffic: Traffic) -> None:
        traffic.sample()
        with self._lock:
            self._traffic.add(traffic)
            if self._thread is None:
                self._wake.clear()
                self._thread = threading.Thread(
                    target=self._run, name="tunnelman-traffic", daemon=True
                )
                self._thread.start()

    def discard(self, traffic: Traffic) -> None:
        with self._lock:
            self._traffic.discard(traffic)
            if not self._traffic:
                self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait(SAMPLE_INTERVAL)
            with self._lock:
                self._wake.clear()
                running = list(self._traffic)
                if not running:
                    self._thread = None
                    return
            now = time.monotonic()
            for traffic in running:
                traffic.sample(now)
                if traffic.on_sample is not None:
                    try:
                        traffic.on_sample()
                    except Exception:
                        _log.exception("after a traffic sample")


_sampler = _Sampler()
