"""Admission near capacity: when to stop taking readings and when to start again.

Pure. The `reject` policy stops intake when the buffer's fill reaches the high watermark and
resumes it only below the low watermark; the gap between them is the hysteresis that keeps the
gateway from flapping at the edge.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Transition(Enum):
    """A change of admission state worth one log line."""

    START_REJECTING = "start"
    STOP_REJECTING = "stop"


@dataclass
class Watermarks:
    """Hysteresis between `high` and `low` fractions of `capacity_bytes`."""

    capacity_bytes: int
    high: float
    low: float
    rejecting: bool = False

    def update(self, used_bytes: int) -> Transition | None:
        """Feed the current fill; returns a transition when the state changes."""
        if not self.rejecting and used_bytes >= self.high * self.capacity_bytes:
            self.rejecting = True
            return Transition.START_REJECTING
        if self.rejecting and used_bytes < self.low * self.capacity_bytes:
            self.rejecting = False
            return Transition.STOP_REJECTING
        return None
