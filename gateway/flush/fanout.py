"""Several sinks fed from one buffer, each at its own pace: a flusher per sink, and their limits.

Each sink has a flusher of its own (gateway/flush/flusher.py): its writer, batch size, outage
and probe, reading from its own positions in the shared buffer (gateway/buffer/cursors.py), so
a sink that is down or slow changes nothing for the others. A reading leaves the buffer once
every sink had it; a sink that falls too far behind would hold them all, so a sink may set
`max_lag_s` (readings older than that are given up for it alone) or `max_share` (its backlog may
take at most that share of the readings budget; past it, the oldest part of each device's
backlog is given up for it alone). Both are counted (`gateway_sink_skipped_total{sink}`).
When readings came is marked per device every eighth of the shortest `max_lag_s`
(gateway/flush/core/marks.py), so a limit gives up only readings older than itself.

This presents the one-sink flusher's face to ingest, housekeeping, the reloader and the status
page: what one flusher is told, each is told; the lag shown is the worst sink's.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio

from gateway.flush.core.marks import Marks

if TYPE_CHECKING:
    from collections.abc import Sequence

    from gateway.buffer.store import Buffer
    from gateway.config.sections import FlushSettings
    from gateway.config.sinks import ResolvedSink
    from gateway.flush.flusher import Flusher

logger = logging.getLogger(__name__)
# How often the sinks' limits are looked at: a lag limit is hours or days, a share acts on
# the disk, which fills over minutes at the least.
LIMITS_INTERVAL_S = 1.0
# A `max_lag_s` is kept to an eighth of itself, and no finer than a second: each device keeps
# about eight marks of when its readings came (gateway/flush/core/marks.py).
MARK_STEPS = 8
MIN_MARK_STEP_S = 1.0
# FIFOs given up in one hold of the loop: each may move its head, which walks its readings.
SKIP_STEP_FIFOS = 200


@dataclass(slots=True)
class _Marking:
    """One sink's marks of when readings came, and how often they are taken."""

    marks: Marks
    every_s: float
    marked_at: float = -math.inf


class Fanout:
    """The flushers of several sinks as one; see the module docstring."""

    def __init__(
        self, buffer: Buffer, flushers: Sequence[Flusher], sinks: Sequence[ResolvedSink]
    ) -> None:
        """One flusher per sink, in the order of `sinks` (the first is the primary)."""
        self._buffer = buffer
        self.flushers = list(flushers)
        self._sinks = {sink.name: sink for sink in sinks}
        self.space_freed = anyio.Event()
        for flusher in self.flushers:
            flusher.on_freed = self._freed
        # When readings came, per sink with a `max_lag_s`, marked every eighth of it: each
        # keeps about eight marks per device whatever the other sinks' limits.
        self._marks = {
            s.name: _Marking(Marks(s.max_lag_s), max(MIN_MARK_STEP_S, s.max_lag_s / MARK_STEPS))
            for s in sinks
            if s.max_lag_s is not None
        }

    def _freed(self) -> None:
        self.space_freed.set()
        self.space_freed = anyio.Event()

    def notify(self, readings: int) -> None:
        """Called by ingest after a commit of `readings` readings."""
        for flusher in self.flushers:
            flusher.notify(readings)

    def note_appended(self, summaries: int) -> None:
        """A compaction step appended `summaries` summaries: every sink has them to send."""
        for flusher in self.flushers:
            flusher.note_appended(summaries)

    def forget(self, readings: int) -> None:
        """Admission dropped `readings` buffered readings."""
        for flusher in self.flushers:
            flusher.forget(readings)

    @property
    def batch_size(self) -> int:
        """The primary sink's batch size."""
        return self.flushers[0].batch_size

    @property
    def last_write_s(self) -> float:
        """The primary sink's last write duration."""
        return self.flushers[0].last_write_s

    @property
    def failing_writes(self) -> int:
        """The most writes failed in a row of any sink."""
        return max(flusher.failing_writes for flusher in self.flushers)

    def lag_s(self, now: float) -> float:
        """The worst sink's write-behind lag."""
        return max(flusher.lag_s(now) for flusher in self.flushers)

    def live_lag_s(self, now: float) -> float:
        """As `lag_s`: with several sinks there is no live-first split."""
        return self.lag_s(now)

    def backlog_lag_s(self, now: float) -> float:
        """0: with several sinks there is no live-first split."""
        del now
        return 0.0

    def reconfigure(self, settings: FlushSettings) -> None:
        """New `[flush]` tuning (SIGHUP): each sink takes it under its own overrides."""
        for flusher in self.flushers:
            flusher.reconfigure(self._sinks[flusher.name].with_flush(settings))

    async def run(self) -> None:
        """Run every sink's flusher and the sinks' limits until cancelled."""
        async with anyio.create_task_group() as tg:
            for flusher in self.flushers:
                tg.start_soon(flusher.run, name=f"gateway.flush.{flusher.name}")
            tg.start_soon(self._keep_limits, name="gateway.flush.limits")

    async def drain(self) -> None:
        """Flush every sink; returns once each has everything (or the caller gives up)."""
        async with anyio.create_task_group() as tg:
            for flusher in self.flushers:
                tg.start_soon(flusher.drain)

    async def _keep_limits(self) -> None:
        limited = [f for f in self.flushers if self._sinks[f.name].is_limited]
        while limited:
            await anyio.sleep(LIMITS_INTERVAL_S)
            now = time.monotonic()
            due = [m for m in self._marks.values() if now - m.marked_at >= m.every_s]
            if due:
                nexts = self._buffer.fifo_nexts()
                for marking in due:
                    marking.marks.note(nexts, now)
                    marking.marked_at = now
                    await anyio.lowlevel.checkpoint()
            for flusher in limited:
                await self._keep_limit(flusher, now)

    async def _keep_limit(self, flusher: Flusher, now: float) -> None:
        """Give up the oldest of what `flusher`'s sink holds past its limits."""
        sink = self._sinks[flusher.name]
        skipped = 0
        marking = self._marks.get(sink.name)
        if sink.max_lag_s is not None and marking is not None:
            overdue = marking.marks.overdue(now - sink.max_lag_s)
            skipped += await self._skip(flusher, overdue)
        if sink.max_share is not None:
            _, held = self._buffer.sink_totals(sink.name)
            allowed = sink.max_share * self._buffer.budget_bytes
            if held > allowed:
                fraction = min(1.0, (held - allowed) / held)
                skipped += await self._skip(
                    flusher, self._buffer.share_targets(sink.name, fraction)
                )
        if skipped:
            logger.warning(
                "sink %s: gave up %d of its oldest readings, past its max_lag_s or max_share; "
                "the other sinks keep theirs",
                sink.name,
                skipped,
            )

    async def _skip(self, flusher: Flusher, targets: dict[str, int]) -> int:
        """Move `flusher`'s sink to `targets`, a few FIFOs per turn of the loop; how many went."""
        items = list(targets.items())
        skipped = 0
        for start in range(0, len(items), SKIP_STEP_FIFOS):
            part = dict(items[start : start + SKIP_STEP_FIFOS])
            step = self._buffer.skip_to(flusher.name, part)
            if step:
                skipped += step
                flusher.skipped(step)
                flusher.account_removed(self._buffer.last_removed)
                self._freed()
            await anyio.lowlevel.checkpoint()
        return skipped


def sink_states(flusher: Flusher | Fanout, buffer: Buffer, now: float) -> list[dict[str, object]]:
    """Each sink's state for the status page and `gateway status`, in configured order."""
    flushers = flusher.flushers if isinstance(flusher, Fanout) else [flusher]
    skipped = buffer.sink_skipped()
    states: list[dict[str, object]] = []
    for one in flushers:
        waiting, _ = buffer.sink_totals(one.name)
        states.append(
            {
                "name": one.name,
                "state": "failing" if one.failing_writes else "ok",
                "failed_writes_in_a_row": one.failing_writes,
                "lag_s": one.lag_s(now),
                "batch_size": one.batch_size,
                "last_write_s": one.last_write_s,
                "backlog_readings": waiting,
                "skipped_readings": skipped.get(one.name, 0),
            }
        )
    return states
