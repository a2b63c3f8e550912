"""Event-loop lag: how late a sleeper woke, and the largest lateness of the last minute.

Pure; times are parameters. A sampler task (gateway/service/loopwatch.py) says when it is due to
wake (`sleeping_until`) and when it woke (`woke`); the difference is the lag, the time the loop
was busy with something else or not running at all (a seal holding it, a hung disk, SIGSTOP).
A stall that spans a wake-up is seen whole, less at most one sleep interval; the sampler records
it when the loop comes back, so `/healthz` and the metrics report it once they can answer again.
While the sampler is overdue, the lateness so far counts as a lag already (`recent_max`), so a
check that runs before the sampler does (an HTTP request read in the same turn of the loop)
sees the stall too.

The samples of the window are kept for the max and the quantile: at most window / interval of
them (240 at the default 0.25 s), a few kB.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

# "Recently" for /healthz and the max gauge: long enough for a scrape every 15 s or a health
# check every 30 s to see a stall once, short enough to clear soon after the loop is well.
WINDOW_S = 60.0


@dataclass(frozen=True, slots=True)
class Sample:
    """One wake-up: when the sampler woke (`at`, monotonic seconds) and how late (`lag_s`)."""

    at: float
    lag_s: float


class LoopLag:
    """The lag samples of the last `window_s` seconds, and the wake-up awaited now."""

    def __init__(self, window_s: float = WINDOW_S) -> None:
        """Keep `window_s` seconds of samples."""
        self.window_s = window_s
        self._samples: deque[Sample] = deque()
        self._due: float | None = None

    def sleeping_until(self, due: float) -> None:
        """The sampler sleeps and should wake at `due`."""
        self._due = due

    def woke(self, now: float) -> float:
        """The sampler woke at `now`: record and return its lag (0 when early or on time)."""
        lag = 0.0 if self._due is None else max(0.0, now - self._due)
        self._due = None
        self._samples.append(Sample(now, lag))
        self._expire(now)
        return lag

    def worst(self, now: float) -> Sample | None:
        """The largest lag of the window (an overdue wake-up counted as lag so far), or None."""
        self._expire(now)
        best = max(self._samples, key=lambda s: s.lag_s, default=None)
        if (
            self._due is not None
            and now > self._due
            and (best is None or now - self._due > best.lag_s)
        ):
            return Sample(now, now - self._due)
        return best

    def recent_max(self, now: float) -> float:
        """The largest lag of the window, the lateness of an overdue wake-up included."""
        worst = self.worst(now)
        return worst.lag_s if worst is not None else 0.0

    def quantile(self, q: float, now: float) -> float:
        """The `q` quantile (0..1) of the window's lags, nearest rank; 0 without samples."""
        self._expire(now)
        if not self._samples:
            return 0.0
        lags = sorted(s.lag_s for s in self._samples)
        # Rounded first: 0.99 * 100 is 99.00000000000001 in floats, and its ceiling 100.
        rank = min(len(lags), max(1, math.ceil(round(q * len(lags), 9))))
        return lags[rank - 1]

    def _expire(self, now: float) -> None:
        while self._samples and now - self._samples[0].at > self.window_s:
            self._samples.popleft()
