"""Periodic chores of the running service: health, systemd's watchdog, the summary line.

Every tick marks the loop alive, pings systemd's watchdog with a status line, ends quiet refusal
and drop episodes, and now and then logs a summary. Between ticks it takes the steps of a seal
and of the compact policy (gateway/buffer/compaction.py), one step per short pause, so that
neither holds the loop for long. The buffer works in the event loop's thread,
so a hung disk stops the ticks, the watchdog pings and /healthz together, and systemd restarts
the gateway. A stall that ended does not stop the pings (the loop turns again); /healthz and the
loop-lag metrics report it (gateway/service/loopwatch.py).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio

from gateway.errors import CapacityError

if TYPE_CHECKING:
    from gateway.buffer.store import Buffer
    from gateway.flush.fanout import Fanout
    from gateway.flush.flusher import Flusher
    from gateway.ingest.intake import Ingest
    from gateway.observe.accounting import Snapshot
    from gateway.observe.health import Health
    from gateway.observe.metrics import Metrics
    from gateway.service.sdnotify import Notifier

logger = logging.getLogger(__name__)

TICK_S = 2.0
# Between two steps of a seal or of compaction, each a few milliseconds, so that commits, acks
# and writes get the loop in between (intake and flushing take seal steps themselves).
SEAL_STEP_PAUSE_S = 0.01
# How often, between ticks, a service with a compact lane asks whether compaction is due (a
# check of the fill, a few microseconds): well within the time intake takes to fill the 5 % of
# the budget from the start of compaction to the high watermark.
COMPACT_POLL_S = 0.05


@dataclass
class Housekeeping:
    """The chores; `run` does them until cancelled."""

    buffer: Buffer
    flusher: Flusher | Fanout
    ingest: Ingest
    metrics: Metrics
    health: Health
    notifier: Notifier
    summary_interval_s: float
    # The last compaction step found no room on disk: said once, until a step works again.
    _compaction_failing: bool = False

    async def run(self) -> None:
        """Tick, probe and summarize until cancelled."""
        tick_s = min(TICK_S, self.notifier.watchdog_interval_s or TICK_S)
        last = self.metrics.accounting.snapshot()
        next_summary = time.monotonic() + self.summary_interval_s
        while True:
            now = time.monotonic()
            self.health.last_tick = now
            self.ingest.housekeeping()
            sealing = self.buffer.maintain()
            self.metrics.dead_letters.set(self.buffer.dead_letter_count())
            self.metrics.disk.sample()
            # The ping says the loop turns, which it does here: a stall that is over (which
            # /healthz reports for a minute) must not make systemd kill a gateway that recovered.
            self.notifier.send(WATCHDOG="1", STATUS=self.status_line())
            if self.summary_interval_s and now >= next_summary:
                last = self._summarize(last)
                next_summary = now + self.summary_interval_s
            await self._step_until(now + tick_s, sealing=sealing)

    async def _step_until(self, next_tick: float, *, sealing: bool) -> None:
        """Take seal and compaction steps until the next tick, the loop free in between.

        A step, then a short pause: the two take turns, so a long seal does not hold compaction
        off. With a compact lane, whether compaction is due is asked again every
        `COMPACT_POLL_S` meanwhile: at a high intake rate the fill passes from the start of
        compaction to the high watermark in a fraction of a tick, and intake would pause there.
        """
        compacting, turn = True, 0
        while (left_s := next_tick - time.monotonic()) > 0:
            if sealing or compacting:
                await anyio.sleep(SEAL_STEP_PAUSE_S)
                if sealing and not (compacting and turn % 2):
                    sealing = self.buffer.maintain()
                else:
                    compacting = self.compact_step()
                turn += 1
            elif self._has_compact_lane():
                await anyio.sleep(min(COMPACT_POLL_S, left_s))
                compacting = self.compact_step()
            else:
                await anyio.sleep(left_s)

    def _has_compact_lane(self) -> bool:
        rules = self.ingest.committer.rules
        return any(lane.is_compactable for lane in (rules.default_lane, *rules.lanes.values()))

    def compact_step(self) -> bool:
        """One step of the compact policy, counted; False when there was nothing (or no room) to do.

        It runs with the admission rules in use (a reload changes them), and is counted right
        after its commit, so a scrape sees the summaries and the readings they replaced together.
        """
        try:
            compacted = self.buffer.compact(self.ingest.committer.rules)
        except CapacityError as exc:
            # The disk budget had no page for the step; nothing changed. Any other storage
            # error ends the service, as one of a seal does: the next start recovers.
            if not self._compaction_failing:
                logger.warning("compaction had no room on disk; tried again later: %s", exc)
            self._compaction_failing = True
            return False
        self._compaction_failing = False
        if compacted is None:
            return False
        self.metrics.accounting.compacted(compacted)
        self.flusher.note_appended(compacted.appended)
        return True

    def status_line(self) -> str:
        """One line for `systemctl status`: backlog, fill, lag."""
        totals = self.buffer.totals()
        fill = totals.nbytes / self.buffer.budget_bytes if self.buffer.budget_bytes else 0.0
        return (
            f"backlog {totals.readings} readings from {totals.devices} devices "
            f"({fill:.0%} of the buffer), lag {self.flusher.lag_s(now := time.monotonic()):.1f} s, "
            f"event loop lag {self.health.loop_lag.recent_max(now) * 1000:.0f} ms (max 1 min)"
            + ("" if self.health.connected else ", broker disconnected")
            + (", intake paused" if self.health.paused else "")
        )

    def _summarize(self, last: Snapshot) -> Snapshot:
        snapshot = self.metrics.accounting.snapshot()
        before = last.outcomes
        now = snapshot.outcomes
        facts = {
            name: now[name] - before[name]
            for name in ("received", "delivered", "refused", "dropped", "suppressed", "summarised")
        }
        logger.info(
            "summary: received %d, delivered %d, refused %d, dropped %d, suppressed %d, "
            "summarised %d since the last summary; %s, batch size %d",
            *facts.values(),
            self.status_line(),
            self.flusher.batch_size,
            extra={**facts, "batch_size": self.flusher.batch_size},
        )
        return snapshot
