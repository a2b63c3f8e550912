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

Invariants: a reading is acknowledged only after the journal commit holding it (durable for the
sync mode). A reading leaves only by `delete`, which the flusher calls after the database
confirmed (or after moving it to `dead`), or by a drop that admission decided and counted;
readings the flusher has read are leased and never dropped. Every method blocks; the service
calls them in its event loop's thread (see gateway/service/lifecycle.py for why not in a worker
thread).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Self

import lmdb

from gateway.buffer import capacity, checkpoint, deadletters, environment, integrity, live
from gateway.buffer.admitter import Admitter
from gateway.buffer.core.admission import Lane, Rules
from gateway.buffer.core.chunk import reading_bytes
from gateway.buffer.core.ledger import (
    U64,
    Admitted,
    DeadLetter,
    DeviceState,
    Ledger,
    LedgerChange,
    Span,
    Totals,
)
from gateway.buffer.core.verify import Report, is_plausible
from gateway.buffer.fiforead import JOURNAL_PREFIX, DecodedChunks, FifoWalker
from gateway.buffer.transaction import FifoTransaction
from gateway.config.sections import ApiSettings, SyncMode
from gateway.errors import CapacityError, StorageError
from gateway.points.record import timestamp_of

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from pathlib import Path

    from gateway.buffer.core.journalindex import JournalIndex
    from gateway.buffer.latest import Latest
    from gateway.buffer.live import LiveMark

logger = logging.getLogger(__name__)
# Without a configuration (tools, tests), the read API's default.
DEFAULT_LATEST_SERIES: int = ApiSettings.model_fields["latest_series"].default
DEFAULT_LANE = Lane()


class Buffer:
    """Per-device FIFOs in two LMDB environments; see the module docstring."""

    # Failures after an admission's journal commit since opening (`_after_commit`), and the
    # count at the first of the failures running now, if any.
    after_commit_failures: int = 0
    _after_commit_failing: int | None = None

    def __init__(
        self,
        path: Path,
        capacity_bytes: int,
        sync: SyncMode = "commit",
        *,
        readonly: bool = False,
        latest_series: int = DEFAULT_LATEST_SERIES,
    ) -> None:
        """Open (creating if needed) the buffer under `path`, its files bounded by `capacity_bytes`.

        `latest_series`: the most series whose latest reading is kept (gateway/buffer/latest.py).

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
        self._decoded = DecodedChunks()
        self._guard = capacity.PageGuard(
            self._env,
            (self._tables.sealed, self._tables.dead, *rewritten),
            rewritten,
            capacity_bytes,
        )
        self._plain_rules = Rules(budget_bytes=self.budget_bytes)
        self._lock = threading.Lock()
        # Readings the flusher has read and not yet deleted, per FIFO: (end sequence, bytes).
        # They are on their way to the database, so admission never drops them.
        self._leases: dict[str, tuple[int, int]] = {}
        # A live-first drain's split of each FIFO (gateway/buffer/live.py), its `first` by FIFO
        # for admission, and the leases of live-stream reads (end sequence, bytes).
        self._live: dict[str, LiveMark] = {}
        self._live_from: dict[str, int] = {}
        self._live_leases: dict[str, tuple[int, int]] = {}
        # Split FIFOs whose live stream stopped at a reading not newer than their backlog, and
        # the sequence it stopped at: nothing of it can go until the backlog is delivered.
        self._held: dict[str, int] = {}
        # The accounting, for the flusher's scheduling and admission; it adopts a change only
        # after the journal commit holding it, and the checkpoint writes it to the store.
        # Notes committed to the journal and not yet written to the store by a checkpoint.
        self._unwritten_notes: dict[bytes, bytes]
        self._ledger, self._index, self._unwritten_notes = checkpoint.recover(
            self._env, self._journal, self._tables, self.latest
        )
        self._last_checkpoint = time.monotonic()
        # Checkpoints written since opening, for tests and tools that follow them.
        self.checkpoints = 0
        if not readonly and not is_plausible(
            self._ledger.states, (self._ledger.readings, self._ledger.nbytes)
        ):
            report = self.repair()
            logger.error(
                "buffer accounting did not match its data (%s); rebuilt it from a full scan",
                "; ".join(report.problems[:5]),
            )

    def verify(self, progress: Callable[[int, int, int], None] | None = None) -> Report:
        """Compare the accounting with a full scan of the data.

        `progress` is told after each FIFO: (FIFOs done, FIFOs in all, readings seen so far).
        """
        with self._lock, self._walker() as walker:
            return integrity.verify(walker, self._ledger, self._orphans(), progress)

    def repair(self, progress: Callable[[int, int, int], None] | None = None) -> Report:
        """Rebuild the accounting from a full scan; returns what was wrong before."""
        with self._lock:
            with self._walker() as walker:
                report = integrity.repair(walker, self._ledger, self._orphans(), progress)
            if not report.is_consistent:
                self._checkpoint()
            return report

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
                    self._checkpoint()
        finally:
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

    def checkpoint(self) -> None:
        """Write the checkpoint now (see gateway/buffer/checkpoint.py)."""
        with self._lock:
            self._checkpoint()

    def _release(self) -> None:
        if self._owner is not None:
            self._owner.close()
            self._owner = None

    def sync(self) -> None:
        """Force committed transactions to disk (sync modes `interval` and `none`)."""
        if self._journal is not None:
            self._journal.sync(True)
        self._env.sync(True)

    def append(self, items: Sequence[tuple[str, bytes]]) -> None:
        """Append (FIFO, packed record) pairs in one transaction: all are stored or none.

        Raises:
            CapacityError: the readings budget or the disk cannot take them; nothing was stored.
            StorageError: any other LMDB failure; nothing was stored.
        """
        self.admit([(fifo, value, DEFAULT_LANE) for fifo, value in items], self._plain_rules)

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
            try:
                with journal.begin(write=True) as txn, self._walker(txn) as walker:
                    w = FifoTransaction(self._ledger, walker)
                    admitted = Admitter(w, rules, self._leases, self._live_from).admit(items)
                    if admitted.stored or notes:
                        w.finish(txn, list(notes.items()) if notes else ())
                        self._guard.check(txn)
            except lmdb.Error as exc:
                raise capacity.translate(exc, self.path, self.capacity_bytes) from exc
            # Committed. Nothing from here on may raise out of `admit`: a caller that saw an
            # exception would take the stored readings for unstored ones and store them again.
            try:
                self._adopt(w.change(), w.chunk_bytes)
            except Exception as exc:
                # The ledger no longer matches the journal; a restart rebuilds it from there.
                raise StorageError(f"a committed change could not be accounted: {exc}") from exc
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
                self._decoded = DecodedChunks()
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
    ) -> _Walking:
        return _Walking(
            self._env,
            self._journal,
            self._tables.sealed,
            self._index,
            self._decoded,
            journal_txn=journal_txn,
            store_txn=store_txn,
        )

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

    def read(self, wanted: Iterable[tuple[str, int]]) -> list[Span]:
        """Read up to n oldest readings of each (FIFO, n) and lease them until `delete`/`release`.

        Nothing is removed; leased readings are never dropped by admission. A read stops at a
        gap left by a drop, so that what is leased is one run of sequences.
        """
        spans = []
        with self._lock, self._walker() as walker:
            states = self._ledger.states
            for fifo, n in wanted:
                state = states.get(fifo)
                if state is None or n <= 0 or not state.readings:
                    continue
                mark = self._live.get(fifo)
                stop = state.read_limit if mark is None else min(state.read_limit, mark.first)
                values: list[bytes] = []
                last_seq = state.head
                for seq, value in walker.readings(state, state.head):
                    if seq >= stop or len(values) >= n:
                        break
                    values.append(value)
                    last_seq = seq
                if values:
                    leased = sum(reading_bytes(v) for v in values)
                    self._leases[fifo] = (last_seq + 1, leased)
                    spans.append(Span(fifo, state.head, tuple(values)))
        return spans

    def begin_live_first(self) -> dict[str, int]:
        """Split every FIFO at its tail: what is appended from now on goes ahead of its backlog.

        Returns each FIFO's next sequence now, where its live stream begins (readings from
        there on were accepted after this call). A FIFO split before stays as it was.
        """
        with self._lock:
            for fifo, state in self._ledger.states.items():
                mark = None if fifo in self._live else live.mark_of(state)
                if mark is not None:
                    self._live[fifo] = mark
                    self._live_from[fifo] = mark.first
            return {fifo: state.next for fifo, state in self._ledger.states.items()}

    def live_backlog(self) -> dict[str, int]:
        """Readings of each split FIFO's live stream still buffered (`begin_live_first`)."""
        with self._lock:
            self._end_finished_splits()
            states = self._ledger.states
            waiting = {
                fifo: live.live_waiting(states[fifo], mark)
                for fifo, mark in self._live.items()
                if self._held.get(fifo) != live.cursor(states[fifo], mark)
            }
            return {fifo: n for fifo, n in waiting.items() if n}

    def read_live(self, wanted: Iterable[tuple[str, int]]) -> list[Span]:
        """Read up to n readings of each (FIFO, n)'s live stream, leased until `delete`/`release`.

        A read stops at the first reading not newer than the FIFO's backlog: it waits for the
        backlog to be delivered (gateway/buffer/live.py).
        """
        spans = []
        with self._lock, self._walker() as walker:
            for fifo, n in wanted:
                mark = self._live.get(fifo)
                state = self._ledger.states.get(fifo)
                if mark is None or state is None or n <= 0:
                    continue
                first = live.cursor(state, mark)
                values: list[bytes] = []
                for seq, value in walker.readings(state, first):
                    if len(values) >= n:
                        break
                    if timestamp_of(value) <= mark.newer_than_ns:
                        self._held[fifo] = seq
                        break
                    values.append(value)
                if values:
                    leased = sum(reading_bytes(v) for v in values)
                    self._live_leases[fifo] = (first + len(values), leased)
                    spans.append(Span(fifo, first, tuple(values)))
        return spans

    def _end_finished_splits(self) -> None:
        states = self._ledger.states
        for fifo in [f for f, mark in self._live.items() if live.is_over(states.get(f), mark)]:
            del self._live[fifo]
            del self._live_from[fifo]
            self._held.pop(fifo, None)

    def readings_of(self, fifo: str) -> list[bytes]:
        """Every buffered reading of a FIFO in order, without leasing them (checks and tools)."""
        with self._lock, self._walker() as walker:
            state = self._ledger.states.get(fifo)
            if state is None or not state.readings:
                return []
            return [value for _, value in walker.readings(state, state.head)]

    def release(self, fifos: Iterable[str]) -> None:
        """End the leases of `read` for FIFOs whose readings were not delivered."""
        with self._lock:
            for fifo in fifos:
                self._leases.pop(fifo, None)
                self._live_leases.pop(fifo, None)

    def delete(
        self,
        spans: Iterable[tuple[str, int, int]],
        dead_lines: Sequence[tuple[str, str, str]] = (),
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
        with self._lock:
            spans = list(spans)
            with self._walker() as walker:
                w = FifoTransaction(self._ledger, walker)
                deleted = 0
                live_deleted: set[str] = set()
                for fifo, first_seq, count in spans:
                    state = w.state(fifo)
                    mark = self._live.get(fifo)
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
                    lease_end, leased = self._leases.get(fifo, (None, 0))
                    w.delete_head(state, count, leased if lease_end == first_seq + count else None)
                    deleted += count
            change = w.change()
            if dead_lines:
                # Checkpointed before the ledger takes the deletion: if the checkpoint fails,
                # the readings are still buffered and no dead letter was stored.
                trial = self._ledger.copy()
                trial.adopt(change)
                self._checkpoint(dead_lines, ledger=trial)
                self._ledger = trial
                self._index_follow(change)
            else:
                self._adopt(change)
            for fifo, _, _ in spans:
                if fifo in live_deleted:
                    self._live_leases.pop(fifo, None)
                else:
                    self._leases.pop(fifo, None)
            self._end_finished_splits()
            self._checkpoint_if_due()
            return deleted

    def _delete_live(
        self, w: FifoTransaction, state: DeviceState, mark: LiveMark, span: tuple[str, int, int]
    ) -> None:
        fifo, first_seq, count = span
        if first_seq != live.cursor(state, mark) or first_seq + count > state.next:
            raise StorageError(
                f"delete of {fifo!r} from {first_seq} does not match its live stream"
            )
        lease_end, leased = self._live_leases.get(fifo, (None, 0))
        if lease_end != first_seq + count:
            raise StorageError(f"delete of {fifo!r} from {first_seq} was not read whole")
        w.delete_live(state, first_seq, count, leased)

    def maintain(self) -> None:
        """Checkpoint if one is due; the service calls this when intake and flushing are idle."""
        if self.readonly:
            return
        with self._lock:
            self._checkpoint_if_due()

    def _checkpoint_if_due(self) -> None:
        ledger = self._ledger
        if not (ledger.dirty or ledger.forgotten or self._index.has_dead or self._unwritten_notes):
            return
        noted = len(self.latest.noted) if self.latest is not None else 0
        if (
            time.monotonic() - self._last_checkpoint >= checkpoint.CHECKPOINT_INTERVAL_S
            or checkpoint.is_seal_due(self._index, self.capacity_bytes)
            or (self.latest is not None and noted > self.latest.bound)
            # Near the page guard, what deliveries and drops freed is freed at once.
            or self._guard.under_pressure
        ):
            try:
                self._checkpoint()
            except (CapacityError, StorageError) as exc:
                # What was committed stays committed (the journal holds it); the next change
                # tries again, and a full map refuses commits until then.
                logger.warning("buffer checkpoint failed, retrying with the next change: %s", exc)

    def _checkpoint(
        self, dead_lines: Sequence[tuple[str, str, str]] = (), ledger: Ledger | None = None
    ) -> None:
        """Write the checkpoint, then delete the journal records it made unneeded."""
        ledger = ledger if ledger is not None else self._ledger
        index = self._index
        seal = checkpoint.is_seal_due(index, self.capacity_bytes)
        try:
            with self._env.begin(write=True) as txn, self._walker(store_txn=txn) as walker:
                written = checkpoint.write(
                    txn,
                    self._tables,
                    ledger,
                    walker,
                    index,
                    self.latest,
                    seal=seal,
                    notes=self._unwritten_notes,
                )
                if dead_lines:
                    self._store_dead(txn, dead_lines)
            if self._journal is not None:
                with self._journal.begin(write=True) as jtxn:
                    if seal:
                        checkpoint.delete_journal_through(jtxn, ledger.next_record - 1)
                    else:
                        checkpoint.delete_journal(jtxn, index.dead_records())
        except lmdb.MapFullError as exc:
            self._decoded = DecodedChunks()  # it may hold chunks of the seal just undone
            raise CapacityError("the disk budget left no room for the checkpoint") from exc
        except lmdb.Error as exc:
            self._decoded = DecodedChunks()
            raise StorageError(f"checkpoint failed: {exc}") from exc
        if seal:
            index.clear()
        else:
            index.deleted(index.dead_records())
        written.apply(ledger)
        self._unwritten_notes = {}
        self._last_checkpoint = time.monotonic()
        self.checkpoints += 1
        self._guard.measure_store()

    def _store_dead(
        self, txn: lmdb.Transaction, dead_lines: Sequence[tuple[str, str, str]]
    ) -> None:
        cursor = txn.cursor(db=self._tables.dead)
        seq = U64.unpack(cursor.key())[0] + 1 if cursor.last() else 0
        for device, reason, line in dead_lines:
            txn.put(U64.pack(seq), deadletters.encode(device, reason, line), db=self._tables.dead)
            seq += 1

    def backlog(self) -> dict[str, int]:
        """Buffered readings per FIFO that `read` can reach (a split FIFO's before its mark)."""
        with self._lock:
            self._end_finished_splits()
            counts = {d: s.readings for d, s in self._ledger.states.items() if s.readings}
            for fifo, mark in self._live.items():
                counts[fifo] -= live.live_waiting(self._ledger.states[fifo], mark)
            return {fifo: n for fifo, n in counts.items() if n}

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


class _Walking:
    """A `FifoWalker` with the read transactions it needs, ended on leaving the block."""

    def __init__(
        self,
        env: lmdb.Environment,
        journal: lmdb.Environment | None,
        sealed_db: Any,  # noqa: ANN401 - an LMDB handle
        index: JournalIndex,
        decoded: DecodedChunks,
        *,
        journal_txn: lmdb.Transaction | None,
        store_txn: lmdb.Transaction | None,
    ) -> None:
        self._env, self._journal, self._db, self._index = env, journal, sealed_db, index
        self._decoded = decoded
        self._given = journal_txn
        self._store_txn = store_txn
        self._txns: list[lmdb.Transaction] = []

    def _sealed(self) -> tuple[lmdb.Transaction, Any]:
        if self._store_txn is not None:
            return self._store_txn, self._db
        if not self._txns:
            self._txns.append(self._env.begin())
        return self._txns[0], self._db

    def __enter__(self) -> FifoWalker:
        journal_txn = self._given
        if journal_txn is None:
            journal_txn = self._journal.begin() if self._journal is not None else None
            self._own_journal = journal_txn
        else:
            self._own_journal = None
        return FifoWalker(self._sealed, journal_txn, self._index, self._decoded)

    def __exit__(self, *exc: object) -> None:
        for txn in self._txns:
            txn.abort()
        if self._own_journal is not None:
            self._own_journal.abort()
