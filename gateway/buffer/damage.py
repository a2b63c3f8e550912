"""Damaged chunks: set aside, their readings counted, and the rest of the buffer goes on.

LMDB keeps no checksums and SD cards rot, so every chunk carries its own (DESIGN invariant 12;
gateway/buffer/core/chunk.py). A walker that meets a chunk failing it raises
`DamagedChunkError`; the buffer then sets the chunk aside here and does again what it was doing:

- the FIFOs whose readings were in it drop the ones they still counted (their head moves past
  the chunk when it is at the head; a chunk mid-way leaves a run of missing sequences that a
  read stops before and a delivery's head search passes), counted under the reason `damaged`
  (`on_damaged`) and logged once at ERROR;
- walkers pass it by from then on: a sealed chunk by its key (`skipped`), a journal chunk by
  leaving the journal index (so it is deleted with the journal's dead records);
- the next checkpoint writes, in its own transaction, its raw bytes to the store's `damaged`
  table (key: kind, then its key in its own database) and deletes a sealed one, together with
  the accounting that no longer counts its readings.

Until that checkpoint the loss lives in memory only, so the FIFOs it touched are `unsettled`:
journal chunks do not carry their states (gateway/buffer/transaction.py `finish`), so that a
crash before it finds the damage again and counts it once more on the checkpoint's accounting,
never twice.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.buffer.core.damage import (
    DAMAGED,
    JOURNAL_KIND,
    SEALED_KIND,
    settle_empty,
    take_range,
)
from gateway.buffer.core.ledger import (
    SEALED_KEY,
    U64,
    DeviceState,
    Ledger,
    LedgerChange,
    fifo_class,
    fifo_level,
)
from gateway.buffer.fiforead import sealed_chunks
from gateway.errors import StorageError
from gateway.points.record import timestamp_of

if TYPE_CHECKING:
    from collections.abc import Callable

    import lmdb

    from gateway.buffer.core.journalindex import JournalIndex
    from gateway.buffer.fiforead import FifoWalker
    from gateway.buffer.transaction import Tables
    from gateway.errors import DamagedChunkError

logger = logging.getLogger(__name__)


@dataclass
class Damage:
    """Chunks found damaged: those to write aside, those to pass by, and the counts."""

    # `damaged` table key -> raw bytes, written by the next checkpoint.
    pending: dict[bytes, bytes] = field(default_factory=dict)
    # Keys of sealed chunks set aside: walkers pass them by until the checkpoint deletes them.
    skipped: set[bytes] = field(default_factory=set)
    unsettled: set[str] = field(default_factory=set)
    chunks: int = 0
    readings: int = 0
    # Raw readings lost by (reason, device class), for the accounting of a service opening
    # now; summaries lost by level (they stand for readings counted as summarised already).
    by_class: Counter[tuple[str, str]] = field(default_factory=Counter)
    summaries: Counter[int] = field(default_factory=Counter)
    # Told of every loss counted; the service points them at its metrics and accounting.
    on_damaged: Callable[[int, Counter[tuple[str, str]]], None] | None = None
    on_damaged_summaries: Callable[[Counter[int]], None] | None = None

    def count(self, chunks: int, lost: dict[str, int]) -> None:
        """Count `chunks` set aside and the records lost with them, by FIFO."""
        by_class: Counter[tuple[str, str]] = Counter()
        by_level: Counter[int] = Counter()
        for fifo, readings in lost.items():
            level = fifo_level(fifo)
            if level:
                by_level[level] += readings
            else:
                by_class[DAMAGED, fifo_class(fifo)] += readings
        by_class, by_level = +by_class, +by_level
        self.chunks += chunks
        self.readings += sum(by_class.values())
        self.by_class.update(by_class)
        self.summaries.update(by_level)
        if by_level and self.on_damaged_summaries is not None:
            self.on_damaged_summaries(by_level)
        if self.on_damaged is not None:
            self.on_damaged(chunks, by_class)

    def write(self, txn: lmdb.Transaction, tables: Tables) -> None:
        """Write the pending chunks aside, inside the checkpoint's store transaction."""
        if tables.damaged is None:
            return
        for key, raw in self.pending.items():
            txn.put(key, raw, db=tables.damaged)
            if key.startswith(SEALED_KIND):
                txn.delete(key[len(SEALED_KIND) :], db=tables.sealed)

    def written(self) -> None:
        """The checkpoint that wrote the pending chunks and the losses committed."""
        self.pending.clear()
        self.unsettled.clear()


def set_aside(  # noqa: PLR0917 - the buffer's parts the damage touches
    exc: DamagedChunkError,
    damage: Damage,
    ledger: Ledger,
    index: JournalIndex,
    raw: bytes,
    walker: FifoWalker,
    next_sealed: Callable[[int, int, int], int | None],
) -> LedgerChange:
    """Set a damaged chunk aside; returns the change the ledger adopts.

    `raw`: the chunk's bytes as stored. `next_sealed(seal, number, first)`: the first sequence of
    the FIFO's next sealed chunk, None if none.

    Raises:
        StorageError: the chunk was set aside before (the walker should have passed it by).
    """
    if exc.kind == "sealed":
        if exc.key in damage.skipped:
            raise StorageError(f"sealed chunk {exc.key.hex()} was set aside already")
        seal, number, first = SEALED_KEY.unpack(exc.key)
        end = next_sealed(seal, number, first)
        if end is None:
            end = index.first_seq(number)
        ranges: dict[int, tuple[int, int | None]] = {number: (first, end)}
        damage.skipped.add(exc.key)
        damage.pending[SEALED_KIND + exc.key] = raw
    else:
        if JOURNAL_KIND + exc.key in damage.pending:
            raise StorageError(f"journal record {exc.key.hex()} was set aside already")
        ranges = dict(index.drop_record(U64.unpack(exc.key)[0]))
        damage.pending[JOURNAL_KIND + exc.key] = raw
    by_number = {state.number: fifo for fifo, state in ledger.states.items()}
    changed: dict[str, DeviceState] = {}
    lost: dict[str, int] = {}
    readings, nbytes, active = ledger.readings, ledger.nbytes, ledger.active
    for number, (lo, hi) in ranges.items():
        fifo = by_number.get(number)
        if fifo is None:
            continue
        state = DeviceState(*ledger.states[fifo].pack_fields())
        head = state.head
        taken, freed = take_range(state, lo, state.next if hi is None else hi)
        freed += settle_empty(state)
        readings -= taken
        nbytes -= freed
        if taken and not state.readings:
            active -= 1
        if state.readings and state.head != head:
            _note_oldest(walker, state)
        changed[fifo] = state
        damage.unsettled.add(fifo)
        if taken:
            lost[fifo] = taken
    damage.count(1, lost)
    logger.error(
        "buffer %s chunk %s is damaged (%s): set aside, %d readings of %d devices lost",
        exc.kind,
        exc.key.hex(),
        exc,
        sum(lost.values()),
        len(lost),
    )
    return LedgerChange(
        changed, set(), set(), readings, nbytes, active, next_device=ledger.next_device
    )


def describe(key: bytes) -> str:
    """A `damaged` table key as an operator reads it."""
    kind, rest = key[:1], key[1:]
    if kind == SEALED_KIND and len(rest) == SEALED_KEY.size:
        seal, number, first = SEALED_KEY.unpack(rest)
        return f"sealed chunk of FIFO number {number} from sequence {first} (seal {seal})"
    if kind == JOURNAL_KIND and len(rest) == U64.size:
        return f"journal record {U64.unpack(rest)[0]}"
    return f"unknown {key.hex()}"


def _note_oldest(walker: FifoWalker, state: DeviceState) -> None:
    """Take the timestamp of the FIFO's new head, if it can be read now."""
    try:
        for seq, value in walker.readings(state, state.head):
            if seq == state.head:
                state.oldest_ts_ns = timestamp_of(value)
            return
    except StorageError:
        # Another damaged chunk: the next walk meets it and sets it aside in turn.
        return


def next_sealed_first(
    txn: lmdb.Transaction,
    db: Any,  # noqa: ANN401 - an LMDB handle
    skipped: set[bytes],
    place: tuple[int, int, int],
) -> int | None:
    """The first sequence of the FIFO's sealed chunk after `place` (seal, number, first)."""
    seal, number, first = place
    for at, chunk_first, _ in sealed_chunks(txn.cursor(db=db), number, seal):
        if chunk_first > first and SEALED_KEY.pack(at, number, chunk_first) not in skipped:
            return chunk_first
    return None
