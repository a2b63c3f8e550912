"""The flusher: drains the buffer into the database, fairly, in order, deleting only what landed.

Each of `max_in_flight` workers builds a batch from devices that no other worker holds (so one
device's readings reach the database in order, DESIGN invariant 3), picking devices round-robin so a
large backlog does not starve a small one. A batch goes out when it is full or its oldest reading
has waited `linger_s`. On success the batch is deleted from the buffer (invariant 2); on a
retryable error it stays and is retried with capped full-jitter backoff; the points a database
refuses are found (gateway/flush/refusals.py) and moved to the dead-letter store.
"""

from __future__ import annotations

import logging
import math
import random
import time
import zlib
from collections import Counter
from typing import TYPE_CHECKING, NoReturn

import anyio

from gateway import backoff
from gateway.buffer.core.ledger import fifo_level
from gateway.errors import SinkError, StorageError
from gateway.flush.core.coalesce import coalesce
from gateway.flush.core.controller import BatchSizer
from gateway.flush.core.uplink import UplinkBudget
from gateway.flush.core.waiting import Waiting
from gateway.flush.refusals import write_isolating
from gateway.points.record import split

if TYPE_CHECKING:
    from gateway.buffer.core.ledger import Span
    from gateway.buffer.store import Buffer
    from gateway.config.sections import FlushSettings
    from gateway.flush.sink import Sink
    from gateway.observe.metrics import Metrics

logger = logging.getLogger(__name__)

# Line protocol of one device's readings at level 1: 6.2 bytes a point in batches of a few
# thousand (level 6: 4.6, at half again the CPU; plain: 63), measured by `gateway bench
# --scenario drain`.
GZIP_LEVEL = 1
# zlib's wbits for a gzip container (RFC 1952), which Content-Encoding: gzip names.
GZIP_WBITS = 31


class Flusher:
    """Background drain of the buffer; see the module docstring."""

    def __init__(
        self,
        buffer: Buffer,
        sink: Sink,
        settings: FlushSettings,
        metrics: Metrics,
    ) -> None:
        """Wire the flusher; `run` starts it."""
        self._buffer = buffer
        self._sink = sink
        self._settings = settings
        self._metrics = metrics
        self._sizer = BatchSizer(
            floor=settings.batch_floor,
            ceiling=settings.batch_ceiling,
            size=settings.batch_initial,
            target_latency_s=settings.target_latency_s,
        )
        self._batch_size = self._sizer.size
        # The duration of the last write the database accepted, for the status page.
        self.last_write_s = 0.0
        self._busy: set[str] = set()
        self._next_device = 0
        self._wake = anyio.Event()
        self._waiting = Waiting(recovered=buffer.totals().readings)
        # During a live-first drain (gateway/buffer/live.py): each FIFO's sequence where its
        # live stream began, and the readings buffered before it; `_waiting` then holds only
        # the readings accepted since.
        self._split: dict[str, int] | None = None
        self._backlog: Waiting | None = None
        # Start counts as a return: the first write that lands splits what was found buffered
        # (if the database is down at start, what arrives meanwhile joins the backlog).
        self._split_at_next_landing = True
        self._started = time.monotonic()
        self._draining = False
        self._failures = 0
        self._probing = False
        self._resume_at = 0.0
        # The last failure had no HTTP response: the database's return is probed for.
        self._unreachable = False
        self._outage_began = anyio.Event()
        self._uplink = UplinkBudget(settings.max_bytes_per_s)
        self.space_freed = anyio.Event()
        metrics.batch_size.set(self._batch_size)

    def notify(self, readings: int) -> None:
        """Called by ingest after a commit of `readings` readings."""
        first = self._waiting.committed(readings, time.monotonic(), self._settings.linger_s)
        # Wake the workers only when this commit changes what they would do: the first reading
        # to wait arms the linger timer, a full batch is due now. During an outage they wait for
        # their probe time whatever arrives. Waking them on every commit cost more CPU than the
        # commit itself at a few hundred commits per second.
        if self._failures:
            return
        if first or self._buffer.totals().readings >= self._batch_size:
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
        backlog = self._backlog
        known = len(self._waiting) + (0 if backlog is None else len(backlog))
        missing = min(summaries, self._buffer.totals().readings - known)
        if missing > 0:
            stream = self._waiting if backlog is None else backlog
            stream.committed(missing, time.monotonic(), self._settings.linger_s)
            self._wake.set()

    @property
    def batch_size(self) -> int:
        """The batch size in use."""
        return self._batch_size

    @property
    def failing_writes(self) -> int:
        """Database writes that failed in a row (0 while the database takes them)."""
        return self._failures

    def lag_s(self, now: float) -> float:
        """How long the oldest undelivered reading has been buffered: the write-behind lag.

        Readings found in the buffer at start count from the start.
        """
        return max(self.live_lag_s(now), self.backlog_lag_s(now))

    def live_lag_s(self, now: float) -> float:
        """The lag of the readings accepted since the last live-first split (all, without one)."""
        return self._lag_of(self._waiting, now)

    def backlog_lag_s(self, now: float) -> float:
        """The lag of the readings a live-first drain sends behind the live ones (0 without one)."""
        return 0.0 if self._backlog is None else self._lag_of(self._backlog, now)

    def _lag_of(self, waiting: Waiting, now: float) -> float:
        if not waiting:
            return 0.0
        return now - max(waiting.oldest_since(), self._started)

    def reconfigure(self, settings: FlushSettings) -> None:
        """Take new tuning (SIGHUP); the batch size in use is kept within the new bounds."""
        self._settings = settings
        self._sizer = BatchSizer(
            floor=settings.batch_floor,
            ceiling=settings.batch_ceiling,
            size=min(max(self._batch_size, settings.batch_floor), settings.batch_ceiling),
            target_latency_s=settings.target_latency_s,
        )
        self._resize(self._sizer.size)
        self._uplink.bytes_per_s = settings.max_bytes_per_s
        self._wake.set()

    def forget(self, readings: int) -> None:
        """Called by ingest when admission dropped `readings` buffered readings."""
        # Drops take the oldest readings, which during a live-first drain are the backlog's,
        # but of a FIFO whose backlog is gone (or that was not split) they are live ones.
        left = readings if self._backlog is None else self._backlog.delivered(readings)
        self._waiting.delivered(left)
        self._settle()

    async def run(self) -> None:
        """Run the workers until cancelled."""
        async with anyio.create_task_group() as tg:
            for n in range(self._settings.max_in_flight):
                tg.start_soon(self._worker, name=f"gateway.flush.{n}")
            tg.start_soon(self._probe_while_unreachable, name="gateway.flush.probe")

    async def _probe_while_unreachable(self) -> NoReturn:
        """While the database cannot be reached, ping it every `probe_interval_s`.

        The write backoff grows to `retry_max_s` during a long outage; without this, the first
        write after the database's return waited out the rest of it. One probe at a time, and
        only for failures without an HTTP response: a database that answers with an error or a
        Retry-After keeps its backoff.
        """
        while True:
            if not self._unreachable:
                self._outage_began = anyio.Event()
                await self._outage_began.wait()
                continue
            await anyio.sleep(self._settings.probe_interval_s)
            if not self._unreachable or self._resume_at <= time.monotonic():
                continue
            answered = await self._sink.ready()
            self._metrics.probes.labels("ok" if answered else "failed").inc()
            if answered and self._unreachable:
                logger.info("the database answers its ping again; writing")
                self._unreachable = False
                self._resume_at = time.monotonic()
                self._wake.set()

    async def drain(self) -> None:
        """Flush everything without waiting for linger; returns once the buffer is empty."""
        self._draining = True
        self._wake.set()
        while self._buffer.totals().readings:
            with anyio.move_on_after(0.1):
                await self.space_freed.wait()

    async def _worker(self) -> None:
        while True:
            wait_s = self._outage_wait()
            wanted: list[tuple[str, int]] = []
            live = False
            if not wait_s:
                wanted, wait_s, live = self._pick()
            if not wanted:
                await self._sleep_until_woken(wait_s)
                continue
            probing = self._failures > 0
            self._probing = probing
            self._busy.update(d for d, _ in wanted)
            try:
                if not await self._flush(wanted, live=live):
                    # Nothing could be read after all (a live stream held behind its
                    # backlog): give the others the loop instead of asking again at once.
                    await anyio.sleep(self._settings.linger_s)
            finally:
                self._busy.difference_update(d for d, _ in wanted)
                if probing:
                    self._probing = False
                self._wake.set()  # other workers may now take those devices, or stop waiting

    def _outage_wait(self) -> float:
        """During an outage one worker probes per backoff period and the others wait."""
        if not self._failures:
            return 0.0
        if self._probing:
            return math.inf
        return max(0.0, self._resume_at - time.monotonic())

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
        if self._split is not None:
            wanted, live_wait = self._choose(self._buffer.live_backlog(), self._waiting)
            if wanted:
                return wanted, 0.0, True
        wanted, wait_s = self._choose(self._buffer.backlog(), self._backlog or self._waiting)
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
        if available < self._batch_size and linger_left > 0:
            return [], linger_left
        quota = max(1, math.ceil(self._batch_size / len(ready)))
        start = self._next_device % len(ready)
        wanted, room = [], self._batch_size
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
        spans = self._buffer.read_live(wanted) if live else self._buffer.read(wanted)
        if not spans:
            return False
        deleted = False
        try:
            deleted = await self._deliver_spans(spans)
        finally:
            if not deleted:
                # Not delivered: admission may drop these readings again if it must.
                self._buffer.release([s.device for s in spans])
        return True

    async def _deliver_spans(self, spans: list[Span]) -> bool:
        """Write the spans and delete what landed; False when they stay buffered."""
        stored = [split(value) for span in spans for value in span.values]
        devices = [span.device for span in spans for _ in span.values]
        lines, sources = coalesce(stored)
        try:
            refused = await write_isolating(self._write, lines)
        except SinkError as exc:
            self._back_off(exc)
            return False
        returned = self._failures > 0 or self._split_at_next_landing
        self._split_at_next_landing = False
        if self._failures:
            logger.info("database accepts writes again after %d failed attempts", self._failures)
            self._failures = 0
            self._unreachable = False
        dead = [(devices[sources[j][0]], reason, lines[j].decode()) for j, reason in refused]
        # Records of each level behind the refused lines: raw readings (0) and summaries.
        dead_by_level = Counter(fifo_level(devices[i]) for j, _ in refused for i in sources[j])
        try:
            self._delete(spans, dead, dead_by_level)
        except StorageError as exc:
            # The database has the points; they stay buffered and are written again later,
            # which is harmless. Crashing here would stop intake as well.
            self._back_off(exc)
            return False
        self._account_delivered(spans)
        self._settle()
        if returned:
            self._begin_live_first()
        self.space_freed.set()
        self.space_freed = anyio.Event()
        return True

    def _begin_live_first(self) -> None:
        """After an outage (or at start): what arrives from now on goes ahead of the backlog."""
        if not self._settings.live_first or self._split is not None:
            return
        if not self._buffer.totals().readings:
            return
        self._split = self._buffer.begin_live_first()
        self._backlog, self._waiting = self._waiting, Waiting(recovered=0)
        logger.info(
            "live-first drain: new readings go ahead of the %d buffered ones",
            self._buffer.totals().readings,
        )

    def _account_delivered(self, spans: list[Span]) -> None:
        """Take delivered spans off the waiting readings: live ones and backlog ones apart."""
        delivered = sum(len(span.values) for span in spans)
        split, backlog = self._split, self._backlog
        if split is None or backlog is None:
            self._waiting.delivered(delivered)
            return
        live = 0
        for span in spans:
            if fifo_level(span.device):
                continue  # summaries are appended after any split: never a live stream's
            end = span.first_seq + len(span.values)
            live += max(0, end - max(span.first_seq, split.get(span.device, 0)))
        # The split here is the flusher's guess of the buffer's (which ends a FIFO's split on
        # its own, and keeps an older one): what one stream does not hold was the other's.
        left = self._waiting.delivered(live)
        self._waiting.delivered(backlog.delivered(delivered - live + left))
        self._end_live_first_if_done()

    def _settle(self) -> None:
        """Forget waiting readings beyond what the buffer holds, then end a finished drain.

        Every reading the buffer holds must be known to wait, and none that it does not: a
        commit wakes the workers only when it is the first to wait, so readings counted as
        waiting after they left would keep the workers asleep with the buffer full of new ones.
        The streams' counts follow every commit, drop and delivery; this also covers readings
        the buffer lost otherwise (a damaged chunk set aside).
        """
        backlog = self._backlog
        waiting = len(self._waiting) + (0 if backlog is None else len(backlog))
        excess = waiting - self._buffer.totals().readings
        if excess > 0:
            # The oldest first, as the buffer loses them: the backlog's before the live ones.
            self._waiting.delivered(excess if backlog is None else backlog.delivered(excess))
        self._end_live_first_if_done()

    def _end_live_first_if_done(self) -> None:
        if self._backlog is not None and not self._backlog:
            self._split = self._backlog = None
            logger.info("live-first drain: the backlog is delivered")

    def _delete(
        self, spans: list[Span], dead: list[tuple[str, str, str]], dead_by_level: Counter[int]
    ) -> int:
        deleted = self._buffer.delete([(s.device, s.first_seq, len(s.values)) for s in spans], dead)
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

    async def _write(self, body: bytes, points: int) -> None:
        encoding = None
        if self._settings.gzip:
            body, encoding = zlib.compress(body, GZIP_LEVEL, GZIP_WBITS), "gzip"
        wait_s = self._uplink.reserve(len(body), time.monotonic())
        if wait_s:
            await anyio.sleep(wait_s)
        started = time.monotonic()
        try:
            with self._metrics.writes_in_flight.track_inprogress():
                self._metrics.sent_bytes.inc(len(body))
                await self._sink.write(body, encoding=encoding)
        except SinkError as exc:
            self._metrics.writes.labels(exc.result).inc()
            if exc.overloaded:
                self._resize(self._sizer.on_overload(time.monotonic()))
            raise
        now = time.monotonic()
        self.last_write_s = now - started
        self._metrics.writes.labels("ok").inc()
        self._metrics.write_seconds.observe(now - started)
        self._metrics.batch_points.observe(points)
        self._resize(self._sizer.on_success(now - started, points, now))

    def _resize(self, size: int) -> None:
        self._batch_size = size
        self._metrics.batch_size.set(size)

    def _back_off(self, exc: SinkError | StorageError) -> None:
        """Schedule the next probe with capped full-jitter backoff (honouring Retry-After)."""
        self._failures += 1
        if self._failures == 1:
            if isinstance(exc, StorageError):
                logger.error(
                    "could not delete delivered readings from the buffer; they stay buffered "
                    "and are written again later: %s",
                    exc,
                )
            else:
                level = logging.ERROR if exc.operator_must_act else logging.WARNING
                logger.log(
                    level,
                    "database write failed, readings stay buffered and are retried: %s",
                    exc,
                    extra={"error": str(exc), "retryable": exc.retryable},
                )
        s = self._settings
        delay = backoff.delay_s(self._failures, s.retry_initial_s, s.retry_max_s, random.uniform)
        retry_after = exc.retry_after_s
        if retry_after is not None:
            delay = max(delay, min(retry_after, self._settings.retry_max_s))
        self._resume_at = time.monotonic() + delay
        self._unreachable = isinstance(exc, SinkError) and exc.unreachable
        if self._unreachable:
            self._outage_began.set()
