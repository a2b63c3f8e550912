"""The batch-size controller: AIMD on observed write latency (DESIGN "Dynamic batch sizing").

Additive increase while writes finish under the target latency and batches are full;
multiplicative decrease when a write is slower than the target or the database is overloaded
(timeout, 429, 503, connection error). Decreases happen at most once per target-latency window,
as TCP reduces once per round trip, so concurrent writes that met the same congestion count once.
After an outage (two overloads in a row) the size restarts from the floor and ramps up again,
so a recovering database is not flooded. Pure: time and outcomes are passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

DECREASE_FACTOR = 0.5
# Overloads in a row that mean "outage": the next success starts again from the floor.
OUTAGE_AFTER = 2


@dataclass
class BatchSizer:
    """Holds the current batch size between `floor` and `ceiling`."""

    floor: int
    ceiling: int
    size: int
    target_latency_s: float
    step: int = 0  # additive increase per full, fast write; 0 means `floor`
    _last_decrease: float = float("-inf")
    _overloads: int = 0

    def __post_init__(self) -> None:
        """Clamp the start size and default the step."""
        self.size = min(self.ceiling, max(self.floor, self.size))
        self.step = self.step or self.floor

    def on_success(self, latency_s: float, points: int, now: float) -> int:
        """A write of `points` points took `latency_s`; returns the next batch size."""
        self._overloads = 0
        if latency_s > self.target_latency_s:
            self._decrease(now)
        elif points >= self.size:
            self.size = min(self.ceiling, self.size + self.step)
        return self.size

    def on_overload(self, now: float) -> int:
        """A write timed out, was refused for load (429/503) or could not connect."""
        self._overloads += 1
        if self._overloads >= OUTAGE_AFTER:
            self.size = self.floor
        else:
            self._decrease(now)
        return self.size

    def _decrease(self, now: float) -> None:
        if now - self._last_decrease < self.target_latency_s:
            return
        self._last_decrease = now
        self.size = max(self.floor, int(self.size * DECREASE_FACTOR))
