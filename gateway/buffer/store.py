"""The durable buffer: one FIFO of readings per device in LMDB, with exact accounting.

On-disk format, two LMDB environments in the buffer's directory (gateway/buffer/environment.py):
- the journal (`journal.mdb`): key `>Q` record number -> one group commit's readings, a segment
  per device, in one compressed chunk (gateway/buffer/core/chunk.py). Record numbers grow, so
  every commit appends at the right edge of the environment's only B-tree;
- the store (`data.mdb`): `sealed`: key `>IIQ` (seal number, FIFO number, first sequence) -> a
  compressed run of one device's readings; `devices`: FIFO name (UTF-8;
  gateway/buffer/core/ledger.py) -> `>IQQQQqQQI` (number, head, next sequence, readings, bytes,
  oldest timestamp ns, gap start, gap end, oldest seal holding its chunks); `meta`: `totals` ->
  `>QQ`, `next_device` and `next_seal` -> `>I`, `applied` and `sealed_through` -> `>Q` journal
  records, `format`; `dead`: the dead letters (gateway/buffer/deadletters.py);
  and the last-value table (gateway/buffer/latest.py).

Why this layout. A group commit of the former layout (a key per reading, ordered by device, and
the accounting rewritten in every commit) dirtied a leaf page per device it touched, plus pages
for the accounting and the last values: 2.9 KB written per reading at 100 devices and 13 KB at
1,000, for 63-byte readings. LMDB rewrites every page a transaction touches and the path above
it, so the only way down is to touch fewer pages: a commit now writes one chunk at the right edge
of a B-tree of its own and nothing else; the accounting is kept in memory and checkpointed every
two seconds (gateway/buffer/checkpoint.py), which a restart makes exact again by replaying the
journal after the checkpoint. Prototyped with 200 readings per commit and sync on: a journal in
its own environment wrote 127 B per reading at 100 devices and 139 B at 1,000; the same as a
named database beside the store's, 138 B and 171 B (each commit also rewrites the page naming
the databases). A commit still costs LMDB about 25 KB (the leaf, the free-page tree, the meta
page and their fsyncs), so readings per commit decide the rest: the intake closes a group commit
at a reading target or at `commit_window_ms`, whichever comes first (gateway/ingest/intake.py).
Readings of one commit compress about four-fold together, and sealed runs of one device further.
As built (`gateway bench --scenario ingest --rate 5000 --devices N`, database down, medians of 3
runs against the former layout in the same session): 131 B written per reading at 100 devices
(was 15,541 B) and 185 B at 1,000 (was 28,584 B); 38 million readings per GiB of capacity (was
6 million). Decompressed chunks are kept in a bounded cache (gateway/buffer/fiforead.py), so a
flush decompresses each chunk once: draining 200,000 readings ran at 153,000 points/s into
VictoriaMetrics against 143,000 before (one run each).

Capacity (gateway/buffer/capacity.py): the LMDB maps are the configured capacity; readings count
their uncompressed bytes against a budget that assumes the compression measured on line
protocol, and a guard on the pages in use refuses a commit before the disk budget is full.
Admission (gateway/buffer/core/admission.py) decides near the budget, inside the change that
stores, so drops and stores take effect together.

A live-first drain (gateway/buffer/live.py) splits FIFOs at their tails: reads of the backlog
stop at the split, live reads start there, and a delivered live run becomes the FIFO's one gap,
so the layout and its recovery stay as they are; the split itself lives in memory only.

Several sinks (gateway/buffer/cursors.py) share this one copy of each reading. A sink's position
in a FIFO is the first sequence it has not had; only positions ahead of the FIFO's head are kept,
in memory, and the head moves to the lowest of them, so a reading leaves once every sink had it.
Positions reach the store as notes of the next checkpoint (a key per sink and FIFO that moved,
`>IQ` FIFO number and position): a sink's deliveries add a few bytes per FIFO and checkpoint
interval, none per reading, and the head's moves are carried by the journal as ever. After a
kill -9, a sink resumes from its checkpointed position or the recovered head, whichever is
later: it may be sent again what it confirmed in the last interval, never less. A live-first
split is for one sink only; with several, drains keep acceptance order.

Invariants: a reading is acknowledged only after the journal commit holding it (durable for the
sync mode). A reading leaves only by `delete`, which the flusher calls after the database
confirmed (or after moving it to `dead`), or by a drop that admission decided and counted;
readings the flusher has read are leased and never dropped (gateway/buffer/reads.py). Every
method blocks; the service calls them in its event loop's thread (see gateway/service/lifecycle.py
for why not in a worker thread), so each does a bounded amount of work: a seal runs in steps
(gateway/buffer/sealing.py) and a checkpoint writes only what changed. Checksums guard every
chunk; a damaged one is set aside and counted (gateway/buffer/damage.py), never a reason to stop.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, Self, TypeVar

import lmdb

from gateway.buffer import (
    capacity,
    checkpoint,
    compaction,
    cursors,
    damage,
    deadletters,
    environment,
    integrity,
    live,
)
from gateway.buffer.admitter import Admitter
from gateway.buffer.checkpointer import Checkpointer, unreachable
from gateway.buffer.core.admission import Lane, Rules
from gateway.buffer.core.chunk import encode_journal, journal_contents
from gateway.buffer.core.damage import JOURNAL_KIND
from gateway.buffer.core.fence import NOTE as FENCE_NOTE
from gateway.buffer.core.fence import START as FENCE_START
from gateway.buffer.core.fence import Fence
from gateway.buffer.core.ledger import (
    LEVEL_SEPARATOR,
    U64,
    Admitted,
    Compacted,
    DeadLetter,
    DeviceState,
    LedgerChange,
    Span,
    Totals,
    fifo_device,
    fifo_level,
    fifo_name,
)
from gateway.buffer.core.verify import Report, is_plausible
from gateway.buffer.cursors import Cursors
from gateway.buffer.fiforead import JOURNAL_PREFIX, MAX_DECODED_BYTES, DecodedChunks, Walking
from gateway.buffer.reads import Reads
from gateway.buffer.replica import Applier, ReplicaGapError, shipped_header
from gateway.buffer.sealing import PENDING_MAX_BYTES
from gateway.buffer.transaction import FifoTransaction, pack_states
from gateway.config.sections import ApiSettings, SyncMode
from gateway.errors import CapacityError, DamagedChunkError, StorageError

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
    from pathlib import Path

    from gateway.buffer.latest import Latest
    from gateway.buffer.live import LiveMark

logger = logging.getLogger(__name__)
# Without a configuration (tools, tests), the read API's default.
DEFAULT_LATEST_SERIES: int = ApiSettings.model_fields["latest_series"].default
DEFAULT_LANE = Lane()
# The most bytes of readings the redelivery fence keeps (and pins against compaction): a few
# commits' worth at any rate, and at most an eighth of the readings budget. A sixteenth was less
# than one commit of 2,000 readings on a 1 MiB buffer: the copies of a commit whose PUBACKs a
# kill -9 lost were then stored again and its first copies summarised (the compact fault test
# under load). A quarter, against a low watermark of 0.4, left so little room that the coarsest
# summaries were dropped (the quick long-outage bench, about 1 run in 4).
FENCE_MAX_BYTES = 2 << 20
FENCE_BUDGET_SHARE = 8


@dataclass(frozen=True, slots=True)
class DeviceIndex:
    """Every device with a FIFO or a latest value, by name; the FIFOs of device classes."""

    names: list[str]
    classed: dict[str, list[str]]


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _surviving_damage(
    method: Callable[Concatenate[Buffer, _P], _R],
) -> Callable[Concatenate[Buffer, _P], _R]:
    """Run `method` again after setting aside each damaged chunk it met (gateway/buffer/damage.py).

    Only for methods that change nothing before the walk that raises (their transaction is
    aborted with it): they run again as if the chunk had never been there.
    """

    def surviving(self: Buffer, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        while True:
            try:
                return method(self, *args, **kwargs)
            except DamagedChunkError as exc:
                with self._lock:
                    self._set_aside(exc)

    return functools.update_wrapper(surviving, method)  # type: ignore[return-value]


class Buffer:
    """Per-device FIFOs in two LMDB environments; see the module docstring."""

    # What the last confirmation or skip of a sink took out of a shared buffer, by level.
    last_removed: Counter[int]
    # Chunks set aside as damaged since opening: a sink's lease read before one may count
    # readings it took (gateway/buffer/cursors.py).
    _damage_seen: int = 0
    # Failures after an admission's journal commit since opening (`_after_commit`), and the
    # count at the first of the failures running now, if any.
    after_commit_failures: int = 0
    _after_commit_failing: int | None = None
    # Told (record number, chunk) of each journal record committed: a primary ships them to its
    # standby (gateway/replication/primary.py). Called after the ledger adopted the record.
    on_journal: Callable[[int, bytes], None] | None = None
    # FIFOs moved since a standby was last told (None: no standby follows).
    _unshipped: set[str] | None = None
    # Set while the buffer is a standby's replica (`follow`).
    _applier: Applier | None = None

    def __init__(
        self,
        path: Path,
        capacity_bytes: int,
        sync: SyncMode = "commit",
        *,
        readonly: bool = False,
        latest_series: int = DEFAULT_LATEST_SERIES,
        decoded_cache_bytes: int = MAX_DECODED_BYTES,
        seal_pending_bytes: int = PENDING_MAX_BYTES,
        redelivery_fence: bool = False,
        sinks: Sequence[str] = (),
    ) -> None:
        """Open (creating if needed) the buffer under `path`, its files bounded by `capacity_bytes`.

        `latest_series`: the most series whose latest reading is kept (gateway/buffer/latest.py).
        `decoded_cache_bytes`: decompressed chunks kept between reads (gateway/buffer/fiforead.py);
        `seal_pending_bytes`: readings a seal holds before writing (gateway/buffer/sealing.py).
        `redelivery_fence`: its readings come from messages acknowledged after their commit,
        which a broker may deliver again: compaction leaves the newest raw
        (gateway/buffer/core/fence.py).
        `sinks`: with two or more names, each reads at its own pace and a reading goes once all
        had it (gateway/buffer/cursors.py); reads and deletes then name their sink.

        Raises:
            StorageError: when LMDB cannot open it.
        """
        self.capacity_bytes = capacity_bytes
        self.budget_bytes = capacity.readings_budget(capacity_bytes)
        self.path = path
        self.readonly = readonly
        self._closed = False
        opened = environment.open_environment(
            path, capacity_bytes, sync, readonly=readonly, latest_series=latest_series
        )
        self._owner, self._env, self._journal = opened.owner, opened.env, opened.journal
        self._tables, self.latest = opened.tables, opened.latest
        rewritten: tuple[Any, ...] = (self._tables.devices, self._tables.meta)
        if self._tables.notes is not None:
            rewritten += (self._tables.notes,)
        if self.latest is not None:
            rewritten += self.latest.databases
        self._decoded = DecodedChunks(decoded_cache_bytes)
        self._guard = capacity.PageGuard(
            self._env,
            (self._tables.sealed, self._tables.dead, *rewritten),
            rewritten,
            capacity_bytes,
            self._journal,
        )
        self._plain_rules = Rules(budget_bytes=self.budget_bytes)
        self._lock = threading.Lock()
        # Held by a reader in a worker thread (device_index) and by close: py-lmdb lets go of
        # the interpreter lock while it reads, so closing the map under a reader would crash.
        self._thread_reads = threading.Lock()
        # Leases of what the flusher has read, and live-first splits (gateway/buffer/reads.py).
        self._reads = Reads()
        # The accounting, for the flusher's scheduling and admission; it adopts a change only
        # after the journal commit holding it, and the checkpoint writes it to the store.
        # Notes committed to the journal and not yet written to the store by a checkpoint.
        self._unwritten_notes: dict[bytes, bytes]
        found = checkpoint.Recovered()
        # What compaction leaves raw while the broker may deliver it again
        # (gateway/buffer/core/fence.py); the last run's newest records are fenced from start-up.
        self._fence = (
            Fence(max_bytes=min(self.budget_bytes // FENCE_BUDGET_SHARE, FENCE_MAX_BYTES))
            if redelivery_fence
            else Fence(records=0)
        )
        self._ledger, self._index, self._unwritten_notes = checkpoint.recover(
            self._env, self._journal, self._tables, self.latest, found, fence=self._fence
        )
        self._fence.hold(FENCE_START)
        self._damage = damage.Damage()
        self._note_recovered_damage(found)
        # FIFOs whose readings were delivered or dropped since the last journal chunk: the next
        # chunk carries their states (gateway/buffer/transaction.py `finish`).
        self._moved: set[str] = set()
        self._last_pruned = time.monotonic()
        self._checkpointer = Checkpointer(
            self._env,
            self._journal,
            tables=self._tables,
            latest=self.latest,
            guard=self._guard,
            capacity_bytes=capacity_bytes,
            sync=sync,
            decoded=self._decoded,
            damage=self._damage,
            seal_pending_bytes=seal_pending_bytes,
        )
        if redelivery_fence:
            # A seal takes the newest records out of the journal: each checkpoint notes the fence.
            self._checkpointer.extra_notes = lambda: {FENCE_NOTE: self._fence.packed()}
        if not readonly:
            self._checkpointer.discard_unfinished_seal(self._ledger)
        if not readonly and (
            found.needs_scan
            or not is_plausible(self._ledger.states, (self._ledger.readings, self._ledger.nbytes))
            or unreachable(self._ledger, self._index)
        ):
            before = {fifo: state.readings for fifo, state in self._ledger.states.items()}
            report = self.repair()
            logger.error(
                "buffer accounting did not match its data (%s); rebuilt it from a full scan",
                "; ".join(report.problems[:5]),
            )
            if found.needs_scan:
                states = self._ledger.states
                self._damage.count(0, {f: n - states[f].readings for f, n in before.items()})
        if not readonly and self._damage.pending:
            self._checkpoint_if_due()
        if not readonly:
            self._trim_metadata()
        self._cursors = self._open_cursors(sinks)
        number = self.notes(compaction.NEXT_NOTE).get(compaction.NEXT_NOTE)
        self._compactor = compaction.Compactor(U64.unpack(number)[0] if number else 0)
        self._remember_fenced()
        # The last compaction step committed (tests follow what it took).
        self.last_compaction: compaction.Step | None = None

    def _open_cursors(self, sinks: Sequence[str]) -> Cursors | None:
        """The sinks' positions as the last checkpoint left them (none with one sink)."""
        self.last_removed = Counter()
        if len(sinks) < cursors.MIN_SINKS:
            return None
        found = Cursors(sinks)
        found.recover(self.notes(cursors.NOTE_PREFIX), self._ledger.states)
        self._take_cursor_notes(found)
        return found

    @_surviving_damage
    def _remember_fenced(self) -> None:
        """Read back the readings the last run's fence held, so copies of them are recognised.

        Bounded: the limits are those of the newest records, which took at most the fence's
        bytes; the walk stops at twice that whatever the limits say.
        """
        limits = self._fence.held_limits()
        if not limits:
            return
        names = {state.number: fifo for fifo, state in self._ledger.states.items()}
        left = 2 * self._fence.max_bytes
        with self._lock, self._walker() as walker:
            for number, first in limits.items():
                state = self._ledger.states.get(names.get(number, ""))
                if state is None or not state.readings:
                    continue
                found = []
                for _, value in walker.readings(state, first):
                    found.append(value)
                    left -= len(value)
                    if left <= 0:
                        break
                self._fence.remember(found)
                if left <= 0:
                    return

    def _trim_metadata(self) -> None:
        """Evict latest values past a bound lowered since they were kept, as a checkpoint does.

        Now, not at the next change: the page guard may refuse every change while they take
        the room. (Idle FIFOs are forgotten by the first checkpoint due, see `maintain`.)
        """
        if self.latest is None:
            return
        with self._env.begin() as txn:
            if not self.latest.is_over_bound(txn):
                return
        try:
            self._checkpoint()
        except (CapacityError, StorageError) as exc:
            logger.warning("buffer checkpoint at start failed, retrying later: %s", exc)

    def _forget_idle(self) -> None:
        """Forget FIFOs without readings, as `checkpoint.idle_fifos` chooses them."""
        ledger = self._ledger
        keep = self._reads.in_use()
        idle = checkpoint.idle_fifos(ledger, keep, under_pressure=self._guard.under_pressure)
        self._last_pruned = time.monotonic()
        if idle:
            self._adopt(
                LedgerChange(
                    {},
                    idle,
                    set(),
                    ledger.readings,
                    ledger.nbytes,
                    ledger.active,
                    next_device=ledger.next_device,
                )
            )

    def _note_recovered_damage(self, found: checkpoint.Recovered) -> None:
        """Count what recovery found damaged; the next checkpoint writes it aside."""
        for key, raw in found.records:
            self._damage.pending[JOURNAL_KIND + key] = raw
        self._damage.unsettled.update(found.lost)
        if found.records:
            self._damage.count(len(found.records), found.lost)
            logger.error(
                "buffer journal records %s are damaged: set aside, %d readings of %d devices lost",
                ", ".join(key.hex() for key, _ in found.records),
                sum(found.lost.values()),
                len(found.lost),
            )

    def _set_aside(self, exc: DamagedChunkError) -> None:
        """Set a damaged chunk aside and take its readings out of the accounting (lock held)."""
        self._damage_seen += 1
        with self._env.begin() as txn:
            if exc.kind == "sealed":
                raw = txn.get(exc.key, db=self._tables.sealed)
            elif self._journal is not None:
                with self._journal.begin() as jtxn:
                    raw = jtxn.get(exc.key)
            else:
                raw = None
            raw = bytes(raw) if raw is not None else b""
            skipped = self._damage.skipped

            def next_sealed(seal: int, number: int, first: int) -> int | None:
                return damage.next_sealed_first(
                    txn, self._tables.sealed, skipped, (seal, number, first)
                )

            with self._walker() as walker:
                change = damage.set_aside(
                    exc, self._damage, self._ledger, self._index, raw, walker, next_sealed
                )
        self._adopt(change)

    @property
    def on_damaged(self) -> Callable[[int, Counter[tuple[str, str]]], None] | None:
        """Told (chunks, readings by (reason, device class)) of each damaged chunk set aside."""
        return self._damage.on_damaged

    @on_damaged.setter
    def on_damaged(self, callback: Callable[[int, Counter[tuple[str, str]]], None] | None) -> None:
        self._damage.on_damaged = callback

    @property
    def on_damaged_summaries(self) -> Callable[[Counter[int]], None] | None:
        """Told of the summaries lost with each damaged chunk set aside, by level."""
        return self._damage.on_damaged_summaries

    @on_damaged_summaries.setter
    def on_damaged_summaries(self, callback: Callable[[Counter[int]], None] | None) -> None:
        self._damage.on_damaged_summaries = callback

    def damaged(self) -> tuple[int, Counter[tuple[str, str]]]:
        """Damaged chunks set aside since opening, and their raw readings by (reason, class).

        Summaries lost with them are counted apart, by level (`damaged_summaries`).
        """
        with self._lock:
            return self._damage.chunks, Counter(self._damage.by_class)

    def damaged_chunks(self) -> list[str]:
        """Every chunk set aside as damaged: written to the `damaged` table, or pending."""
        found = set(self._damage.pending)
        if self._tables.damaged is not None:
            with self._lock, self._env.begin() as txn:
                cursor = txn.cursor(db=self._tables.damaged)
                found.update(bytes(k) for k in cursor.iternext(keys=True, values=False))
        return [damage.describe(key) for key in sorted(found)]

    @_surviving_damage
    def verify(self, progress: Callable[[int, int, int], None] | None = None) -> Report:
        """Compare the accounting with a full scan of the data.

        `progress` is told after each FIFO: (FIFOs done, FIFOs in all, readings seen so far).
        """
        with self._lock, self._walker() as walker:
            return integrity.verify(walker, self._ledger, self._orphans(), progress)

    @_surviving_damage
    def repair(self, progress: Callable[[int, int, int], None] | None = None) -> Report:
        """Rebuild the accounting from a full scan; returns what was wrong before."""
        with self._lock:
            with self._walker() as walker:
                report = integrity.repair(walker, self._ledger, self._orphans(), progress)
            if not report.is_consistent:
                self._checkpoint()
            return report

    @property
    def checkpoints(self) -> int:
        """Checkpoints written since opening, for tests and tools that follow them."""
        return self._checkpointer.checkpoints

    def _orphans(self) -> set[int]:
        """FIFO numbers with sealed chunks or journal segments but no FIFO."""
        known = self._ledger.numbers
        found = {n for n in self._index.numbers() if n not in known}
        with self._env.begin() as txn:
            found |= integrity.sealed_numbers(txn, self._tables) - known
        return found

    def __enter__(self) -> Self:
        """Use as a context manager that closes the buffer."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close on leaving the block."""
        self.close()

    def close(self) -> None:
        """Checkpoint and close; committed data is already on disk per the sync mode."""
        if self._closed:
            return
        self._closed = True
        try:
            if not self.readonly:
                with self._lock:
                    # A seal under way is given up: a restart removes what it wrote.
                    self._checkpointer.abandon_seal()
                    while True:
                        try:
                            self._checkpoint()
                            break
                        except DamagedChunkError as exc:
                            self._set_aside(exc)
                        except (CapacityError, StorageError) as exc:
                            # The journal holds what was committed: the next start replays it.
                            logger.warning("buffer checkpoint at close failed: %s", exc)
                            break
        finally:
            with self._thread_reads:
                if self._journal is not None:
                    self._journal.close()
                self._env.close()
            self._release()

    def abandon(self) -> None:
        """Close without the checkpoint, as a process killed now would leave the buffer (tests)."""
        self._closed = True
        if self._journal is not None:
            self._journal.close()
        self._env.close()
        self._release()

    @_surviving_damage
    def checkpoint(self) -> None:
        """Write the checkpoint now, and run a seal due or under way to its end.

        Raises:
            CapacityError: the map has no room for it.
            StorageError: any other LMDB failure.
        """
        with self._lock:
            self._checkpoint()
            self._checkpointer.complete_seal(self._ledger, self._index, self._unwritten_notes)

    def _release(self) -> None:
        if self._owner is not None:
            self._owner.close()
            self._owner = None

    def sync(self) -> None:
        """Force committed transactions to disk (sync modes `interval` and `none`).

        The store first: whatever of it is on disk only counts on journal records that a
        checkpoint flushed before committing it (gateway/buffer/checkpointer.py).
        """
        self._env.sync(True)
        if self._journal is not None:
            self._journal.sync(True)

    def append(self, items: Sequence[tuple[str, bytes]]) -> None:
        """Append (FIFO, packed record) pairs in one transaction: all are stored or none.

        Raises:
            CapacityError: the readings budget or the disk cannot take them; nothing was stored.
            StorageError: any other LMDB failure; nothing was stored.
        """
        self.admit([(fifo, value, DEFAULT_LANE) for fifo, value in items], self._plain_rules)

    @_surviving_damage
    def admit(
        self,
        items: Sequence[tuple[str, bytes, Lane]],
        rules: Rules,
        notes: dict[bytes, bytes] | None = None,
    ) -> Admitted:
        """Store (FIFO, packed record, lane) triples in one transaction, as `rules` admit them.

        Readings refused and readings dropped to make room are counted in the result; the
        drops take effect with the stores, so the accounting stays exact. `notes` (key ->
        value) commit in the same transaction; `notes` reads them back.

        Raises:
            CapacityError: a reading was to pause intake (its index is `at_item`), or the disk
                is full; nothing of this call was stored or dropped.
            StorageError: any other LMDB failure; nothing was stored or dropped. Or, once
                committed, the accounting could not take the change: the buffer must be
                reopened, which rebuilds it from the journal.

        Any other exception is raised before the commit: nothing was stored or dropped.
        """
        journal = self._writable_journal()
        with self._lock:
            with (
                self._journal_write_errors(),
                journal.begin(write=True) as txn,
                self._walker(txn) as walker,
            ):
                w = FifoTransaction(self._ledger, walker)
                admitted = Admitter(
                    w, rules, self._reads.leases, self._reads.live_from, self._reads.live_leases
                ).admit(items)
                # Drops of a commit that stored nothing need their record too, or a restart
                # would bring the dropped readings back.
                if admitted.stored or notes or any(admitted.dropped.values()):
                    unsettled = self._damage.unsettled
                    w.finish(txn, list(notes.items()) if notes else (), self._moved, unsettled)
                    self._guard.check(txn)
            # Committed. Nothing from here on may raise out of `admit`: a caller that saw an
            # exception would take the stored readings for unstored ones and store them again.
            self._adopt_committed(w, "change")
            if self._fence.enabled and admitted.placed:
                self._fence.add_placed(admitted.placed)
            if notes:
                self._unwritten_notes.update(notes)
            self._after_commit(w, admitted)
        return admitted

    def _after_commit(self, w: FifoTransaction, admitted: Admitted) -> None:
        """What follows an admission's commit, each step contained: none can undo the commit.

        A failure is counted in `after_commit_failures` and logged once until the steps
        succeed again; a checkpoint that failed stays due and is tried at the next change,
        and the latest values are noted again from the journal at the next start.
        """

        def cache_and_note() -> None:
            if w.written is not None:
                # The chunk's key is never used again, and the seal and the flusher read
                # these records next; decompressing them back would cost a tenth of ingest.
                key, groups, record_bytes = w.written
                self._decoded.put(JOURNAL_PREFIX + key, groups, record_bytes)
            if self.latest is not None and admitted.placed:
                self.latest.note(admitted.placed, time.time_ns())

        failed = False
        for step in (cache_and_note, self._checkpoint_if_due):
            try:
                step()
            except Exception as exc:  # after the commit: contained, counted, logged
                failed = True
                # A seal that failed half way may have cached chunks it never stored.
                self._decoded.clear()
                self.after_commit_failures += 1
                if self._after_commit_failing is None:
                    self._after_commit_failing = self.after_commit_failures
                    logger.exception(
                        "%s after the journal commit (a checkpoint or the latest values); the "
                        "readings are stored, the step is retried with the next change",
                        type(exc).__name__,
                    )
        if not failed and self._after_commit_failing is not None:
            logger.warning(
                "the steps after the journal commit succeed again after %d failures",
                self.after_commit_failures - self._after_commit_failing + 1,
            )
            self._after_commit_failing = None

    def notes(self, prefix: bytes) -> dict[bytes, bytes]:
        """Every note under `prefix`, as the last committed `admit` that wrote it left it."""
        with self._lock, self._env.begin() as txn:
            found = checkpoint.read_notes(txn, self._tables, prefix)
        found.update((k, v) for k, v in self._unwritten_notes.items() if k.startswith(prefix))
        return found

    def _writable_journal(self) -> lmdb.Environment:
        if self._journal is None or self.readonly:
            raise StorageError("the buffer is open read-only")
        return self._journal

    def _walker(
        self,
        journal_txn: lmdb.Transaction | None = None,
        store_txn: lmdb.Transaction | None = None,
    ) -> Walking:
        return Walking(
            self._env,
            self._journal,
            self._tables.sealed,
            self._index,
            self._decoded,
            journal_txn=journal_txn,
            store_txn=store_txn,
            skipped=self._damage.skipped,
        )

    # Replication (gateway/buffer/replica.py): a primary ships, a standby applies.

    def ship_moves(self) -> None:
        """From now on, remember which FIFOs moved between journal records for a standby."""
        with self._lock:
            if self._unshipped is None:
                self._unshipped = set()

    def keep_journal_from(self, record: int | None) -> None:
        """Keep delivered journal records from `record` on until a seal takes them.

        A primary keeps what its standby has not confirmed, so that a standby a little behind
        is caught up from the journal rather than with a snapshot. A seal still takes them:
        the journal stays bounded, and a standby behind a seal gets a snapshot.
        """
        with self._lock:
            self._checkpointer.keep_from = record

    def last_record(self) -> int:
        """The newest journal record committed (applied, on a standby); -1 for none."""
        with self._lock:
            return self._ledger.next_record - 1

    def unshipped_states(self, *, every: bool = False) -> tuple[int, bytes] | None:
        """The states of FIFOs moved since the last call (`every`: of all), as a chunk.

        A chunk of states alone, with the newest record, after which they apply; None if
        there are none.
        """
        with self._lock:
            if self._unshipped is None or not (self._unshipped or every):
                return None
            states = self._ledger.states
            if every:
                # All of them, those a damaged chunk took readings of too: a FIFO missing
                # from the set would be emptied on the standby.
                moved = list(states.values())
            else:
                held = self._damage.unsettled
                moved = [states[f] for f in self._unshipped - held if f in states]
            self._unshipped.clear()
            if not moved and not every:
                return None
            value = encode_journal([], [], (), (), pack_states(moved))
            return self._ledger.next_record - 1, value

    def journal_since(self, first: int, max_bytes: int) -> list[tuple[int, bytes]] | None:
        """Journal records from `first` on, up to about `max_bytes`; None if `first` is gone.

        Gone: sealed and deleted, or never written (ahead of the journal). A standby that
        needs it is sent a snapshot instead (gateway/replication/snapshot.py).
        """
        journal = self._writable_journal()
        found: list[tuple[int, bytes]] = []
        with self._lock:
            if first > self._ledger.next_record:
                return None
            with journal.begin() as txn:
                cursor = txn.cursor()
                if not cursor.set_key(U64.pack(first)):
                    return [] if first == self._ledger.next_record else None
                size = 0
                for key, value in cursor:
                    found.append((U64.unpack(key)[0], bytes(value)))
                    size += len(value)
                    if size >= max_bytes:
                        break
        return found

    def copy_frozen(self, directory: Path, journal_file: Path) -> int:
        """Copy the store and the journal, from read transactions taken at one instant.

        The store goes to `directory` as `data.mdb`, the journal to `journal_file`, compacted.
        Opening the copies is a start after kill -9 at that instant: crash recovery makes it
        exact. Returns the newest journal record the copy holds. Meant for a worker thread:
        it blocks for as long as the copy takes (`_thread_reads` keeps the maps open).

        Raises:
            StorageError: the buffer is closed, or LMDB failed.
        """
        journal = self._writable_journal()
        with self._thread_reads:
            if self._closed:
                raise StorageError("the buffer is closed")
            with self._lock:
                txn = self._env.begin()
                jtxn = journal.begin()
                last = self._ledger.next_record - 1
            try:
                self._env.copy(str(directory), compact=True, txn=txn)
                journal.copy(str(journal_file), compact=True, txn=jtxn)
            except lmdb.Error as exc:
                raise StorageError(f"copying the buffer failed: {exc}") from exc
            finally:
                jtxn.abort()
                txn.abort()
        return last

    def follow(self) -> None:
        """Be a standby's replica: no FIFO is forgotten, since the primary's records name them."""
        with self._lock:
            self._applier = Applier(self._ledger)

    def apply_replicated(self, record: int, value: bytes) -> bool:
        """Store and apply a journal record the primary shipped; False if applied before.

        Raises:
            ReplicaGapError: it does not follow the last record applied; nothing changed.
            ValueError: the record is damaged (or another of chunk.DECODE_ERRORS); nothing
                changed.
            CapacityError, StorageError: as `admit`; nothing changed.
        """
        journal = self._writable_journal()
        with self._lock:
            applier = self._following()
            expected = self._ledger.next_record
            if record < expected:
                return False
            if record > expected:
                raise ReplicaGapError(expected, record)
            header = shipped_header(value, states_only=False)
            _, groups, carried = journal_contents(value)
            change, placed, renamed = applier.change(
                self._ledger, header, groups, carried, numbered=True
            )
            with self._journal_write_errors(), journal.begin(write=True) as txn:
                if not txn.put(U64.pack(record), value, append=True):
                    raise StorageError(f"journal record {record} exists already")
                self._guard.check(txn)
            try:
                self._adopt(change, len(value))
                applier.adopted(renamed)
            except Exception as exc:
                raise StorageError(f"a replicated record could not be accounted: {exc}") from exc
            self._unwritten_notes.update(header.notes)
            if self.latest is not None and placed:
                self.latest.note(placed, time.time_ns())
            self._checkpoint_contained()
            return True

    def apply_replicated_states(self, after: int, value: bytes, *, complete: bool = False) -> bool:
        """Apply states the primary shipped after its record `after`; False if outdated.

        Outdated: a later record applied since carries them if they still hold. `complete`:
        they are every FIFO the primary has (gateway/buffer/replica.py).

        Raises:
            ReplicaGapError: record `after` was not applied yet; nothing changed.
            ValueError: the chunk is damaged; nothing changed.
        """
        with self._lock:
            applier = self._following()
            last = self._ledger.next_record - 1
            if after < last:
                return False
            if after > last:
                raise ReplicaGapError(last + 1, after)
            header = shipped_header(value, states_only=True)
            _, groups, carried = journal_contents(value)
            change, _, renamed = applier.change(
                self._ledger, header, groups, carried, numbered=False, complete=complete
            )
            self._adopt(change)
            applier.adopted(renamed)
            self._checkpoint_contained()
            return True

    def _following(self) -> Applier:
        if self._applier is None:
            raise StorageError("the buffer does not follow a primary (call `follow` first)")
        return self._applier

    def _checkpoint_contained(self) -> None:
        """A checkpoint of a replica, if due; a failure stays due and is logged, not raised."""
        try:
            self._checkpoint_if_due()
        except (CapacityError, StorageError) as exc:
            logger.warning("replica checkpoint failed, retrying with the next record: %s", exc)

    def _mark_moved(self, fifos: set[str]) -> None:
        """FIFOs whose head or gap moved: the next journal chunk (and a standby) learns them."""
        self._moved |= fifos
        if self._unshipped is not None:
            self._unshipped |= fifos

    def _adopt(self, change: LedgerChange, chunk_bytes: int = 0) -> None:
        """Take a committed change into the ledger and the journal index."""
        states = self._ledger.states
        forgotten = [states[f].number for f in change.pruned if f in states]
        record = self._ledger.next_record
        self._ledger.adopt(change)
        for number in forgotten:
            self._index.forget(number)
        if change.segments is not None:
            self._index.add(record, change.segments, chunk_bytes)
        self._index_follow(change)

    def _index_follow(self, change: LedgerChange) -> None:
        """Forget the journal segments the change's FIFOs have moved past."""
        for state in change.changed.values():
            self._index.advance(state.number, state.head)

    @_surviving_damage
    def read(self, wanted: Iterable[tuple[str, int]], sink: str | None = None) -> list[Span]:
        """Read up to n oldest readings of each (FIFO, n) and lease them until `delete`/`release`.

        Nothing is removed; leased readings are never dropped by admission. A read stops at a
        gap left by a drop, so that what is leased is one run of sequences. With several sinks,
        `sink` reads from its own position (ignored with one).
        """
        with self._lock, self._walker() as walker:
            if self._cursors is None:
                return self._reads.read(walker, self._ledger.states, wanted)
            spans = self._cursors.read(
                self._sink(sink), walker, self._ledger.states, wanted, self._damage_seen
            )
            self._follow_leases(self._cursors, (span.device for span in spans))
            return spans

    @property
    def shared(self) -> bool:
        """Whether several sinks read this buffer, each from its own positions."""
        return self._cursors is not None

    def _sink(self, sink: str | None) -> str:
        if sink is None:
            raise StorageError("this buffer has several sinks: a read or delete must name one")
        return sink

    def _follow_leases(self, sinks: Cursors, fifos: Iterable[str]) -> None:
        """Give admission the FIFOs' leases of every sink as one (gateway/buffer/cursors.py)."""
        for fifo in fifos:
            lease = sinks.lease(fifo)
            if lease is None:
                self._reads.leases.pop(fifo, None)
            else:
                self._reads.leases[fifo] = lease

    def _take_cursor_notes(self, sinks: Cursors) -> None:
        """Hand the sinks' moved positions to the next checkpoint."""
        if sinks.notes:
            self._unwritten_notes.update(sinks.notes)
            sinks.notes.clear()

    def _move_sink(
        self,
        sinks: Cursors,
        sink: str,
        moves: dict[str, int],
        before: Callable[[], None] | None = None,
    ) -> None:
        """Move `sink` to these positions and take out what every sink has now had.

        The heads' walk (it counts the readings and bytes that go) runs first and may find a
        damaged chunk, and `before` (the dead letters' checkpoint) may fail: either leaves
        everything as it was, so the call can be made again. `last_removed` says how many left,
        by compaction level.
        """
        lowest = sinks.lowest_after(sink, moves, self._ledger.states)
        removed: Counter[int] = Counter()
        with self._walker() as walker:
            w = FifoTransaction(self._ledger, walker)
            for fifo, low in lowest.items():
                state = w.state(fifo)
                if state is None or not state.readings or low <= state.head:
                    continue
                had = state.readings
                nbytes = sinks.leased_bytes(sink, fifo, state.head, low, self._damage_seen)
                if nbytes is not None and state.read_limit >= low:
                    # The run this sink read from the head: its lease knows its bytes.
                    w.delete_head(state, low - state.head, nbytes)
                else:
                    w.delete_before(state, low)
                removed[fifo_level(fifo)] += had - state.readings
            change, taken = w.change(), w.taken()
        if before is not None:
            before()
        sinks.move(sink, moves, self._ledger.states)
        self._adopt(change)
        self._mark_moved(taken)
        self.last_removed = removed
        self._follow_leases(sinks, moves)
        for fifo in lowest:
            sinks.settle(fifo, self._ledger.states.get(fifo))
        self._take_cursor_notes(sinks)

    def begin_live_first(self) -> dict[str, int]:
        """Split every FIFO at its tail: what is appended from now on goes ahead of its backlog.

        Returns each FIFO's next sequence now, where its live stream begins (readings from
        there on were accepted after this call). A FIFO split before stays as it was. With
        several sinks there is no split: one sink's live readings are another's backlog.
        """
        with self._lock:
            if self._cursors is not None:
                return {}
            return self._reads.begin_live_first(self._ledger.states)

    def live_backlog(self) -> dict[str, int]:
        """Readings of each split FIFO's live stream still buffered (`begin_live_first`)."""
        with self._lock:
            return self._reads.live_backlog(self._ledger.states)

    @_surviving_damage
    def read_live(self, wanted: Iterable[tuple[str, int]]) -> list[Span]:
        """Read up to n readings of each (FIFO, n)'s live stream, leased until `delete`/`release`.

        A read stops at the first reading not newer than the FIFO's backlog: it waits for the
        backlog to be delivered (gateway/buffer/live.py).
        """
        with self._lock, self._walker() as walker:
            return self._reads.read_live(walker, self._ledger.states, wanted)

    @_surviving_damage
    def readings_of(self, fifo: str) -> list[bytes]:
        """Every buffered reading of a FIFO in order, without leasing them (checks and tools)."""
        with self._lock, self._walker() as walker:
            state = self._ledger.states.get(fifo)
            if state is None or not state.readings:
                return []
            return [value for _, value in walker.readings(state, state.head)]

    def redelivered(self, readings: Sequence[bytes]) -> list[bool]:
        """Which readings equal one the fence holds: copies the broker sent again, most likely.

        Equal bytes are the same series, timestamp and values (gateway/buffer/core/fence.py).
        """
        with self._lock:
            knows = self._fence.knows
            found = [knows(value) for value in readings]
            if any(found):
                self._fence.acknowledged_again()
            return found

    def hold_fence(self, holder: Hashable) -> None:
        """A connection ended or begins: what it committed last stays raw until `lift_fence`."""
        with self._lock:
            self._fence.hold(holder)

    def unpin_fence(self, holder: Hashable) -> None:
        """`holder`'s connection brought a redelivered message not held: its copies came."""
        with self._lock:
            self._fence.unpin(holder)
            self._fence.unpin(FENCE_START)

    def lift_fence(self, holder: Hashable) -> bool:
        """`holder`'s connection delivered something new; True if the fence was held."""
        with self._lock:
            held = self._fence.holding
            self._fence.lift(holder)
            self._fence.lift(FENCE_START)
            return held

    def release(self, fifos: Iterable[str], sink: str | None = None) -> None:
        """End the leases of `read` for FIFOs whose readings were not delivered."""
        with self._lock:
            if self._cursors is None:
                self._reads.release(fifos)
                return
            fifos = list(fifos)
            self._cursors.release(self._sink(sink), fifos)
            self._follow_leases(self._cursors, fifos)

    @_surviving_damage
    def delete(
        self,
        spans: Iterable[tuple[str, int, int]],
        dead_lines: Sequence[tuple[str, str, str]] = (),
        sink: str | None = None,
    ) -> int:
        """Delete (FIFO, first sequence, count) runs; returns their count.

        `dead_lines` (FIFO, the database's reason, line) go to the dead-letter database in the
        checkpoint that also records the deletion, so a refused point moves there atomically
        instead of vanishing.

        Raises:
            StorageError: a run does not start at its FIFO's head (it was already deleted).
            CapacityError: the disk budget left no page to store dead letters with; nothing
                was deleted.
        """
        if self._cursors is not None:
            return self._delete_for(self._cursors, self._sink(sink), list(spans), dead_lines)
        with self._lock:
            spans = list(spans)
            with self._walker() as walker:
                w = FifoTransaction(self._ledger, walker)
                deleted = 0
                live_deleted: set[str] = set()
                for fifo, first_seq, count in spans:
                    state = w.state(fifo)
                    mark = self._reads.live.get(fifo)
                    if state is not None and mark is not None and first_seq != state.head:
                        self._delete_live(w, state, mark, (fifo, first_seq, count))
                        live_deleted.add(fifo)
                        deleted += count
                        continue
                    stop = state.read_limit if state else 0
                    if (
                        state is None
                        or state.head != first_seq
                        or count > state.readings
                        or first_seq + count > stop
                    ):
                        raise StorageError(
                            f"delete of {fifo!r} from {first_seq} does not match the buffered head"
                        )
                    lease_end, leased = self._reads.leases.get(fifo, (None, 0))
                    if lease_end != first_seq + count:
                        # A live batch whose split ended while it was in flight: its readings
                        # are the FIFO's oldest now, deleted from the head.
                        lease_end, leased = self._reads.live_leases.get(fifo, (None, 0))
                        if lease_end == first_seq + count:
                            live_deleted.add(fifo)
                    w.delete_head(state, count, leased if lease_end == first_seq + count else None)
                    deleted += count
            change = w.change()
            taken = w.taken()
            if dead_lines:
                # Checkpointed before the ledger takes the deletion: if the checkpoint fails,
                # the readings are still buffered and no dead letter was stored.
                trial = self._ledger.copy()
                trial.adopt(change)
                self._checkpointer.write(trial, self._index, self._unwritten_notes, dead_lines)
                self._ledger = trial
                self._index_follow(change)
            else:
                self._adopt(change)
            self._mark_moved(taken)
            for fifo, _, _ in spans:
                if fifo in live_deleted:
                    self._reads.live_leases.pop(fifo, None)
                else:
                    self._reads.leases.pop(fifo, None)
            self._reads.end_finished_splits(self._ledger.states)
            self._checkpoint_if_due()
            return deleted

    def _delete_for(
        self,
        sinks: Cursors,
        sink: str,
        spans: list[tuple[str, int, int]],
        dead_lines: Sequence[tuple[str, str, str]],
    ) -> int:
        """`delete` with several sinks: `sink` had these runs; what all had leaves."""
        with self._lock:
            moves = sinks.confirmed(sink, spans)

            def store_dead_letters() -> None:
                # Before the position moves: if this fails, nothing changed. A kill -9 before
                # the position's checkpoint sends the batch again, and its refused points come
                # back as dead letters a second time.
                self._checkpointer.write(
                    self._ledger, self._index, self._unwritten_notes, dead_lines
                )

            self._move_sink(sinks, sink, moves, store_dead_letters if dead_lines else None)
            self._checkpoint_if_due()
            return sum(count for _, _, count in spans)

    def sink_backlog(self, sink: str) -> dict[str, int]:
        """Buffered readings per FIFO that `sink` has still to have (`backlog` with one sink)."""
        if self._cursors is None:
            return self.backlog()
        with self._lock:
            return self._cursors.backlog(sink, self._ledger.states)

    def sink_totals(self, sink: str) -> tuple[int, int]:
        """(readings, about their bytes as the budget counts them) that `sink` has still to have."""
        with self._lock:
            states = self._ledger.states
            if self._cursors is None:
                return self._ledger.readings, self._ledger.nbytes
            backlog = self._cursors.backlog(sink, states)
            nbytes = sum(
                states[fifo].nbytes * n // max(1, states[fifo].readings)
                for fifo, n in backlog.items()
            )
            return sum(backlog.values()), nbytes

    def fifo_nexts(self) -> dict[str, tuple[int, int]]:
        """(FIFO number, the sequence its next reading gets) of each FIFO holding readings."""
        with self._lock:
            return {f: (s.number, s.next) for f, s in self._ledger.states.items() if s.readings}

    def share_targets(self, sink: str, fraction: float) -> dict[str, int]:
        """Where `sink` would be, giving up the oldest `fraction` of its backlog in each FIFO.

        For `skip_to`, in parts small enough to hold the loop briefly. Empty with one sink.
        """
        with self._lock:
            if self._cursors is None:
                return {}
            return self._cursors.share_targets(sink, self._ledger.states, fraction)

    @_surviving_damage
    def skip_to(self, sink: str, targets: dict[str, int]) -> int:
        """Give up `sink`'s readings before these positions, for it alone; returns how many.

        A target the sink has passed since, or in a FIFO it now has a lease in, is left out.
        """
        if self._cursors is None:
            return 0
        with self._lock:
            moves, count = self._cursors.skips(sink, targets, self._ledger.states)
            if moves:
                self._move_sink(self._cursors, sink, moves)
                self._cursors.skipped[sink] += count
                self._checkpoint_if_due()
            return count

    def sink_skipped(self) -> Counter[str]:
        """Readings each sink gave up since opening (`skip_to`)."""
        with self._lock:
            return Counter(self._cursors.skipped) if self._cursors is not None else Counter()

    def _delete_live(
        self, w: FifoTransaction, state: DeviceState, mark: LiveMark, span: tuple[str, int, int]
    ) -> None:
        fifo, first_seq, count = span
        if first_seq != live.cursor(state, mark) or first_seq + count > state.next:
            raise StorageError(
                f"delete of {fifo!r} from {first_seq} does not match its live stream"
            )
        lease_end, leased = self._reads.live_leases.get(fifo, (None, 0))
        if lease_end != first_seq + count:
            raise StorageError(f"delete of {fifo!r} from {first_seq} was not read whole")
        w.delete_live(state, first_seq, count, leased)

    def maintain(self) -> bool:
        """Checkpoint or seal if due; the service calls this when intake and flushing are idle.

        Returns whether a seal is under way, so that the caller comes back soon.
        """
        if self.readonly:
            return False
        with self._lock:
            return self._checkpoint_if_due()

    @_surviving_damage
    def compact(self, rules: Rules, *, force: bool = False) -> Compacted | None:
        """One bounded step of the compact policy; None when there was nothing to do.

        Runs when the fill is past the start of compaction (or with `force`), on the largest
        backlog of a compact lane: its oldest readings (or summaries) become summaries one step
        coarser, in one transaction (gateway/buffer/compaction.py). A step that only looked
        for candidates (the first ones, over many FIFOs) returns an empty `Compacted`: call
        again.

        Raises:
            CapacityError: the disk budget has no room for the step; nothing changed.
            StorageError: any other LMDB failure; nothing changed. Or, once committed, the
                accounting could not take the change: the buffer must be reopened.
        """
        if self.readonly:
            return None
        journal = self._writable_journal()
        compactor = self._compactor
        with self._lock:
            pressed = self._guard.under_pressure
            if not compactor.due(rules, self._ledger.nbytes, pressed=pressed) and not force:
                return None
            for _ in range(compaction.RETRIES):
                try:
                    w, step = self._compact_step(journal, rules)
                    break
                except compaction.NoStep as nothing:
                    if nothing.busy:
                        return Compacted()
                    if not nothing.retry:
                        return None
            else:
                return None
            compactor.committed()
            compactor.fault("after_commit", step)
            self._adopt_committed(w, "compaction")
            self._unwritten_notes.update(step.notes)
            self._after_commit(w, Admitted())
            self.last_compaction = step
        return step.compacted

    def _compact_step(
        self, journal: lmdb.Environment, rules: Rules
    ) -> tuple[FifoTransaction, compaction.Step]:
        """Commit one compaction step (lock held); raises `NoStep` when there is none."""
        compactor = self._compactor
        with (
            self._journal_write_errors(),
            journal.begin(write=True) as txn,
            self._walker(txn) as walker,
        ):
            w = FifoTransaction(self._ledger, walker)
            step = compactor.step(
                w, self._ledger.states, rules, self._reads, time.monotonic_ns(), fence=self._fence
            )
            w.finish(txn, step.notes, self._moved, self._damage.unsettled)
            self._guard.check(txn, freeing=True)
            compactor.fault("before_commit", step)
        return w, step

    def _adopt_committed(self, w: FifoTransaction, what: str) -> None:
        """Take a committed journal write into the ledger.

        Raises:
            StorageError: the ledger no longer matches the journal; a restart rebuilds it.
        """
        try:
            # Before the ledger adopts the states the transaction compares with.
            taken = w.taken()
            self._mark_moved(taken)
            record = self._ledger.next_record
            self._adopt(w.change(), w.chunk_bytes)
            if w.written is not None and self.on_journal is not None:
                self.on_journal(record, w.record_value)
            if w.written is not None:
                # Carried by the chunk, but for FIFOs whose loss to damage is not written.
                self._moved &= self._damage.unsettled
            if self._cursors is not None:
                # A drop moved heads past sinks' positions (or emptied a FIFO): forget those.
                for fifo in taken:
                    self._cursors.settle(fifo, self._ledger.states.get(fifo))
                self._take_cursor_notes(self._cursors)
        except Exception as exc:
            raise StorageError(f"a committed {what} could not be accounted: {exc}") from exc

    @contextlib.contextmanager
    def _journal_write_errors(self) -> Iterator[None]:
        """LMDB's errors of a journal write as the gateway's, and a seal asked for when it is full.

        Around the transaction, so that the commit's own failure is translated too.
        """
        try:
            yield
        except lmdb.MapFullError as exc:
            # The journal's map has no run of free pages for the record: a seal empties it.
            self._checkpointer.seal_wanted = True
            raise capacity.translate(exc, self.path, self.capacity_bytes) from exc
        except lmdb.Error as exc:
            raise capacity.translate(exc, self.path, self.capacity_bytes) from exc
        except CapacityError:
            self._checkpointer.seal_wanted |= self._guard.journal_full
            raise

    def level_counts(self) -> dict[int, tuple[int, int]]:
        """Buffered (records, bytes) by level: 0 for raw readings, 1 and up for summaries.

        One pass over the FIFOs holding records, looking at the names of summary FIFOs only.
        """
        with self._lock:
            ledger = self._ledger
            counts: dict[int, list[int]] = {}
            for name, state in ledger.states.items():
                if state.readings and LEVEL_SEPARATOR in name:
                    found = counts.setdefault(fifo_level(name), [0, 0])
                    found[0] += state.readings
                    found[1] += state.nbytes
            readings, nbytes = ledger.readings, ledger.nbytes
            for level_readings, level_bytes in counts.values():
                readings -= level_readings
                nbytes -= level_bytes
            result = {0: (readings, nbytes)}
            result.update((level, (r, b)) for level, (r, b) in sorted(counts.items()))
            return result

    def damaged_summaries(self) -> Counter[int]:
        """Summaries lost with damaged chunks since opening, by level."""
        with self._lock:
            return Counter(self._damage.summaries)

    def _checkpoint_if_due(self) -> bool:
        now = time.monotonic()
        # Looked for once per interval at most: it walks every FIFO's state.
        if now - self._last_pruned >= checkpoint.CHECKPOINT_INTERVAL_S:
            self._last_pruned = now
            if self._applier is None and checkpoint.is_pruning_due(
                self._ledger, under_pressure=self._guard.under_pressure
            ):
                self._forget_idle()
        try:
            return self._checkpointer.maintain(self._ledger, self._index, self._unwritten_notes)
        except DamagedChunkError as exc:
            # Set aside now; the next change checkpoints (or seals) again without it.
            self._set_aside(exc)
            return self._checkpointer.sealing is not None

    def _checkpoint(self) -> None:
        self._checkpointer.write(self._ledger, self._index, self._unwritten_notes)

    def backlog(self) -> dict[str, int]:
        """Buffered readings per FIFO that `read` can reach (a split FIFO's before its mark)."""
        with self._lock:
            return self._reads.backlog(self._ledger.states)

    def devices(self) -> dict[str, DeviceState]:
        """A snapshot of every device's accounting."""
        with self._lock:
            return {d: DeviceState(*s.pack_fields()) for d, s in self._ledger.states.items()}

    def totals(self) -> Totals:
        """Buffer-wide accounting."""
        with self._lock:
            return self._ledger.totals()

    def latest_of(self, device: str) -> list[Latest]:
        """The newest reading of each series of `device` the last-value table holds."""
        if self.latest is None:
            return []
        with self._lock:
            self._write_noted()
            by_number = {state.number: state for state in self._ledger.states.values()}
            with self._env.begin() as txn:
                return self.latest.device(txn, device, by_number)

    def device_index(self) -> DeviceIndex:
        """Every device's name in order, and which FIFOs of a device class each has.

        A pass over every device, meant for a worker thread: the FIFO names are copied under
        the lock, the last-value table is read in a read-only transaction of that thread's.
        """
        with self._lock:
            fifos = list(self._ledger.states)
        names: set[str] = set()
        classed: dict[str, list[str]] = {}
        for fifo in fifos:
            device = fifo_device(fifo)
            names.add(device)
            if device != fifo:
                classed.setdefault(device, []).append(fifo)
        if self.latest is not None:
            with self._thread_reads:
                if self._closed:
                    raise StorageError("the buffer is closed")
                with self._env.begin() as txn:
                    names |= self.latest.device_names(txn)
        return DeviceIndex(sorted(names), classed)

    def holds(self, device: str, classes: Iterable[str]) -> bool:
        """Whether `device` has a FIFO (of one of the device `classes`): readings accepted."""
        with self._lock:
            states = self._ledger.states
            return any(fifo_name(device, c) in states for c in classes)

    def device_details(
        self, names: Sequence[str], index: DeviceIndex
    ) -> tuple[dict[str, list[DeviceState]], dict[str, int]]:
        """The accounting of each FIFO of `names` (in order), and when each was last updated.

        Bounded by the names given: only their series are read from the last-value table.
        """
        with self._lock:
            self._write_noted()
            states = self._ledger.states
            accounting = {
                d: [
                    DeviceState(*states[f].pack_fields())
                    for f in [d, *index.classed.get(d, [])]
                    if f in states
                ]
                for d in names
            }
            seen: dict[str, int] = {}
            if self.latest is not None and names:
                with self._env.begin() as txn:
                    seen = self.latest.devices_from(txn, names[0], len(names))
        return accounting, {d: seen[d] for d in names if d in seen}

    def latest_devices(self) -> dict[str, int]:
        """Device -> when its newest reading was taken (ns), from the last-value table."""
        if self.latest is None:
            return {}
        with self._lock:
            self._write_noted()
            with self._env.begin() as txn:
                return self.latest.devices(txn)

    def _write_noted(self) -> None:
        """Write the noted latest values, so that the table's bound and order apply to them.

        A restart notes them again from the journal, so this needs no checkpoint.
        """
        if self.latest is None or not self.latest.noted or self.readonly:
            return
        try:
            with self._env.begin(write=True) as txn:
                self.latest.write(txn)
        except lmdb.Error as exc:
            raise StorageError(f"cannot keep the latest values: {exc}") from exc

    def remember(self, device: str, lines: Sequence[bytes]) -> None:
        """Keep readings read back from the database in the last-value table.

        Raises:
            StorageError: LMDB refused the write (the buffer's own data is unaffected).
        """
        if self.latest is None:
            return
        with self._lock:
            try:
                with self._env.begin(write=True) as txn:
                    self.latest.fill(txn, device, lines, time.time_ns())
            except lmdb.Error as exc:
                raise StorageError(f"cannot keep the latest values of {device!r}: {exc}") from exc

    def file_bytes(self) -> int:
        """Size of the LMDB data files: what the buffer takes on disk."""
        return sum(
            (self.path / name).stat().st_size
            for name in (environment.DATA_FILE, environment.JOURNAL_FILE)
            if (self.path / name).exists()
        )

    def newest_dead_letters(self, limit: int) -> list[DeadLetter]:
        """The `limit` most recent dead letters, newest first (for the read API)."""
        found: list[DeadLetter] = []
        with self._env.begin() as txn:
            for key, value in txn.cursor(db=self._tables.dead).iterprev():
                if len(found) >= limit:
                    break
                found.append(deadletters.decode(key, value))
        return found

    def dead_letter_count(self) -> int:
        """How many points the dead-letter store holds."""
        with self._env.begin() as txn:
            entries: int = txn.stat(self._tables.dead)["entries"]
            return entries
