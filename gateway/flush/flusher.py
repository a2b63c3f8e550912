"""The flusher: drains the buffer into one sink, fairly, in order, deleting only what landed.

Each of `max_in_flight` workers builds a batch from devices that no other worker holds (so one
device's readings reach the database in order, DESIGN invariant 3), picking devices round-robin so a
large backlog does not starve a small one. A batch goes out when it is full or its oldest reading
has waited `linger_s`. On success the batch is deleted from the buffer (invariant 2); on a
retryable error it stays and is retried after the outage's backoff; the points a database
refuses are found (gateway/flush/refusals.py) and moved to the dead-letter store.

Its parts, each of one sink: what waits, live and backlog apart (gateway/flush/streams.py), the
outage and its probe (gateway/flush/outage.py), the writes and the batch size they teach
(gateway/flush/writer.py). This module schedules: which devices go next, and what a write that
landed or failed changes.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from typing import TYPE_CHECKING

import anyio

from gateway.buffer.core.ledger import fifo_level
from gateway.errors import SinkError, StorageError
from gateway.flush.core.coalesce import coalesce
from gateway.flush.outage import Outage
from gateway.flush.refusals import write_isolating
from gateway.flush.streams import Streams
from gateway.flush.writer import Writer
from gateway.points.record import split

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway.buffer.core.ledger import Span
    from gateway.buffer.store import Buffer
    from gateway.config.sections import FlushSettings
    from gateway.flush.core.waiting import Waiting
    from gateway.flush.sink import Sink
    from gateway.observe.metrics import Metrics

logger = logging.getLogger(__name__)


class Flusher:
    """Background drain of the buffer; see the module docstring."""

    def __init__(
        self,
        buffer: Buffer,
        sink: Sink,
        settings: FlushSettings,
        metrics: Metrics,
        name: str = "influx",
    ) -> None:
        """Wire the flusher of the sink called `name`; `run` starts it.

        With several sinks (the buffer opened with their names), it reads and confirms from
        its sink's own positions (gateway/buffer/cursors.py), and readings count as delivered
        once they leave the buffer, when every sink had them.
        """
        self._buffer = buffer
        self.name = name
        self._shared = buffer.shared
        self._settings = settings
        self._metrics = metrics
        self._writer = Writer(sink, settings, metrics, name)
        metrics.sinks.failing_writes.labels(name).set_function(lambda: self._outage.failures)
        self._outage = Outage(settings)
        # What this sink has still to have at start: with several sinks, not what the others
        # hold for themselves, or this sink's lag would count their backlog.
        self._streams = Streams(recovered=buffer.sink_totals(name)[0])
        self._busy: set[str] = set()
        self._next_device = 0
        self._wake = anyio.Event()
        # Start counts as a return: the first write that lands splits what was found buffered
        # (if the database is down at start, what arrives meanwhile joins the backlog).
        self._split_at_next_landing = True
        self._draining = False
        self.space_freed = anyio.Event()
        # Called after each delivery too (gateway/flush/fanout.py waits on any sink's).
        self.on_freed: Callable[[], None] | None = None

    def notify(self, readings: int) -> None:
        """Called by ingest after a commit of `readings` readings."""
        now = time.monotonic()
        first = self._streams.live.committed(readings, now, self._settings.linger_s)
        # Wake the workers only when this commit changes what they would do: the first reading
        # to wait arms the linger timer, a full batch is due now. During an outage they wait for
        # their probe time whatever arrives. Waking them on every commit cost more CPU than the
        # commit itself at a few hundred commits per second.
        if self._outage.failures:
            return
        if first or self._buffer.totals().readings >= self.batch_size:
            self._wake.set()

    def note_appended(self, summaries: int) -> None:
        """Called after a compaction step replaced older buffered records by `summaries` summaries.

        The summaries stand for the oldest records waiting and keep their age, so the lag still
        says how old the oldest undelivered data is: only the records the step freed come off
        the oldest (`_settle`). Should the buffer hold more records than are known to wait, the
        rest waits from now (on the backlog's stream: summaries never join a live stream), so
        that no buffered summary goes unread.
        """
        self._settle()
        streams = self._streams
        missing = min(summaries, self._buffer.totals().readings - len(streams))
        if missing > 0:
            stream = streams.live if streams.backlog is None else streams.backlog
            stream.committed(missing, time.monotonic(), self._settings.linger_s)
            self._wake.set()

    @property
    def batch_size(self) -> int:
        """The batch size in use."""
        return self._writer.batch_size

    @property
    def last_write_s(self) -> float:
        """The duration of the last write the database accepted, for the status page."""
        return self._writer.last_write_s

    @property
    def failing_writes(self) -> int:
        """Database writes that failed in a row (0 while the database takes them)."""
        return self._outage.failures

    def lag_s(self, now: float) -> float:
        """How long the oldest undelivered reading has been buffered: the write-behind lag.

        Readings found in the buffer at start count from the start.
        """
        return self._streams.lag_s(now)

    def live_lag_s(self, now: float) -> float:
        """The lag of the readings accepted since the last live-first split (all, without one)."""
        return self._streams.live_lag_s(now)

    def backlog_lag_s(self, now: float) -> float:
        """The lag of the readings a live-first drain sends behind the live ones (0 without one)."""
        return self._streams.backlog_lag_s(now)

    def reconfigure(self, settings: FlushSettings) -> None:
        """Take new tuning (SIGHUP); the batch size in use is kept within the new bounds."""
        self._settings = settings
        self._writer.reconfigure(settings)
        self._outage.settings = settings
        self._wake.set()

    def account_removed(self, removed: Counter[int]) -> None:
        """Count readings that left a shared buffer as delivered, raw and summaries apart."""
        removed = Counter(removed)
        raw = removed.pop(0, 0)
        if raw or removed:
            self._metrics.accounting.removed(raw, 0, +removed, Counter())
        self._metrics.observe_buffer(self._buffer.totals())

    def skipped(self, readings: int) -> None:
        """This sink gave up `readings` readings (its max_lag_s or max_share)."""
        self._metrics.sinks.skipped.labels(self.name).inc(readings)
        self._streams.dropped(readings)
        self._settle()

    def forget(self, readings: int) -> None:
        """Called by ingest when admission dropped `readings` buffered readings."""
        self._streams.dropped(readings)
        self._settle()

    async def run(self) -> None:
        """Run the workers until cancelled."""
        async with anyio.create_task_group() as tg:
            for n in range(self._settings.max_in_flight):
                tg.start_soon(self._worker, name=f"gateway.flush.{n}")
            tg.start_soon(
                self._outage.probe_while_unreachable,
                self._writer.sink.ready,
                self._probed,
                name="gateway.flush.probe",
            )

    def _probed(self, answered: bool) -> None:
        self._metrics.probes.labels("ok" if answered else "failed").inc()
        if answered:
            self._wake.set()

    async def drain(self) -> None:
        """Flush everything without waiting for linger; returns once the buffer is empty."""
        self._draining = True
        self._wake.set()
        while self._waiting():
            with anyio.move_on_after(0.1):
                await self.space_freed.wait()

    def _waiting(self) -> bool:
        """Whether the buffer holds readings this sink has still to have."""
        if self._shared:
            return bool(self._buffer.sink_backlog(self.name))
        return bool(self._buffer.totals().readings)

    async def _worker(self) -> None:
        outage = self._outage
        while True:
            wait_s = outage.wait_s()
            wanted: list[tuple[str, int]] = []
            live = False
            if not wait_s:
                wanted, wait_s, live = self._pick()
            if not wanted:
                await self._sleep_until_woken(wait_s)
                continue
            probing = outage.failures > 0
            outage.probing = probing
            self._busy.update(d for d, _ in wanted)
            try:
                if not await self._flush(wanted, live=live):
                    # Nothing could be read after all (a live stream held behind its
                    # backlog): give the others the loop instead of asking again at once.
                    await anyio.sleep(self._settings.linger_s)
            finally:
                self._busy.difference_update(d for d, _ in wanted)
                if probing:
                    outage.probing = False
                self._wake.set()  # other workers may now take those devices, or stop waiting

    async def _sleep_until_woken(self, timeout_s: float) -> None:
        if self._wake.is_set():
            # Something changed since the last look: consume the wake-up and look again.
            self._wake = anyio.Event()
            return
        with anyio.move_on_after(timeout_s):
            await self._wake.wait()

    def _pick(self) -> tuple[list[tuple[str, int]], float, bool]:
        """Devices and counts for the next batch, or none and how long to wait for one.

        During a live-first drain, live streams go first and the backlog gets the rest; the
        flag says which the batch is from.
        """
        live_wait = math.inf
        streams = self._streams
        if streams.split is not None:
            wanted, live_wait = self._choose(self._buffer.live_backlog(), streams.live)
            if wanted:
                return wanted, 0.0, True
        backlog = self._buffer.sink_backlog(self.name) if self._shared else self._buffer.backlog()
        wanted, wait_s = self._choose(backlog, streams.oldest)
        return wanted, min(wait_s, live_wait), False

    def _choose(
        self, backlog: dict[str, int], waiting: Waiting
    ) -> tuple[list[tuple[str, int]], float]:
        """Round-robin quotas over the devices of `backlog` no batch holds, once one is due."""
        ready = [(d, n) for d, n in backlog.items() if d not in self._busy]
        available = sum(n for _, n in ready)
        if not available:
            return [], math.inf
        linger_left = (
            0.0
            if self._draining
            else waiting.linger_left(time.monotonic(), self._settings.linger_s)
        )
        batch_size = self.batch_size
        if available < batch_size and linger_left > 0:
            return [], linger_left
        quota = max(1, math.ceil(batch_size / len(ready)))
        start = self._next_device % len(ready)
        wanted, room = [], batch_size
        for device, count in ready[start:] + ready[:start]:
            take = min(count, quota, room)
            wanted.append((device, take))
            room -= take
            if not room:
                break
        self._next_device = start + len(wanted)
        return wanted, 0.0

    async def _flush(self, wanted: list[tuple[str, int]], *, live: bool) -> bool:
        """Read, write and delete one batch; False when nothing could be read."""
        spans = self._buffer.read_live(wanted) if live else self._buffer.read(wanted, self.name)
        if not spans:
            return False
        deleted = False
        try:
            deleted = await self._deliver_spans(spans)
        finally:
            if not deleted:
                # Not delivered: admission may drop these readings again if it must.
                self._buffer.release([s.device for s in spans], self.name)
        return True

    async def _deliver_spans(self, spans: list[Span]) -> bool:
        """Write the spans and delete what landed; False when they stay buffered."""
        stored = [split(value) for span in spans for value in span.values]
        devices = [span.device for span in spans for _ in span.values]
        lines, sources = coalesce(stored)
        try:
            refused = await write_isolating(self._writer.write, lines)
        except SinkError as exc:
            self._outage.failed(exc)
            return False
        returned = self._outage.landed() or self._split_at_next_landing
        self._split_at_next_landing = False
        dead = [(devices[sources[j][0]], reason, lines[j].decode()) for j, reason in refused]
        # Records of each level behind the refused lines: raw readings (0) and summaries.
        dead_by_level = Counter(fifo_level(devices[i]) for j, _ in refused for i in sources[j])
        try:
            self._delete(spans, dead, dead_by_level)
        except StorageError as exc:
            # The database has the points; they stay buffered and are written again later,
            # which is harmless. Crashing here would stop intake as well.
            self._outage.failed(exc)
            return False
        self._streams.delivered(spans)
        self._settle()
        if returned:
            self._begin_live_first()
        self.space_freed.set()
        self.space_freed = anyio.Event()
        if self.on_freed is not None:
            self.on_freed()
        return True

    def _begin_live_first(self) -> None:
        """After an outage (or at start): what arrives from now on goes ahead of the backlog."""
        if not self._settings.live_first or self._streams.split is not None or self._shared:
            return
        buffered = self._buffer.totals().readings
        if buffered:
            self._streams.begin_drain(self._buffer.begin_live_first(), buffered)

    def _settle(self) -> None:
        """Forget waiting readings beyond what the buffer holds (gateway/flush/streams.py)."""
        self._streams.settle(self._buffer.totals().readings)

    def _delete(
        self, spans: list[Span], dead: list[tuple[str, str, str]], dead_by_level: Counter[int]
    ) -> int:
        deleted = self._buffer.delete(
            [(s.device, s.first_seq, len(s.values)) for s in spans], dead, self.name
        )
        if self._shared:
            # What left the buffer (every sink had it) counts as delivered; a sink's dead
            # letters are its own, counted apart.
            self.account_removed(self._buffer.last_removed)
            return deleted
        # Raw readings and summaries are accounted apart (gateway/observe/accounting.py).
        delivered: Counter[int] = Counter()
        for span in spans:
            delivered[fifo_level(span.device)] += len(span.values)
        delivered.subtract(dead_by_level)
        summaries_dead = Counter(dead_by_level)
        raw_delivered, raw_dead = delivered.pop(0, 0), summaries_dead.pop(0, 0)
        # Right after the commit that removed them, so a scrape sees both or neither.
        self._metrics.accounting.removed(raw_delivered, raw_dead, +delivered, +summaries_dead)
        self._metrics.observe_buffer(self._buffer.totals())
        return deleted
