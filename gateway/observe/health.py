"""Liveness and readiness: pure judgements over what the service observed, time passed in.

Alive: the event loop turns (it answers at all, and its housekeeping tick is recent). The buffer
works in the loop's thread, so a gateway stuck on a hung disk stops ticking too. Ready: connected
to the broker and taking readings (not paused at capacity or with a full disk).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# A loop that has not ticked for this long is stuck (it ticks every couple of seconds; a group
# commit's fsync on a slow disk takes tens of milliseconds, not seconds).
LOOP_STALL_S = 15.0


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
    connected: bool = False
    paused: bool = False

    def __post_init__(self) -> None:
        """A fresh gateway counts as having just ticked."""
        self.last_tick = self.last_tick or self.started

    def liveness(self, now: float) -> Verdict:
        """Alive unless the event loop stalled."""
        if now - self.last_tick > LOOP_STALL_S:
            return Verdict(
                ok=False, problems=(f"event loop stalled for {now - self.last_tick:.0f} s",)
            )
        return Verdict(ok=True)

    def readiness(self, now: float) -> Verdict:
        """Ready when alive, connected to the broker and taking readings."""
        problems = list(self.liveness(now).problems)
        if not self.connected:
            problems.append("not connected to the broker")
        if self.paused:
            problems.append("intake paused: the buffer is at capacity or the disk is full")
        return Verdict(not problems, tuple(problems))
