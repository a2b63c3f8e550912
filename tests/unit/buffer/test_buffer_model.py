"""The buffer against a plain model: a FIFO per device through random appends, reads, leases,
deliveries, drops, live-first splits, checkpoints, seals, injected storage failures, clean
restarts and crashes.

The model is a deque of packed readings per device, the leases the flusher holds (a backlog
lease: a run from the head; a live lease: a run of a split FIFO's live stream), and the
readings taken out since the buffer last saved its deliveries and drops. After every step the
buffer must agree with it exactly: counts, bytes, what each FIFO reads back, in order.

What the model allows:
- drops (admission with `drop_oldest` or a device share) take, per device, the oldest readings
  not leased, in one run, or the run just before the gap an earlier drop left (the one gap
  widens); a split FIFO's drops stop at its live stream. How many a device lost is read from its
  accounting (a drop may take more than its need), where the run lies from what it reads back;
- a failed group commit raises `StorageError` (`CapacityError` for a full disk) and stores and
  drops nothing; a plain append of a few readings into an empty buffer is never refused;
- a failed checkpoint (its store transaction, a seal, the journal deletion after it, the dead
  letters of a delete) loses nothing: what it was to save is saved or comes back after a crash,
  nothing else moves (a delete whose dead letters could not be stored raised and deleted
  nothing); after any failure the next checkpoint succeeds (`save`, `seal`, `reopen`);
- kill -9 (`crash`) brings back every appended reading not delivered, and the deliveries and
  drops not yet saved: since the last checkpoint, or, with `DELIVERIES_IN_JOURNAL`, since the
  last group commit that wrote a journal record;
- a compaction step (the `compact` policy) takes one run of a FIFO the way a drop does (after
  the lease, before the live stream) and appends to the FIFO one level up exactly what
  `summarise` makes of it with the buffer's next compaction number, or drops the coarsest
  level's oldest summaries; a step whose commit fails changes nothing. Whatever happens,
  the statistics of every device's readings per coarsest window are those of the records
  buffered, delivered and dropped (raw readings and summaries), and no two of those share a
  series and timestamp (DESIGN invariant 10);
- the buffer is opened as the service opens it, with its redelivery fence
  (gateway/buffer/core/fence.py): a compaction step never takes a raw reading of the newest
  `RECENT_RECORDS` admission records that fit in its bytes (the newest always does), nor of those
  a connection held when it began or ended (`connection_changes`) until a fresh message lifts
  the hold; and every reading of the last admission is recognised as a copy, so a redelivered
  one is not stored again (`redeliver`).

Two configurations: a 1 MiB buffer, and one of the same smallest allowed capacity whose page
guard and maps run full with hundreds of devices of big readings.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import tempfile
from collections import Counter, defaultdict, deque
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import lmdb
import pytest
from hypothesis import Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from gateway.buffer import checkpoint, compaction
from gateway.buffer.core.admission import Lane, Policy, Rules
from gateway.buffer.core.fence import RECENT_RECORDS
from gateway.buffer.core.fence import START as FENCE_START
from gateway.buffer.core.ledger import (
    DEFAULT_CLASS,
    U64,
    Compacted,
    fifo_device,
    fifo_level,
    level_fifo,
    raw_fifo,
)
from gateway.buffer.core.summary import Ladder, read_stats, summarise
from gateway.buffer.fiforead import MAX_DECODED_BYTES
from gateway.buffer.replica import ReplicaGapError
from gateway.buffer.sealing import PENDING_MAX_BYTES
from gateway.buffer.store import (
    DEFAULT_LANE,
    DEFAULT_LATEST_SERIES,
    FENCE_BUDGET_SHARE,
    FENCE_MAX_BYTES,
    Buffer,
)
from gateway.errors import CapacityError, StorageError
from gateway.points.model import Reading
from gateway.points.record import pack
from gateway.replication import snapshot
from tests.points import unpack
from tests.unit.buffer.checks import assert_counts_match, reading, window_stats
from tests.unit.buffer.faults import Env, Fault, Faults

if TYPE_CHECKING:
    from collections.abc import Iterator

# The last: longer than ingest takes (a buffer written before that limit may hold one), so that
# its FIFOs' states need keys longer than LMDB's and so do its series' last values.
DEVICES = ("a", "b", "c", "d" + "\U0001f321" * 149 + "xxx")
# Devices seen once in a while: enough of them that idle entries and the last-value table
# weigh on a small buffer's pages.
POOL_SIZE = 600
KEY_BYTES = 12
DROPPING = Lane(policy=Policy.DROP_OLDEST)
# Readings are 2 ms apart in reading time (whole microseconds, as raw readings are): a 1 s
# step summarises up to 500 readings; runs of the model span a few seconds.
TS_STEP_NS = 2_000_000
LADDER = Ladder((1_000_000_000, 2_000_000_000, 4_000_000_000))
COMPACTING = Lane(policy=Policy.COMPACT, steps_ns=LADDER.steps_ns)
COARSEST = LADDER.step(LADDER.levels)
# Sizes of the string field of single big readings: from the smallest record to hundreds of KiB.
BIG_SIZES = st.sampled_from([0, 1, 100, 3_000, 40_000])
# How a crash treats deliveries and drops: False, those since the last checkpoint come back;
# True, only those since the last group commit that wrote a journal record (the journal
# records them with its next record).
DELIVERIES_IN_JOURNAL = True

SEAL_READINGS, SEAL_RECORDS = 24, 6

# (extra fields, length of their string values, length of an extra tag's value): packed
# readings from about 25 to about 400 bytes.
SHAPES = st.tuples(st.integers(0, 12), st.integers(0, 24), st.integers(0, 30))
DEVICE = st.sampled_from(DEVICES)
# The intake holding the redelivery fence in the model.
HOLDER = "intake"
FAULT_WRITES = st.one_of(st.none(), st.integers(0, 12))
ERRORS = st.sampled_from([lmdb.Error, lmdb.MapFullError])


def pool_device(i: int) -> str:
    return f"dev-{i % POOL_SIZE:03d}"


@contextlib.contextmanager
def sealing() -> Iterator[None]:
    """Every checkpoint in the block seals the journal."""
    saved = checkpoint.SEAL_RECORDS
    checkpoint.SEAL_RECORDS = 0
    try:
        yield
    finally:
        checkpoint.SEAL_RECORDS = saved


class _Errors(logging.Handler):
    """ERROR records of the buffer: a start-up that had to repair the accounting logs one."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class BufferMachine(RuleBasedStateMachine):
    """Each rule acts on the real buffer and on a dict of deques; they must always agree."""

    CAPACITY: ClassVar[int] = 1 << 20
    LATEST_SERIES: ClassVar[int] = DEFAULT_LATEST_SERIES
    # The most devices one `append_many` touches.
    MANY: ClassVar[int] = 60
    DECODED_CACHE_BYTES: ClassVar[int] = MAX_DECODED_BYTES
    SEAL_PENDING_BYTES: ClassVar[int] = PENDING_MAX_BYTES

    def __init__(self) -> None:
        super().__init__()
        self.path = Path(tempfile.mkdtemp(prefix="buffer-model-"))
        # Small enough that runs seal the journal often; checkpoints only when a rule asks,
        # a journal seals, a dead letter moves, the map fills or the buffer closes.
        self.saved = (
            checkpoint.SEAL_READINGS,
            checkpoint.SEAL_RECORDS,
            checkpoint.CHECKPOINT_INTERVAL_S,
        )
        checkpoint.SEAL_READINGS, checkpoint.SEAL_RECORDS = SEAL_READINGS, SEAL_RECORDS
        checkpoint.CHECKPOINT_INTERVAL_S = 1e9
        self.errors = _Errors()
        logging.getLogger("gateway.buffer").addHandler(self.errors)
        self.model: defaultdict[str, deque[bytes]] = defaultdict(deque)
        # Readings taken out and not yet saved, by device, oldest first.
        self.unsaved: defaultdict[str, list[bytes]] = defaultdict(list)
        # Readings taken out before a checkpoint that failed part of the way: saved or not,
        # depending on which of its transactions failed; a crash shows which.
        self.unsure: defaultdict[str, list[bytes]] = defaultdict(list)
        # Backlog leases: device -> (first sequence, readings from the head).
        self.leased: dict[str, tuple[int, int]] = {}
        # Live leases: device -> (first sequence, readings from the live stream's cursor).
        self.live_leased: dict[str, tuple[int, int]] = {}
        # Split devices (a live-first drain): how many of their oldest readings are backlog.
        self.backlog: dict[str, int] = {}
        # Split summary FIFOs whose live read stopped at a summary not newer than their
        # backlog: the record it stopped at (held while it is the first of the live stream).
        self.live_held: dict[str, bytes] = {}
        self.clock = 0
        # Devices a step changed: the invariant reads these back whole.
        self.touched: set[str] = set()
        # Every record's place in the order of appends (readings, then summaries), so that
        # a crash puts what it brings back where it was.
        self.order: dict[tuple[str, bytes], int] = {}
        # Readings ever appended, by device; records taken out (delivered, dropped) and not
        # brought back by a crash, by FIFO; whether a compaction or a crash ran since the
        # summaries were last checked.
        self.appended: defaultdict[str, list[bytes]] = defaultdict(list)
        self.out: defaultdict[str, Counter[bytes]] = defaultdict(Counter)
        self.compacted = False
        self._open()

    def _open(self) -> None:
        self.errors.records.clear()
        self.buffer = Buffer(
            self.path,
            self.CAPACITY,
            latest_series=self.LATEST_SERIES,
            decoded_cache_bytes=self.DECODED_CACHE_BYTES,
            seal_pending_bytes=self.SEAL_PENDING_BYTES,
            redelivery_fence=True,
        )
        # The fence as far as the model knows it: the raw readings of each admission since the
        # open (what the last run committed is held too, but which of its records the journal
        # still had is the buffer's to know), those a broken connection held, and the holders.
        self.recent: deque[tuple[set[tuple[str, bytes]], int]] = deque(maxlen=RECENT_RECORDS)
        self.fenced: set[tuple[str, bytes]] = set()
        self.holders = {FENCE_START}
        self.fence_bytes = min(self.buffer.budget_bytes // FENCE_BUDGET_SHARE, FENCE_MAX_BYTES)
        assert not self.errors.records, "the accounting on disk was wrong: " + "; ".join(
            r.getMessage() for r in self.errors.records
        )
        self.faults = Faults(self.buffer)
        self.checkpoints_seen = self.buffer.checkpoints
        self.leased, self.live_leased, self.backlog = {}, {}, {}
        self.live_held = {}
        self.touched = set(self.model)

    def teardown(self) -> None:
        logging.getLogger("gateway.buffer").removeHandler(self.errors)
        with contextlib.suppress(StorageError):
            self.buffer.close()
        shutil.rmtree(self.path)
        checkpoint.SEAL_READINGS, checkpoint.SEAL_RECORDS, checkpoint.CHECKPOINT_INTERVAL_S = (
            self.saved
        )

    # The model's bookkeeping.

    def _readings(self, devices: list[str], shape: tuple[int, int, int]) -> list[tuple[str, bytes]]:
        extra, length, tag = shape
        items = []
        for device in devices:
            self.clock += 1
            tags = (("device", device), ("site", "s" * tag)) if tag else (("device", device),)
            fields = (
                ("v", self.clock),
                ("w", self.clock / 4),
                *((f"f{i}", "x" * length) for i in range(extra)),
            )
            ts = self.clock * TS_STEP_NS
            items.append((device, pack(Reading(device, "m", tags, fields, ts))))
        return items

    def _add(self, fifo: str, value: bytes) -> None:
        """A record appended to a FIFO, in the model."""
        self.model[fifo].append(value)
        self.order[fifo, value] = len(self.order)
        self.touched.add(fifo)

    def _dropped_run(self, device: str, lost: int) -> int:
        """Where in the model the `lost` readings a drop took lie: one run, nothing else gone."""
        queue, left = list(self.model[device]), self.buffer.readings_of(device)
        start = next(
            (at for at, (was, now) in enumerate(zip(queue, left, strict=False)) if was != now),
            len(left),
        )
        assert queue[:start] + queue[start + lost :] == left, f"{device}: not one run dropped"
        return start

    def _take_out(self, device: str, start: int, count: int) -> None:
        queue = self.model[device]
        taken = [queue[start + i] for i in range(count)]
        for _ in range(count):
            del queue[start]
        self.unsaved[device].extend(taken)
        self.out[device].update(taken)
        self.touched.add(device)

    def _took_backlog(self, device: str, count: int) -> None:
        if device in self.backlog:
            self.backlog[device] -= count
            if self.backlog[device] <= 0:
                del self.backlog[device]
                self.live_held.pop(device, None)
                # The split is over: a live batch in flight is now the FIFO's oldest readings,
                # leased like a batch read from the head.
                if device in self.live_leased:
                    self.leased[device] = self.live_leased.pop(device)

    def _after(self) -> None:
        """Forget the unsaved readings once a checkpoint was written."""
        if self.buffer.checkpoints != self.checkpoints_seen:
            self.checkpoints_seen = self.buffer.checkpoints
            self.unsaved.clear()
            self.unsure.clear()

    def _committed(self, stored: int) -> None:
        """A group commit that wrote a journal record; it saves deliveries and drops too."""
        if DELIVERIES_IN_JOURNAL and stored:
            self.unsaved.clear()
            self.unsure.clear()

    def _failed_checkpoint(self) -> None:
        """After a checkpoint failed: what it was to save may or may not be saved."""
        self._after()
        for device, taken in self.unsaved.items():
            self.unsure[device].extend(taken)
        self.unsaved.clear()

    def _restore(self, taken_out: dict[str, list[bytes]]) -> None:
        for device, taken in taken_out.items():
            self.out[device].subtract(taken)
            self.model[device] = deque(
                sorted([*taken, *self.model[device]], key=lambda v: self.order[device, v])
            )
        self.compacted = True

    def _is_leased(self, device: str) -> bool:
        return device in self.leased or device in self.live_leased

    def _buffered(self) -> list[str]:
        return sorted(d for d, q in self.model.items() if q)

    def _pick(self, data: st.DataObject, *, free: bool) -> str | None:
        """A device holding readings (without a lease in flight if `free`), if any."""
        found = [d for d in self._buffered() if not (free and self._is_leased(d))]
        return data.draw(st.sampled_from(found)) if found else None

    def _append(self, items: list[tuple[str, bytes]], *, refusable: bool) -> None:
        before = self.buffer.totals().readings
        try:
            self.buffer.append(items)
        except CapacityError:
            assert refusable or before, "an empty buffer refused a few readings"
            return
        for device, value in items:
            self._add(device, value)
            self.appended[device].append(value)
        self._fence_admitted(items)
        self._committed(len(items))
        self._after()

    # Appends.

    @rule(devices=st.lists(DEVICE, min_size=1, max_size=24), shape=SHAPES)
    def append(self, devices: list[str], shape: tuple[int, int, int]) -> None:
        """One group commit of readings from several devices."""
        self._append(self._readings(devices, shape), refusable=False)

    @rule(start=st.integers(0, POOL_SIZE - 1), count=st.integers(1, 300), shape=SHAPES)
    def append_many(self, start: int, count: int, shape: tuple[int, int, int]) -> None:
        """One group commit of readings of many devices; the page guard may refuse it whole."""
        devices = [pool_device(start + i) for i in range(min(count, self.MANY))]
        self._append(self._readings(devices, shape), refusable=True)

    # The flusher: reads, releases, deliveries.

    @rule(data=st.data(), n=st.integers(0, 30))
    def read(self, data: st.DataObject, n: int) -> None:
        """Reading returns the oldest n in order, removes nothing and leases them."""
        device = self._pick(data, free=True)
        if device is None:
            return
        spans = self.buffer.read([(device, n)])
        got = [v for s in spans for v in s.values]
        assert got == list(self.model[device])[: len(got)]
        reachable = self.backlog.get(device, len(self.model[device]))
        assert len(got) == min(n, reachable) or self.buffer.devices()[device].gap_end
        if got:
            self.leased[device] = (spans[0].first_seq, len(got))

    @precondition(lambda self: self.leased)
    @rule(data=st.data(), n=st.integers(1, 10))
    def reread(self, data: st.DataObject, n: int) -> None:
        """A write failed and the batch size shrank: release, then read fewer from the head."""
        device = data.draw(st.sampled_from(sorted(self.leased)))
        _, count = self.leased.pop(device)
        self.buffer.release([device])
        spans = self.buffer.read([(device, min(n, count - 1))])
        got = [v for s in spans for v in s.values]
        assert got == list(self.model[device])[: min(n, count - 1)]
        if got:
            self.leased[device] = (spans[0].first_seq, len(got))

    @precondition(lambda self: self.leased or self.live_leased)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        """A write failed: the batch's leases end and its readings stay (a shorter re-read next)."""
        device = data.draw(st.sampled_from(sorted({*self.leased, *self.live_leased})))
        self.buffer.release([device])
        self.leased.pop(device, None)
        self.live_leased.pop(device, None)

    @precondition(lambda self: self.leased)
    @rule(data=st.data(), dead=st.booleans())
    def finish(self, data: st.DataObject, dead: bool) -> None:
        """A batch in flight is delivered (or dead-lettered): exactly its readings leave."""
        device = data.draw(st.sampled_from(sorted(self.leased)))
        first, count = self.leased.pop(device)
        self._delete(device, first, count, dead=dead)

    @rule(data=st.data(), n=st.integers(1, 10), dead=st.booleans())
    def deliver(self, data: st.DataObject, n: int, dead: bool) -> None:
        """A read delivered (or dead-lettered) at once leaves exactly its readings."""
        device = self._pick(data, free=True)
        if device is None:
            return
        spans = self.buffer.read([(device, n)])
        if not spans:
            return
        self._delete(device, spans[0].first_seq, len(spans[0].values), dead=dead)

    def _delete(self, device: str, first: int, count: int, *, dead: bool) -> None:
        """Delete a delivered (dead-lettered) run from the head."""
        lines = [(device, "HTTP 400", "m v=1i 1")] if dead else []
        try:
            assert self.buffer.delete([(device, first, count)], lines) == count
        except CapacityError:
            # No page left for the dead letters: nothing was deleted, the batch is still held.
            assert dead, "a delete without dead letters needs no room"
            self.leased[device] = (first, count)
            return
        self._take_out(device, 0, count)
        self._took_backlog(device, count)
        self._after()

    # Live-first drains.

    @rule()
    def split(self) -> None:
        """A live-first drain begins: what is appended from now on goes ahead of the backlog."""
        gaps = {d for d, s in self.buffer.devices().items() if s.gap_end > s.gap_start}
        self.buffer.begin_live_first()
        for device, queue in self.model.items():
            if queue and device not in self.backlog and device not in gaps:
                self.backlog[device] = len(queue)

    def _read_live(self, device: str, n: int) -> tuple[int, list[bytes]]:
        spans = self.buffer.read_live([(device, n)])
        if device not in self.backlog:
            assert spans == []
            return 0, []
        queue, first = list(self.model[device]), self.backlog[device]
        got = [v for s in spans for v in s.values]
        if fifo_level(device):
            # Summaries appended after the split stand for old readings: a live read stops
            # at the first not newer than the backlog, until the backlog is delivered.
            assert got == queue[first : first + len(got)]
            if len(got) < n and first + len(got) < len(queue):
                self.live_held[device] = queue[first + len(got)]
        else:
            assert got == queue[first : first + n]
        return (spans[0].first_seq if spans else 0), got

    @rule(data=st.data(), n=st.integers(1, 10))
    def read_live(self, data: st.DataObject, n: int) -> None:
        """A live batch goes in flight: the oldest readings after the split, leased."""
        device = self._pick(data, free=True)
        if device is None:
            return
        first, got = self._read_live(device, n)
        if got:
            self.live_leased[device] = (first, len(got))

    @precondition(lambda self: self.live_leased)
    @rule(data=st.data())
    def finish_live(self, data: st.DataObject) -> None:
        """A live batch in flight is delivered, whether or not its split has ended since."""
        device = data.draw(st.sampled_from(sorted(self.live_leased)))
        first, count = self.live_leased.pop(device)
        assert self.buffer.delete([(device, first, count)]) == count
        self._take_out(device, self.backlog.get(device, 0), count)
        self._after()

    @rule(data=st.data(), n=st.integers(1, 10))
    def deliver_live(self, data: st.DataObject, n: int) -> None:
        """A live batch delivered at once: taken out of the FIFO's middle."""
        device = self._pick(data, free=True)
        if device is None:
            return
        first, got = self._read_live(device, n)
        if got:
            assert self.buffer.delete([(device, first, len(got))]) == len(got)
            self._take_out(device, self.backlog[device], len(got))
        self._after()

    # Admission near capacity.

    @rule(data=st.data(), shape=SHAPES, extra=st.integers(0, 2000))
    def over_share(self, data: st.DataObject, shape: tuple[int, int, int], extra: int) -> None:
        """A reading past its device's share drops about `extra` bytes more of the device's
        oldest readings not in flight (behind a lease, if it has one)."""
        device = self._pick(data, free=False)
        if device is None or fifo_level(device):
            return  # readings are admitted to raw FIFOs only
        held = self.buffer.devices()[device].nbytes
        budget = 4 * self.buffer.totals().nbytes + 1000  # far from the watermark
        share = max(held - extra, 0) / budget or 1e-9
        rules = Rules(budget_bytes=budget, device_share=share, default_lane=DROPPING)
        self._admit_dropping(self._readings([device], shape), rules)

    @rule(devices=st.lists(DEVICE, min_size=1, max_size=6), shape=SHAPES, slack=st.integers(0, 400))
    def over_budget(self, devices: list[str], shape: tuple[int, int, int], slack: int) -> None:
        """Readings past the budget drop the oldest readings not in flight, largest device first."""
        budget = max(1, self.buffer.totals().nbytes + slack)  # full but for `slack` bytes
        rules = Rules(budget_bytes=budget, default_lane=DROPPING)
        self._admit_dropping(self._readings(devices, shape), rules)

    def _admit_dropping(self, items: list[tuple[str, bytes]], rules: Rules) -> None:
        before = {d: s.readings for d, s in self.buffer.devices().items()}
        try:
            admitted = self.buffer.admit([(d, v, DROPPING) for d, v in items], rules)
        except CapacityError:
            # Nothing left to drop (all in flight, or held behind a split); nothing changed.
            assert {d: s.readings for d, s in self.buffer.devices().items() if s.readings} == {
                d: n for d, n in before.items() if n
            }
            return
        assert admitted.stored + sum(admitted.refused.values()) == len(items)
        placed: defaultdict[str, int] = defaultdict(int)
        for device, _, _, value in admitted.placed:
            self._add(device, value)
            self.appended[device].append(value)
            placed[device] += 1
        if admitted.placed:
            self._fence_admitted([(device, value) for device, _, _, value in admitted.placed])
        after = {d: s.readings for d, s in self.buffer.devices().items()}
        dropped = {}
        for device in {*before, *after, *placed}:
            lost = before.get(device, 0) + placed[device] - after.get(device, 0)
            assert lost >= 0, f"{device} gained readings"
            if lost:
                dropped[device] = lost
        assert sum(dropped.values()) == sum(admitted.dropped.values())
        for device, lost in dropped.items():
            # Leased readings stay (a live batch whose split has ended among them). The run
            # taken starts after them: right after, or where it widens the FIFO's gap.
            protected = self.leased.get(device, (0, 0))[1]
            limit = self.backlog.get(device, len(self.model[device]))
            start = self._dropped_run(device, lost)
            assert start >= protected, f"{device}: a drop reached readings in flight"
            assert start + lost <= limit, f"{device}: a drop reached its live stream"
            self._take_out(device, start, lost)
            self._took_backlog(device, lost)
        self._committed(admitted.stored)
        self._after()

    # Compaction.

    @rule(devices=st.lists(DEVICE, min_size=1, max_size=4), count=st.integers(1, 200))
    def append_series(self, devices: list[str], count: int) -> None:
        """A long group commit of small readings of one series per device: what summarises."""
        self._append(self._readings(devices * count, (0, 0, 0)), refusable=True)

    @rule(data=st.data(), device=st.sampled_from(DEVICES), size=BIG_SIZES)
    def append_big(self, data: st.DataObject, device: str, size: int) -> None:
        """One reading of any size alone in its group commit; the page guard may refuse it."""
        del data
        self.clock += 1
        fields = (("v", self.clock), ("s", "y" * size))
        value = pack(Reading(device, "m", (("device", device),), fields, self.clock * TS_STEP_NS))
        self._append([(device, value)], refusable=True)

    def _compact(self, fault: Fault | None = None) -> None:
        """One forced compaction step, checked against the model.

        With `fault` armed, its journal transaction fails and nothing changes, unless the
        step committed in a transaction the fault did not name (one not worth it came first).
        """
        number = self.buffer.notes(compaction.NEXT_NOTE).get(compaction.NEXT_NOTE)
        no = U64.unpack(number)[0] if number else 0
        before = {d: s.readings for d, s in self.buffer.devices().items()}
        rules = Rules(budget_bytes=1 << 40, default_lane=COMPACTING)
        if fault is not None:
            self.faults.arm(fault)
        try:
            done = self.buffer.compact(rules, force=True)
        except CapacityError:
            done = None  # the page guard refused its journal record
        except StorageError:
            assert fault is not None
            done = None
        finally:
            self.faults.disarm()
        after = {d: s.readings for d, s in self.buffer.devices().items()}
        if done is None or done == Compacted():  # nothing done, or candidates looked for
            assert {d: n for d, n in after.items() if n} == {d: n for d, n in before.items() if n}
            return
        step = self.buffer.last_compaction
        assert step is not None
        source = step.source
        run = self._compacted_run(source, before[source] - after.get(source, 0))
        must_stay = self.fenced.union(*(items for items, _ in self.recent))
        assert not {(source, value) for value in run} & must_stay, (
            f"{source}: a compaction took a reading the broker may deliver again"
        )
        level = fifo_level(source)
        if step.level == 0:
            # The coarsest level's oldest summaries: dropped, as the accounting counts them.
            assert level == LADDER.levels
            assert done.dropped_summaries == Counter({level: len(run)})
            self.out[source].update(run)
        else:
            assert step.level == level + 1
            made = summarise(run, level=step.level, ladder=LADDER, compaction_no=no)
            assert done.appended == len(made)
            assert done.made == Counter({step.level: len(made)})
            if level:
                assert done.resummarised == Counter({level: len(run)})
            else:
                assert done.summarised == Counter({DEFAULT_CLASS: len(run)})
            target = level_fifo(source, step.level)
            for value in made:
                self._add(target, value)
            assert after[target] - before.get(target, 0) == len(made)
        assert self.buffer.notes(compaction.NEXT_NOTE)[compaction.NEXT_NOTE] == U64.pack(no + 1)
        self.compacted = True
        self._committed(1)
        self._after()

    def _compacted_run(self, source: str, lost: int) -> list[bytes]:
        """Take out of the model the run a compaction step took: one run after the lease."""
        assert lost > 0
        protected = self.leased.get(source, (0, 0))[1]
        limit = self.backlog.get(source, len(self.model[source]))
        start = self._dropped_run(source, lost)
        assert start >= protected, f"{source}: a compaction reached readings in flight"
        assert start + lost <= limit, f"{source}: a compaction reached its live stream"
        run = list(self.model[source])[start : start + lost]
        for _ in range(lost):
            del self.model[source][start]
        self.touched.add(source)
        self._took_backlog(source, lost)
        return run

    @rule(steps=st.integers(1, 20))
    def compact(self, steps: int) -> None:
        """Compaction steps: each a run summarised one level up, or the coarsest dropped."""
        for _ in range(steps):
            self._compact()

    @rule(txn=st.integers(0, 1), write=FAULT_WRITES, error=ERRORS)
    def fail_compact(self, txn: int, write: int | None, error: type) -> None:
        """A compaction step whose journal transaction fails changes nothing."""
        self._compact(Fault("journal", txn, write, error))

    # The redelivery fence.

    def _fence_admitted(self, items: list[tuple[str, bytes]]) -> None:
        """An admission record: its newest readings within the fence's bytes (one at least),
        and older records while they fit too."""
        left, start = self.fence_bytes - len(items[-1][1]), len(items) - 1
        while start > 0 and left >= len(items[start - 1][1]):
            start -= 1
            left -= len(items[start][1])
        record = set(items[start:])
        self.recent.append((record, sum(len(v) for v in {v for _, v in record})))
        while len(self.recent) > 1 and sum(n for _, n in self.recent) > self.fence_bytes:
            self.recent.popleft()

    @rule()
    def connection_changes(self) -> None:
        """An intake's connection begins or ends: the newest admissions are held."""
        self.buffer.hold_fence(HOLDER)
        self.holders.add(HOLDER)
        self.fenced.update(*(items for items, _ in self.recent))

    @rule()
    def fresh_message(self) -> None:
        """A message sent for the first time: the broker redelivered all it will."""
        assert self.buffer.lift_fence(HOLDER) == bool(self.holders)
        self.holders -= {HOLDER, FENCE_START}
        self.fenced.clear()

    @precondition(lambda self: self.recent)
    @rule()
    def redeliver(self) -> None:
        """The last admission's messages come again: every reading is known as a copy."""
        last = sorted(v for _, v in self.recent[-1][0])
        assert all(self.buffer.redelivered(last))

    # Checkpoints, restarts, failures.

    @rule()
    def save(self) -> None:
        """A checkpoint succeeds, also after any failure before it."""
        self.buffer.checkpoint()
        self._after()

    @rule()
    def seal(self) -> None:
        """A checkpoint that seals the journal."""
        with sealing():
            self.buffer.checkpoint()
        self._after()

    @rule()
    def reopen(self) -> None:
        """Closing and reopening (what a restart sees) changes nothing."""
        self.buffer.close()
        self._after()
        self._open()

    @rule()
    def crash(self) -> None:
        """kill -9: what was taken out and not yet saved is buffered again."""
        self.buffer.abandon()
        self._restore(self.unsaved)
        self.unsaved.clear()
        unsure, self.unsure = self.unsure, defaultdict(list)
        self._open()
        if self.buffer.totals().readings > sum(len(q) for q in self.model.values()):
            self._restore(unsure)  # the checkpoint that failed had not saved them
            self.touched = set(self.model)

    @rule(
        devices=st.lists(DEVICE, min_size=1, max_size=8),
        shape=SHAPES,
        write=FAULT_WRITES,
        error=ERRORS,
    )
    def fail_group_commit(
        self, devices: list[str], shape: tuple[int, int, int], write: int | None, error: type
    ) -> None:
        """A group commit whose journal transaction fails stores nothing and says so."""
        items = self._readings(devices, shape)
        self.faults.arm(Fault("journal", 0, write, error))
        with pytest.raises(StorageError):
            self.buffer.append(items)
        self.faults.disarm()  # the page guard may have refused it before the fault fired
        self._after()

    @rule(write=FAULT_WRITES, error=ERRORS, seal=st.booleans())
    def fail_checkpoint(self, write: int | None, error: type, seal: bool) -> None:
        """A checkpoint (a seal) whose store transaction fails loses nothing."""
        self.faults.arm(Fault("store", 0, write, error))
        # It raises (948f866 does), unless what failed was a part it may retry later.
        with sealing() if seal else contextlib.nullcontext(), contextlib.suppress(StorageError):
            self.buffer.checkpoint()
        self.faults.disarm()
        self._failed_checkpoint()

    @rule(write=FAULT_WRITES, error=ERRORS, seal=st.booleans())
    def fail_journal_deletion(self, write: int | None, error: type, seal: bool) -> None:
        """A checkpoint (a seal) whose journal deletion fails after the store committed stands."""
        self.faults.arm(Fault("journal", 0, write, error))
        with sealing() if seal else contextlib.nullcontext(), contextlib.suppress(StorageError):
            self.buffer.checkpoint()
        self.faults.disarm()  # a checkpoint with nothing to delete may not open the journal
        self._failed_checkpoint()

    @rule(data=st.data(), n=st.integers(1, 10), write=FAULT_WRITES, error=ERRORS)
    def fail_dead_letters(
        self, data: st.DataObject, n: int, write: int | None, error: type
    ) -> None:
        """A delete with dead letters whose checkpoint fails deletes and stores nothing."""
        device = self._pick(data, free=True)
        if device is None:
            return
        spans = self.buffer.read([(device, n)])
        if not spans:
            return
        first, count = spans[0].first_seq, len(spans[0].values)
        dead_before = self.buffer.dead_letter_count()
        self.faults.arm(Fault("store", 0, write, error))
        try:
            self.buffer.delete([(device, first, count)], [(device, "HTTP 400", "m v=1i 1")])
        except StorageError:
            # Nothing moved: the batch is still buffered and in flight (released or retried).
            assert self.buffer.dead_letter_count() == dead_before
            self.leased[device] = (first, count)
        else:
            # The transaction that failed was one the delete could do without.
            assert self.buffer.dead_letter_count() == dead_before + 1
            self._take_out(device, 0, count)
            self._took_backlog(device, count)
        self.faults.disarm()
        self._failed_checkpoint()

    # What must always hold.

    @invariant()
    def accounting_matches_model(self) -> None:
        totals = self.buffer.totals()
        assert totals.readings == sum(len(q) for q in self.model.values())
        assert totals.nbytes == sum(KEY_BYTES + len(v) for q in self.model.values() for v in q)
        assert totals.devices == sum(1 for q in self.model.values() if q)
        assert self.buffer.backlog() == {
            d: self.backlog.get(d, len(q)) for d, q in self.model.items() if q
        }
        assert self.buffer.live_backlog() == {
            d: len(self.model[d]) - n
            for d, n in self.backlog.items()
            if len(self.model[d]) > n and self.live_held.get(d) != self.model[d][n]
        }
        for device, state in self.buffer.devices().items():
            queue = self.model[device]
            oldest = unpack(device, queue[0]).ts_ns if queue else 0
            assert state.oldest_ts_ns == oldest
        for device in self.touched:
            assert self.buffer.readings_of(device) == list(self.model[device]), device
        self.touched.clear()

    @invariant()
    def summaries_are_exact(self) -> None:
        # Per device, series, coarsest window and numeric field: what was appended, against
        # the records buffered and taken out (raw readings and summaries together).
        if not self.compacted:
            return
        self.compacted = False
        kept: defaultdict[str, list[tuple[int, bytes]]] = defaultdict(list)
        for fifo, queue in self.model.items():
            kept[raw_fifo(fifo)] += [(fifo_level(fifo), v) for v in queue]
        for fifo, taken in self.out.items():
            kept[raw_fifo(fifo)] += [(fifo_level(fifo), v) for v in +taken for _ in range(taken[v])]
        for device, records in kept.items():
            if not any(level for level, _ in records):
                continue
            raw = [(0, v) for v in self.appended[device]]
            assert window_stats(records, COARSEST) == window_stats(raw, COARSEST), device
            places = [read_stats(v, level)[:2] for level, v in records]
            assert len(places) == len(set(places)), f"{device}: a series and timestamp twice"
            assert all(ts % 8 == level for (_, ts), (level, _) in zip(places, records, strict=True))

    @invariant()
    def level_counts_agree(self) -> None:
        counts: Counter[int] = Counter()
        for fifo, queue in self.model.items():
            counts[fifo_level(fifo)] += len(queue)
        found = self.buffer.level_counts()
        assert {level: n for level, (n, _) in found.items() if n} == +counts
        assert sum(b for _, b in found.values()) == self.buffer.totals().nbytes

    @invariant()
    def device_list_agrees(self) -> None:
        # The read API's pages: every device holding readings is listed once, in name order,
        # with the model's count (its summaries included), and the miss cache may not call it
        # unknown.
        buffered = sorted({fifo_device(f) for f in self._buffered()})
        index = self.buffer.device_index()
        assert index.names == sorted(set(index.names))
        assert set(buffered) <= set(index.names)
        accounting, _ = self.buffer.device_details(buffered, index)
        held: Counter[str] = Counter()
        for fifo, queue in self.model.items():
            held[fifo_device(fifo)] += len(queue)
        assert {d: sum(s.readings for s in accounting[d]) for d in buffered} == {
            d: held[d] for d in buffered
        }
        assert all(self.buffer.holds(d, [DEFAULT_CLASS]) for d in buffered if self.model[d])

    @invariant()
    def full_scan_agrees(self) -> None:
        assert self.buffer.verify().is_consistent


class TinyBufferMachine(BufferMachine):
    """The same in a buffer of the smallest capacity allowed (1 MiB), where a few hundred
    devices of big readings fill the page guard."""

    CAPACITY = 1 << 20
    LATEST_SERIES = 300
    MANY = 600


class TightMemoryBufferMachine(BufferMachine):
    """The same with memory bounds smaller than most chunks and readings: a decoded chunk is
    mostly not kept (each read decompresses it again), and a seal writes its runs after
    almost every reading."""

    DECODED_CACHE_BYTES = 2 << 10
    SEAL_PENDING_BYTES = 200


SINKS = ("near", "far")


class TwoSinkMachine(RuleBasedStateMachine):
    """Two sinks reading one buffer at their own pace (gateway/buffer/cursors.py).

    The model keeps every reading ever appended per device (its index is its sequence), the
    readings drops took, and each sink's position: the first index it has not had. What the
    buffer holds is every reading from the lowest position on that no drop took; a sink reads
    from its own position. Each sink's deliveries, skips and the drops must together account
    for every reading appended (none lost, whatever the order of reads, drops, skips, failed
    checkpoints and crashes). A crash may bring back what was taken out since it was last
    saved, and move a sink's position back to its last checkpoint, never ahead of where it was.
    """

    CAPACITY: ClassVar[int] = 1 << 20

    def __init__(self) -> None:
        super().__init__()
        self.path = Path(tempfile.mkdtemp(prefix="sink-model-"))
        self.saved_interval = checkpoint.CHECKPOINT_INTERVAL_S
        checkpoint.CHECKPOINT_INTERVAL_S = 1e9
        self.clock = 0
        self.appended: defaultdict[str, list[bytes]] = defaultdict(list)
        self.dropped: defaultdict[str, set[int]] = defaultdict(set)
        self.pos: dict[str, defaultdict[str, int]] = {s: defaultdict(int) for s in SINKS}
        self.leased: dict[str, dict[str, tuple[int, int]]] = {s: {} for s in SINKS}
        self.had: dict[str, defaultdict[str, set[int]]] = {s: defaultdict(set) for s in SINKS}
        self.skipped: Counter[str] = Counter()
        # Positions as the last checkpoint saved them (None: a checkpoint failed since).
        self.saved: dict[str, dict[str, int]] | None = {s: {} for s in SINKS}
        self._open()

    def _open(self) -> None:
        self.buffer = Buffer(self.path, self.CAPACITY, sinks=SINKS)
        self.faults = Faults(self.buffer)
        self.checkpoints_seen = self.buffer.checkpoints
        self.skipped_base = self.buffer.sink_skipped()

    def teardown(self) -> None:
        with contextlib.suppress(StorageError):
            self.buffer.close()
        shutil.rmtree(self.path)
        checkpoint.CHECKPOINT_INTERVAL_S = self.saved_interval

    def _lowest(self, device: str) -> int:
        return min(self.pos[s][device] for s in SINKS)

    def _buffered(self, device: str, start: int | None = None) -> list[int]:
        low = self._lowest(device) if start is None else max(start, self._lowest(device))
        gone = self.dropped[device]
        return [i for i in range(low, len(self.appended[device])) if i not in gone]

    def _effective(self, device: str, at: int) -> int:
        """Where a sink at `at` reads next: past readings a drop took."""
        waiting = self._buffered(device, at)
        return waiting[0] if waiting else len(self.appended[device])

    def _after(self) -> None:
        if self.buffer.checkpoints != self.checkpoints_seen:
            self.checkpoints_seen = self.buffer.checkpoints
            self.saved = {s: dict(self.pos[s]) for s in SINKS}

    def _pick(self, data: st.DataObject, sink: str) -> str | None:
        found = sorted(d for d in self.appended if d not in self.leased[sink] and self._buffered(d))
        return data.draw(st.sampled_from(found)) if found else None

    def _append_fields(self, devices: list[str], extra: int, length: int) -> None:
        """One group commit of a reading per device; the guard may refuse it whole."""
        items = []
        for device in devices:
            self.clock += 1
            fields = (("v", self.clock), *((f"f{i}", "x" * length) for i in range(extra)))
            reading = Reading(device, "m", (("device", device),), fields, self.clock * TS_STEP_NS)
            items.append((device, pack(reading)))
        try:
            self.buffer.append(items)
        except CapacityError:
            return
        for device, value in items:
            self.appended[device].append(value)
        self._after()

    @rule(devices=st.lists(DEVICE, min_size=1, max_size=12), shape=SHAPES)
    def append(self, devices: list[str], shape: tuple[int, int, int]) -> None:
        extra, length, _ = shape
        self._append_fields(devices, extra, length)

    @rule(start=st.integers(0, POOL_SIZE - 1), count=st.integers(1, 300), size=BIG_SIZES)
    def append_many(self, start: int, count: int, size: int) -> None:
        """Many devices in one commit, or one reading of any size."""
        devices = [pool_device(start + i) for i in range(count)] if size < 3_000 else ["a"]
        self._append_fields(devices, 1, size)

    @rule(
        data=st.data(),
        sink=st.sampled_from(SINKS),
        n=st.integers(1, 10),
        write=FAULT_WRITES,
        error=ERRORS,
    )
    def fail_dead_letters(
        self, data: st.DataObject, sink: str, n: int, write: int | None, error: type
    ) -> None:
        """A sink's delete whose dead letters' checkpoint fails moves nothing, for any sink."""
        device = self._pick(data, sink)
        if device is None:
            return
        spans = self.buffer.read([(device, n)], sink=sink)
        if not spans:
            return
        first, count = spans[0].first_seq, len(spans[0].values)
        self.leased[sink][device] = (first, count)
        before = (self.buffer.totals(), self.buffer.dead_letter_count())
        self.faults.arm(Fault("store", 0, write, error))
        try:
            self.buffer.delete([(device, first, count)], [(device, "HTTP 400", "m v=1i 1")], sink)
        except StorageError:
            assert (self.buffer.totals(), self.buffer.dead_letter_count()) == before
        else:
            del self.leased[sink][device]
            self.had[sink][device].update(range(first, first + count))
            self.pos[sink][device] = first + count
        self.faults.disarm()
        self.saved = None
        self.checkpoints_seen = self.buffer.checkpoints

    @rule(devices=st.lists(DEVICE, min_size=1, max_size=8), write=FAULT_WRITES, error=ERRORS)
    def fail_group_commit(self, devices: list[str], write: int | None, error: type) -> None:
        """A group commit whose journal transaction fails stores nothing; positions stay."""
        before = {s: self.buffer.sink_backlog(s) for s in SINKS}
        self.clock += 1
        items = [
            (d, pack(Reading(d, "m", (("device", d),), (("v", self.clock),), self.clock)))
            for d in devices
        ]
        self.faults.arm(Fault("journal", 0, write, error))
        with pytest.raises(StorageError):
            self.buffer.append(items)
        self.faults.disarm()  # the page guard may have refused it before the fault fired
        assert {s: self.buffer.sink_backlog(s) for s in SINKS} == before

    @rule(data=st.data(), sink=st.sampled_from(SINKS), n=st.integers(1, 30))
    def read(self, data: st.DataObject, sink: str, n: int) -> None:
        """A sink reads from its own position: its next run, one run of sequences."""
        device = self._pick(data, sink)
        if device is None:
            return
        spans = self.buffer.read([(device, n)], sink=sink)
        waiting = self._buffered(device, self.pos[sink][device])
        if not waiting:
            assert not spans
            return
        run = [waiting[0]]
        for i in waiting[1:n]:
            if i != run[-1] + 1:
                break
            run.append(i)
        assert len(spans) == 1
        assert spans[0].first_seq == run[0]
        assert list(spans[0].values) == [self.appended[device][i] for i in run]
        self.leased[sink][device] = (run[0], len(run))

    @precondition(lambda self: any(self.leased.values()))
    @rule(data=st.data(), dead=st.booleans())
    def confirm(self, data: st.DataObject, dead: bool) -> None:
        """A sink's batch was delivered (or dead-lettered): its position moves past it."""
        sink = data.draw(st.sampled_from([s for s in SINKS if self.leased[s]]))
        device = data.draw(st.sampled_from(sorted(self.leased[sink])))
        first, count = self.leased[sink][device]
        lines = [(device, "HTTP 400", "m v=1i 1")] if dead else []
        try:
            assert self.buffer.delete([(device, first, count)], lines, sink=sink) == count
        except CapacityError:
            assert dead
            return
        # Dead letters are stored, with a checkpoint, before the position moves.
        self._after()
        del self.leased[sink][device]
        self.had[sink][device].update(range(first, first + count))
        self.pos[sink][device] = first + count
        self._after()

    @precondition(lambda self: any(self.leased.values()))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        sink = data.draw(st.sampled_from([s for s in SINKS if self.leased[s]]))
        device = data.draw(st.sampled_from(sorted(self.leased[sink])))
        self.buffer.release([device], sink=sink)
        del self.leased[sink][device]

    @rule(data=st.data(), sink=st.sampled_from(SINKS), n=st.integers(1, 10))
    def wrong_delete(self, data: st.DataObject, sink: str, n: int) -> None:
        """A delete that is not what the sink read changes nothing."""
        device = self._pick(data, sink)
        if device is None:
            return
        with pytest.raises(StorageError):
            self.buffer.delete([(device, self.pos[sink][device], n)], sink=sink)

    @rule(
        sink=st.sampled_from(SINKS),
        fraction=st.sampled_from([0.01, 0.3, 1.0]),
        parts=st.integers(1, 3),
    )
    def skip_share(self, sink: str, fraction: float, parts: int) -> None:
        """A sink over its share gives up its oldest readings, for itself alone, counted; the
        targets are taken in parts, as the flusher takes them between turns of the loop."""
        expected = 0
        moved = {}
        for device in self.appended:
            if device in self.leased[sink]:
                continue
            waiting = self._buffered(device, self.pos[sink][device])
            take = min(len(waiting), max(1, math.ceil(len(waiting) * fraction))) if waiting else 0
            if take:
                expected += take
                moved[device] = waiting[take - 1] + 1
        targets = list(self.buffer.share_targets(sink, fraction).items())
        taken = 0
        for i in range(parts):
            part = dict(targets[i::parts])
            taken += self.buffer.skip_to(sink, part)
            for device in part:
                self.pos[sink][device] = moved[device]
            # A part's skip may checkpoint: what it saves is the parts taken so far.
            self._after()
        assert taken == expected
        assert self.buffer.skip_to(sink, dict(targets)) == 0, "a target given up twice"
        assert sorted(d for d, _ in targets) == sorted(moved)
        self.skipped[sink] += expected
        self._after()

    @rule(devices=st.lists(DEVICE, min_size=1, max_size=6), slack=st.integers(0, 400))
    def over_budget(self, devices: list[str], slack: int) -> None:
        """Past the budget, drops take readings no sink has in flight, whoever had them."""
        budget = max(1, self.buffer.totals().nbytes + slack)
        rules = Rules(budget_bytes=budget, default_lane=DROPPING)
        items = []
        for device in devices:
            self.clock += 1
            reading = Reading(
                device, "m", (("device", device),), (("v", self.clock),), self.clock * TS_STEP_NS
            )
            items.append((device, pack(reading), DROPPING))
        before = {d: self.buffer.readings_of(d) for d in self.appended}
        try:
            admitted = self.buffer.admit(items, rules)
        except CapacityError:
            return
        for device, _, _, value in admitted.placed:
            self.appended[device].append(value)
            before.setdefault(device, []).append(value)
        lost = 0
        for device, was in before.items():
            now = set(self.buffer.readings_of(device))
            index = {v: i for i, v in enumerate(self.appended[device])}
            for value in was:
                if value not in now:
                    i = index[value]
                    for sink in SINKS:
                        first, count = self.leased[sink].get(device, (0, 0))
                        assert not first <= i < first + count, f"{device}: dropped in flight"
                    self.dropped[device].add(i)
                    lost += 1
        assert lost == sum(admitted.dropped.values())
        self._after()

    @rule()
    def save(self) -> None:
        self.buffer.checkpoint()
        self._after()

    @rule(write=FAULT_WRITES, error=ERRORS)
    def fail_checkpoint(self, write: int | None, error: type) -> None:
        self.faults.arm(Fault("store", 0, write, error))
        with contextlib.suppress(StorageError):
            self.buffer.checkpoint()
        self.faults.disarm()
        self.saved = None
        self.checkpoints_seen = self.buffer.checkpoints

    @rule()
    def reopen(self) -> None:
        """A clean restart keeps every sink's position."""
        self.buffer.close()
        self._after()
        self.leased = {s: {} for s in SINKS}
        self._open()

    @rule()
    def crash(self) -> None:
        """kill -9: nothing a sink has not had is lost; a position may move back, not ahead."""
        self.buffer.abandon()
        self._open()
        self.leased = {s: {} for s in SINKS}
        for device, values in self.appended.items():
            index = {v: i for i, v in enumerate(values)}
            held = [index[v] for v in self.buffer.readings_of(device)]
            assert held == sorted(held)
            assert set(self._buffered(device)) <= set(held), f"{device}: lost in a crash"
            was = {s: self._effective(device, self.pos[s][device]) for s in SINKS}
            # Drops and deliveries not saved come back.
            self.dropped[device] -= set(held)
            backlog = self.buffer.sink_backlog
            for sink in SINKS:
                n = backlog(sink).get(device, 0)
                at = held[len(held) - n] if n else len(values)
                assert at <= was[sink], f"{sink} moved ahead in {device}"
                if self.saved is not None:
                    assert at >= min(self.saved[sink].get(device, 0), self.pos[sink][device])
                self.pos[sink][device] = at
        self.saved = None

    @invariant()
    def agrees(self) -> None:
        total = 0
        for device, values in self.appended.items():
            buffered = self._buffered(device)
            total += len(buffered)
            assert self.buffer.readings_of(device) == [values[i] for i in buffered], device
        assert self.buffer.totals().readings == total
        for sink in SINKS:
            expected = {
                d: n for d in self.appended if (n := len(self._buffered(d, self.pos[sink][d])))
            }
            assert self.buffer.sink_backlog(sink) == expected, sink
            skipped = self.buffer.sink_skipped()[sink] - self.skipped_base[sink]
            assert skipped <= self.skipped[sink]
        assert self.buffer.verify().is_consistent

    @invariant()
    def nothing_lost(self) -> None:
        """Each reading reached each sink, or waits for it, or was dropped or skipped."""
        for sink in SINKS:
            for device, values in self.appended.items():
                pending = set(self._buffered(device, self.pos[sink][device]))
                accounted = self.had[sink][device] | self.dropped[device] | pending
                missing = set(range(len(values))) - accounted
                # What is neither had nor dropped nor waiting was skipped, and counted.
                assert len(missing) <= self.skipped[sink], (sink, device)


class ReplicaMachine(RuleBasedStateMachine):
    """A standby's replica following a primary's buffer (gateway/buffer/replica.py).

    The primary takes group commits (some dropping the oldest readings of a small buffer,
    readings of every size, many devices), deliveries, compaction steps, checkpoints that
    forget idle FIFOs, seals and crashes; what it ships (its journal records, and the states
    of FIFOs moved between them) travels on a wire that may lose, repeat and reorder
    messages, and the standby applies it, fails to write, crashes, and catches up as the
    primary answers a hello: from its journal (which keeps what the standby has not
    confirmed) or, once that was sealed away or the replica is full, with a snapshot, and
    then every FIFO's state. Whenever the wire is empty and the standby caught up, every FIFO
    of the standby holds a suffix of the primary's readings that keeps all of them not yet
    delivered: nothing the primary holds undelivered is missing from the replica, nothing
    is in it that the primary no longer holds undelivered. Its accounting matches what it
    reads, and so does the buffer a takeover opens on its directory.
    """

    CAPACITY: ClassVar[int] = 1 << 20
    POOL: ClassVar[tuple[str, ...]] = tuple(f"p{i}" for i in range(30))

    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="replica-model-"))
        self.saved = (
            checkpoint.CHECKPOINT_INTERVAL_S,
            checkpoint.SEAL_READINGS,
            checkpoint.PRUNE_FLOOR_ENTRIES,
        )
        checkpoint.CHECKPOINT_INTERVAL_S = 1e9
        checkpoint.SEAL_READINGS = SEAL_READINGS
        # Idle FIFOs are forgotten at a handful, not at 10,000.
        checkpoint.PRUNE_FLOOR_ENTRIES = 4
        self.clock = 0
        self.wire: deque[tuple[str, int, bytes]] = deque()
        self.delivered: set[bytes] = set()
        self.primary = self._open_primary()
        self.standby = self._open_standby()
        self.catch_up()

    def _open_primary(self) -> Buffer:
        buffer = Buffer(self.root / "primary", self.CAPACITY)
        buffer.ship_moves()
        buffer.on_journal = lambda record, value: self.wire.append(("record", record, value))
        return buffer

    def _open_standby(self) -> Buffer:
        buffer = Buffer(self.root / "standby", self.CAPACITY)
        buffer.follow()
        self.faults = Faults(buffer)
        return buffer

    def teardown(self) -> None:
        for buffer in (self.primary, self.standby):
            with contextlib.suppress(StorageError):
                buffer.close()
        shutil.rmtree(self.root)
        (
            checkpoint.CHECKPOINT_INTERVAL_S,
            checkpoint.SEAL_READINGS,
            checkpoint.PRUNE_FLOOR_ENTRIES,
        ) = self.saved

    def _admit(self, items: list[tuple[str, bytes, Lane]], *, dropping: bool) -> None:
        budget = self.primary.budget_bytes
        with contextlib.suppress(CapacityError):
            self.primary.admit(items, Rules(budget_bytes=budget // 8 if dropping else budget))

    @rule(
        devices=st.lists(DEVICE, min_size=1, max_size=8),
        size=st.sampled_from([10, 60, 400, 3_000]),
        dropping=st.booleans(),
    )
    def append(self, devices: list[str], size: int, *, dropping: bool) -> None:
        lane = DROPPING if dropping else DEFAULT_LANE
        items = []
        for device in devices:
            self.clock += 1
            items.append((device, reading(device, self.clock, size), lane))
        self._admit(items, dropping=dropping)

    @rule(n=st.integers(1, 30), dropping=st.booleans())
    def append_many(self, n: int, *, dropping: bool) -> None:
        """Many devices in one commit, new ones among them."""
        lane = DROPPING if dropping else DEFAULT_LANE
        items = []
        for i in range(n):
            self.clock += 1
            device = self.POOL[(self.clock * 7 + i) % len(self.POOL)]
            items.append((device, reading(device, self.clock, 60), lane))
        self._admit(items, dropping=dropping)

    @rule(device=DEVICE, size=BIG_SIZES)
    def append_big(self, device: str, size: int) -> None:
        self.clock += 1
        fields = (("v", self.clock), ("s", "y" * size))
        value = pack(Reading(device, "m", (("d", device),), fields, self.clock * TS_STEP_NS))
        self._admit([(device, value, DEFAULT_LANE)], dropping=False)

    @rule(steps=st.integers(1, 4))
    def compact(self, steps: int) -> None:
        """Summaries replace the oldest readings: a device's FIFO may empty and be forgotten."""
        rules = Rules(budget_bytes=1 << 40, default_lane=COMPACTING)
        for _ in range(steps):
            with contextlib.suppress(CapacityError):
                self.primary.compact(rules, force=True)

    @rule(device=st.one_of(DEVICE, st.sampled_from(POOL)), n=st.integers(1, 10))
    def deliver(self, device: str, n: int) -> None:
        for span in self.primary.read([(device, n)]):
            self.primary.delete([(span.device, span.first_seq, len(span.values))])
            self.delivered.update(span.values)

    @rule()
    def forget_idle(self) -> None:
        """A checkpoint that forgets the primary's idle FIFOs (no journal record says so)."""
        saved = checkpoint.CHECKPOINT_INTERVAL_S
        checkpoint.CHECKPOINT_INTERVAL_S = 0.0
        try:
            self.primary.checkpoint()
            self.primary.maintain()
        finally:
            checkpoint.CHECKPOINT_INTERVAL_S = saved

    @rule()
    def ship_states(self) -> None:
        moved = self.primary.unshipped_states()
        if moved is not None:
            self.wire.append(("states", *moved))

    @rule()
    def lose_a_message(self) -> None:
        if self.wire:
            self.wire.popleft()

    @rule()
    def repeat_and_reorder(self) -> None:
        """The wire's second message first (a gap), then the first twice."""
        if len(self.wire) < 2:
            return
        first, second = self.wire[0], self.wire[1]
        for message in (second, first, first):
            with contextlib.suppress(ReplicaGapError, CapacityError):
                self._apply(*message)
        self.wire.popleft()

    @rule(seal=st.booleans())
    def checkpoint_primary(self, *, seal: bool) -> None:
        with sealing() if seal else contextlib.nullcontext():
            self.primary.checkpoint()

    @rule(seal=st.booleans())
    def checkpoint_standby(self, *, seal: bool) -> None:
        with sealing() if seal else contextlib.nullcontext():
            self.standby.checkpoint()

    @rule(where=st.sampled_from(["journal", "store"]), write=FAULT_WRITES, error=ERRORS)
    def apply_fails(self, where: Env, write: int | None, error: type[lmdb.Error]) -> None:
        """A failed write of the standby changes nothing; the message is applied again."""
        if not self.wire:
            return
        before = self.standby.last_record()
        self.faults.arm(Fault(where, 0, write, error))
        try:
            self._apply(*self.wire[0])
        except (StorageError, CapacityError):
            assert self.standby.last_record() == before
            return
        except ReplicaGapError:
            return
        finally:
            self.faults.disarm()
        self.wire.popleft()

    @rule()
    def crash_primary(self) -> None:
        self.primary.abandon()
        self.primary = self._open_primary()

    @rule()
    def crash_standby(self) -> None:
        self.standby.abandon()
        self.standby = self._open_standby()

    def _apply(self, kind: str, after: int, value: bytes) -> None:
        if kind == "record":
            self.standby.apply_replicated(after, value)
        else:
            self.standby.apply_replicated_states(after, value)

    @rule()
    def deliver_wire(self) -> None:
        """Apply what the wire holds; a gap or a full replica asks for a catch-up."""
        while self.wire:
            try:
                self._apply(*self.wire.popleft())
            except (ReplicaGapError, CapacityError):
                self.catch_up()
                return
        self.primary.keep_journal_from(self.standby.last_record() + 1)

    def catch_up(self) -> None:
        """As the primary answers a hello: its journal from there, or a snapshot; then every
        FIFO's state. A replica too full for a record asks for a snapshot."""
        self.wire.clear()
        for _ in range(3):
            records = self.primary.journal_since(self.standby.last_record() + 1, 1 << 30)
            if records is None:
                self._snapshot()
                continue
            try:
                for number, value in records:
                    assert self.standby.apply_replicated(number, value)
            except CapacityError:
                self._snapshot()
                continue
            break
        else:
            raise AssertionError("no catch-up in three rounds")
        every = self.primary.unshipped_states(every=True)
        if every is not None:
            self.standby.apply_replicated_states(*every, complete=True)
        self.primary.keep_journal_from(self.standby.last_record() + 1)

    def _snapshot(self) -> None:
        copy = self.root / "copy"
        last = snapshot.write(self.primary, copy)
        self.standby.close()
        snapshot.install(copy, self.root / "standby")
        self.standby = self._open_standby()
        assert self.standby.last_record() == last

    def _assert_holds_what_is_undelivered(self, replica: Buffer) -> None:
        primary = self.primary.devices()
        for fifo, state in primary.items():
            if not state.readings:
                continue
            mine = self.primary.readings_of(fifo)
            theirs = replica.readings_of(fifo)
            assert mine[len(mine) - len(theirs) :] == theirs, fifo
            assert not [v for v in mine[: len(mine) - len(theirs)] if v not in self.delivered], fifo
        for fifo, state in replica.devices().items():
            if state.readings:
                assert fifo in primary, fifo
                assert primary[fifo].readings, fifo
        assert_counts_match(replica)

    @rule()
    def take_over(self) -> None:
        """What a takeover opens: the replica as an ordinary buffer, its content as followed."""
        self.deliver_wire()
        self.catch_up()
        self.standby.close()
        reopened = Buffer(self.root / "standby", self.CAPACITY)
        try:
            self._assert_holds_what_is_undelivered(reopened)
        finally:
            reopened.close()
        self.standby = self._open_standby()

    @rule()
    def replica_holds_what_is_undelivered(self) -> None:
        """Checked when the standby catches up, not after every step: it may lag for long."""
        self.deliver_wire()
        self.catch_up()
        self._assert_holds_what_is_undelivered(self.standby)

    def teardown_check(self) -> None:
        self.replica_holds_what_is_undelivered()


# Each example opens LMDB environments and walks every changed FIFO after each step: these
# counts keep both machines near half a minute together on a 2-core box. Without the explain
# phase (it traces every line), a failure shrinks within the test timeout.
PHASES = [Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink]
TestBufferModel = BufferMachine.TestCase
TestBufferModel.settings = settings(
    max_examples=150, stateful_step_count=50, deadline=None, phases=PHASES
)
TestTightMemoryBufferModel = TightMemoryBufferMachine.TestCase
TestTightMemoryBufferModel.settings = settings(
    max_examples=40, stateful_step_count=40, deadline=None, phases=PHASES
)
TestTinyBufferModel = TinyBufferMachine.TestCase
TestTinyBufferModel.settings = settings(
    max_examples=30, stateful_step_count=30, deadline=None, phases=PHASES
)
TestTwoSinkModel = TwoSinkMachine.TestCase
TestTwoSinkModel.settings = settings(
    max_examples=80, stateful_step_count=40, deadline=None, phases=PHASES
)
TestReplicaModel = ReplicaMachine.TestCase
TestReplicaModel.settings = settings(
    max_examples=120, stateful_step_count=40, deadline=None, phases=PHASES
)
