"""When and in which order the buffer writes its checkpoints and runs its seals.

What a checkpoint writes is gateway/buffer/checkpoint.py's; a seal is gateway/buffer/sealing.py's.

Order, and why:
1. In the `interval` and `none` sync modes the journal is flushed first: the checkpoint about to
   commit says how far into the journal its accounting reaches, and must never reach past what
   the journal has on disk.
2. The checkpoint's store transaction: the accounting, the deletion of sealed chunks that
   deliveries and drops emptied, the last values, dead letters. Its commit is the point of no
   return: memory takes what it wrote at once, whatever happens after. It frees pages and runs
   in a transaction of its own, never sharing one with a seal that needs pages, so a full map
   still gets room back from deliveries.
3. In `interval` and `none` the store is flushed before any journal record is deleted, so that a
   power cut can never keep the deletion of sealed records and lose the seal that copied them.
4. Journal records that hold nothing buffered are deleted, best effort: a failure (disk full, an
   I/O error) is logged and the same records are tried again with the next checkpoint.
5. A seal due runs in steps (gateway/buffer/sealing.py), one per call, and is completed by a
   checkpoint.

A checkpoint or seal step that fails is tried again after a backoff (`RETRY_FIRST_S` doubling up
to `RETRY_MAX_S`) rather than with every change, since each try costs disk writes; what was
committed stays committed meanwhile (the journal holds it).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import lmdb

from gateway.buffer import checkpoint, deadletters
from gateway.buffer.core.ledger import NO_SEAL, U64
from gateway.buffer.sealing import PENDING_MAX_BYTES, Sealing, discard_seals_from
from gateway.errors import CapacityError, DamagedChunkError, StorageError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from gateway.buffer.capacity import PageGuard
    from gateway.buffer.core.journalindex import JournalIndex
    from gateway.buffer.core.ledger import Ledger
    from gateway.buffer.damage import Damage
    from gateway.buffer.fiforead import DecodedChunks
    from gateway.buffer.latest import LatestTable
    from gateway.buffer.transaction import Tables
    from gateway.config.sections import SyncMode

logger = logging.getLogger(__name__)

RETRY_FIRST_S = 0.5
RETRY_MAX_S = 30.0


class Checkpointer:
    """Writes the buffer's checkpoints and runs its seals; see the module docstring."""

    def __init__(
        self,
        env: lmdb.Environment,
        journal: lmdb.Environment | None,
        *,
        tables: Tables,
        latest: LatestTable | None,
        guard: PageGuard,
        capacity_bytes: int,
        sync: SyncMode,
        decoded: DecodedChunks,
        damage: Damage,
        seal_pending_bytes: int = PENDING_MAX_BYTES,
    ) -> None:
        """Checkpoint into `env`'s tables what the journal `journal` holds.

        `decoded`: the readers' cache of decompressed chunks, emptied when a seal is undone (its
        number is used again, and a chunk key with it may then hold other readings). `damage`:
        chunks set aside as damaged, which the next checkpoint writes (gateway/buffer/damage.py).
        `seal_pending_bytes`: readings a seal holds before writing (gateway/buffer/sealing.py).
        """
        self._seal_pending_bytes = seal_pending_bytes
        # Notes made for each checkpoint as it is written (the redelivery fence's limits).
        self.extra_notes: Callable[[], dict[bytes, bytes]] | None = None
        self._env, self._journal, self._tables, self._latest = env, journal, tables, latest
        self._decoded = decoded
        self._damage = damage
        self._guard = guard
        self._capacity_bytes = capacity_bytes
        self._flushes = sync != "commit"
        self._last = time.monotonic()
        self._retry_at = 0.0
        self._backoff_s = 0.0
        self.sealing: Sealing | None = None
        # A seal asked for whatever the journal's size: its map refused a record.
        self.seal_wanted = False
        # Delivered journal records from this one on are kept until a seal (None: none kept).
        self.keep_from: int | None = None
        # Checkpoints written since opening, for tests and tools that follow them.
        self.checkpoints = 0

    def discard_unfinished_seal(self, ledger: Ledger) -> None:
        """Remove what a seal cut short by a crash left in the store."""
        with self._env.begin(write=True) as txn:
            found = discard_seals_from(txn, self._tables.sealed, ledger.next_seal)
        if found:
            logger.info("removed %d chunks of a seal that a restart cut short", found)

    def is_due(self, ledger: Ledger, index: JournalIndex, notes: dict[bytes, bytes]) -> bool:
        """Whether a checkpoint should be written now."""
        # A loss to damage lives in memory only until a checkpoint writes it: one is due at once.
        if self._damage.pending:
            return True
        if not (ledger.dirty or ledger.forgotten or index.has_dead or notes):
            return False
        latest = self._latest
        return (
            time.monotonic() - self._last >= checkpoint.CHECKPOINT_INTERVAL_S
            or (latest is not None and len(latest.noted) > latest.bound)
            # Near the page guard, what deliveries and drops freed is freed at once.
            or self._guard.under_pressure
        )

    def maintain(self, ledger: Ledger, index: JournalIndex, notes: dict[bytes, bytes]) -> bool:
        """Checkpoint if due, then take a step of a seal if one is due.

        Returns whether a seal is still under way (call again soon). Failures are logged and
        tried again after a backoff.

        Raises:
            DamagedChunkError: a chunk failed its checksum; the caller sets it aside.
        """
        now = time.monotonic()
        if now < self._retry_at:
            return self.sealing is not None
        try:
            if self.is_due(ledger, index, notes):
                self.write(ledger, index, notes)
            if self.sealing is not None or self._is_seal_due(index):
                self.seal_step(ledger, index, notes)
        except DamagedChunkError:
            raise
        except (CapacityError, StorageError) as exc:
            self._backoff_s = min(RETRY_MAX_S, max(RETRY_FIRST_S, 2 * self._backoff_s))
            self._retry_at = now + self._backoff_s
            # What was committed stays committed (the journal holds it); a full map refuses
            # commits until a checkpoint frees pages.
            logger.warning(
                "buffer checkpoint failed, trying again in %.1f s: %s", self._backoff_s, exc
            )
        else:
            self._backoff_s = 0.0
        return self.sealing is not None

    def _is_seal_due(self, index: JournalIndex) -> bool:
        return self.seal_wanted or checkpoint.is_seal_due(index, self._capacity_bytes)

    def seal_step(self, ledger: Ledger, index: JournalIndex, notes: dict[bytes, bytes]) -> None:
        """Start the seal, or take its next step, or complete it.

        Raises:
            CapacityError: the map has no room for the step; the seal starts over later.
            StorageError: any other LMDB failure; likewise.
        """
        if self._journal is None:
            return
        sealing = self.sealing
        if sealing is None:
            self.seal_wanted = False
            cut = ledger.next_record - 1
            sealing = self.sealing = Sealing(
                ledger.next_seal,
                cut,
                index.records_through(cut),
                {state.number: fifo for fifo, state in ledger.states.items()},
                set(ledger.retired),
                pending_max_bytes=self._seal_pending_bytes,
            )
        try:
            if not sealing.is_copied:
                with self._env.begin(write=True) as txn, self._journal.begin() as jtxn:
                    sealing.step(txn, jtxn, self._tables.sealed, ledger.states)
                return
        except DamagedChunkError:
            # Set aside by the caller, the record leaves the index; the seal starts over.
            self._undo_seal()
            raise
        except lmdb.Error as exc:
            self._undo_seal()
            raise _translate(exc, "seal") from exc
        self.write(ledger, index, notes, sealing=sealing)

    def complete_seal(self, ledger: Ledger, index: JournalIndex, notes: dict[bytes, bytes]) -> None:
        """Run the seal under way, or one that is due, to its end (tools, tests, `checkpoint`)."""
        if self.sealing is None and not self._is_seal_due(index):
            return
        self.seal_step(ledger, index, notes)  # starts it, if none is under way
        while self.sealing is not None:
            self.seal_step(ledger, index, notes)

    def write(
        self,
        ledger: Ledger,
        index: JournalIndex,
        notes: dict[bytes, bytes],
        dead_lines: Sequence[tuple[str, str, str]] = (),
        *,
        sealing: Sealing | None = None,
    ) -> None:
        """Write a checkpoint of `ledger` and `notes` (completing `sealing`), then delete records.

        `notes` is emptied once written.

        Raises:
            CapacityError: the map has no room for it; nothing of it was written.
            StorageError: any other LMDB failure; likewise.
        """
        # Chunks of a seal under way are its own until a checkpoint completes it.
        in_progress = self.sealing.seal if self.sealing is not None and sealing is None else NO_SEAL
        if self.extra_notes is not None:
            notes.update(self.extra_notes())
        try:
            if self._flushes and self._journal is not None:
                self._journal.sync(True)
            with self._env.begin(write=True) as txn:
                written = checkpoint.write(
                    txn,
                    self._tables,
                    ledger,
                    self._latest,
                    sealing=sealing,
                    below_seal=in_progress,
                    notes=notes,
                )
                if dead_lines:
                    _store_dead(txn, self._tables, dead_lines)
                self._damage.write(txn, self._tables)
        except lmdb.Error as exc:
            if sealing is not None:
                self._undo_seal()
            raise _translate(exc, "checkpoint") from exc
        # Committed: the point of no return.
        written.apply(ledger)
        self._damage.written()
        notes.clear()
        if sealing is not None:
            self.sealing = None
            index.sealed_through(sealing.cut)
        self._last = time.monotonic()
        self.checkpoints += 1
        self._guard.measure_store()
        self._delete_journal(index, ledger.sealed_through)

    def _undo_seal(self) -> None:
        """Give up the seal under way; the next one starts over with the same number."""
        self.sealing = None
        self._decoded.clear()

    def abandon_seal(self) -> None:
        """Give up a seal under way (closing); a restart removes what it wrote."""
        self._undo_seal()

    def _delete_journal(self, index: JournalIndex, sealed_through: int) -> None:
        """Delete the journal records nothing buffered is in; a failure waits for the next try.

        Records from `keep_from` on stay until a seal takes them (a standby may still need
        them: gateway/replication/primary.py catches it up from the journal).
        """
        keep_from = self.keep_from
        dead = [
            r
            for r in index.dead_records()
            if keep_from is None or r < keep_from or r <= sealed_through
        ]
        if self._journal is None or not dead:
            return
        try:
            if self._flushes:
                self._env.sync(True)
            with self._journal.begin(write=True) as jtxn:
                for record in dead:
                    jtxn.delete(U64.pack(record))
        except lmdb.Error as exc:
            logger.warning(
                "deleting %d delivered journal records failed, trying again with the next "
                "checkpoint: %s",
                len(dead),
                exc,
            )
            return
        index.deleted(dead)


def unreachable(ledger: Ledger, index: JournalIndex) -> list[str]:
    """FIFOs whose oldest reading neither a sealed chunk nor a journal record can hold.

    The store got ahead of its journal: a power cut in the `interval` or `none` sync modes,
    before this version flushed the two in order, kept a checkpoint and lost journal records
    it counts on. Cheap enough for every start: one look per FIFO.
    """
    found = []
    for fifo, state in ledger.states.items():
        if not state.readings or state.sealed_from != NO_SEAL:
            continue
        first = index.first_seq(state.number)
        if first is None or first > state.head:
            found.append(fifo)
    return found


def _store_dead(
    txn: lmdb.Transaction, tables: Tables, dead_lines: Sequence[tuple[str, str, str]]
) -> None:
    cursor = txn.cursor(db=tables.dead)
    seq = U64.unpack(cursor.key())[0] + 1 if cursor.last() else 0
    for device, reason, line in dead_lines:
        txn.put(U64.pack(seq), deadletters.encode(device, reason, line), db=tables.dead)
        seq += 1


def _translate(exc: lmdb.Error, what: str) -> StorageError:
    if isinstance(exc, lmdb.MapFullError):
        return CapacityError(f"the disk budget left no room for the {what}")
    return StorageError(f"{what} failed: {exc}")
