"""Liveness and readiness: pure judgements over what the service observed, time passed in.

Alive: the event loop turns (it answers at all, and its housekeeping tick is recent) and it has
not stalled for more than `[metrics] max_loop_lag_s` within the last minute (gateway/observe/
looplag.py). The buffer works in the loop's thread, so a gateway stuck on a hung disk stops
ticking too. A stall that is over makes the gateway unhealthy for a minute but not hung: the
systemd watchdog and a parent of workers act on a loop that does not turn, not on one that did
not for a while. Ready: connected to the broker and taking readings (not paused at capacity or
with a full disk).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.observe.looplag import LoopLag

# A loop that has not ticked for this long is stuck (it ticks every couple of seconds; a group
# commit's fsync on a slow disk takes tens of milliseconds, not seconds).
LOOP_STALL_S = 15.0
# `[metrics] max_loop_lag_s`: PUBACKs held this long are a fault, well before the watchdog's 30 s.
MAX_LOOP_LAG_S = 5.0


@dataclass(frozen=True, slots=True)
class Verdict:
    """A health answer with the reasons it is negative.

    `hung`: the loop does not turn now (as opposed to a stall that is over).
    """

    ok: bool
    problems: tuple[str, ...] = ()
    hung: bool = False


@dataclass(slots=True)
class Health:
    """What the service last observed; `service.py` updates it, `/healthz` and `/readyz` read it."""

    started: float
    last_tick: float = field(default=0.0)
    connected: bool = False
    paused: bool = False
    max_loop_lag_s: float = MAX_LOOP_LAG_S
    loop_lag: LoopLag = field(default_factory=LoopLag)

    def __post_init__(self) -> None:
        """A fresh gateway counts as having just ticked."""
        self.last_tick = self.last_tick or self.started

    def liveness(self, now: float) -> Verdict:
        """Alive unless the event loop stalls, or stalled too long within the window."""
        problems: list[str] = []
        hung = now - self.last_tick > LOOP_STALL_S
        if hung:
            problems.append(f"event loop stalled for {now - self.last_tick:.0f} s")
        worst = self.loop_lag.worst(now)
        if worst is not None and worst.lag_s > self.max_loop_lag_s:
            ongoing = worst.at >= now
            hung = hung or ongoing
            when = "so far" if ongoing else f"{now - worst.at:.0f} s ago"
            problems.append(
                f"event loop lag {worst.lag_s:.1f} s {when} (more than max_loop_lag_s "
                f"{self.max_loop_lag_s:g} s within {self.loop_lag.window_s:.0f} s)"
            )
        return Verdict(not problems, tuple(problems), hung=hung)

    def readiness(self, now: float) -> Verdict:
        """Ready when alive, connected to the broker and taking readings."""
        alive = self.liveness(now)
        problems = list(alive.problems)
        if not self.connected:
            problems.append("not connected to the broker")
        if self.paused:
            problems.append("intake paused: the buffer is at capacity or the disk is full")
        return Verdict(not problems, tuple(problems), hung=alive.hung)
