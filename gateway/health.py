"""Liveness and readiness: pure judgements over what the service observed, time passed in.

Alive: the event loop turns (it answers at all, and its housekeeping tick is recent) and the
buffer thread answers (a no-op through it came back recently): a gateway stuck on a hung disk is
not alive even though its HTTP server answers. Ready: connected to the broker and taking
readings (not paused at capacity or with a full disk).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# A loop that has not ticked for this long is stuck (it ticks every couple of seconds).
LOOP_STALL_S = 15.0
# The buffer thread runs group commits with fsync; one taking this long means a hung disk.
BUFFER_STALL_S = 60.0


@dataclass(frozen=True, slots=True)
class Verdict:
    """A health answer with the reasons it is negative."""

    ok: bool
    problems: tuple[str, ...] = ()


@dataclass(slots=True)
class Health:
    """What the service last observed; `service.py` updates it, `/healthz` and `/readyz` read it."""

    started: float
    last_tick: float = field(default=0.0)
    last_buffer_answer: float = field(default=0.0)
    connected: bool = False
    paused: bool = False

    def __post_init__(self) -> None:
        """A fresh gateway counts as having just ticked."""
        self.last_tick = self.last_tick or self.started
        self.last_buffer_answer = self.last_buffer_answer or self.started

    def liveness(self, now: float) -> Verdict:
        """Alive unless a loop or the buffer thread stalled."""
        problems = []
        if now - self.last_tick > LOOP_STALL_S:
            problems.append(f"housekeeping loop stalled for {now - self.last_tick:.0f} s")
        if now - self.last_buffer_answer > BUFFER_STALL_S:
            problems.append(
                f"buffer thread has not answered for {now - self.last_buffer_answer:.0f} s"
            )
        return Verdict(not problems, tuple(problems))

    def readiness(self, now: float) -> Verdict:
        """Ready when alive, connected to the broker and taking readings."""
        problems = list(self.liveness(now).problems)
        if not self.connected:
            problems.append("not connected to the broker")
        if self.paused:
            problems.append("intake paused: the buffer is at capacity or the disk is full")
        return Verdict(not problems, tuple(problems))
