"""Walking one device's buffered readings in order, across its sealed chunks and the journal.

A device's older readings are in sealed chunks (key: seal, FIFO number, first sequence), its
newer ones in journal chunks (gateway/buffer/core/journalindex.py lists them); whichever sequences
the device's state says are gone (before its head, in its gap) are skipped, since chunks are deleted
lazily. Each journal chunk is decompressed once per walker, however many devices it serves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.buffer.core.chunk import journal_records, sealed_count, sealed_records
from gateway.buffer.core.ledger import NO_SEAL, SEALED_KEY, U64
from gateway.errors import StorageError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    import lmdb

    from gateway.buffer.core.journalindex import JournalIndex
    from gateway.buffer.core.ledger import DeviceState

# (first sequence, records) of each device's segment in one journal chunk, by FIFO number.
Groups = dict[int, tuple[int, list[bytes]]]


class FifoWalker:
    """Reads readings of any device inside the caller's transactions."""

    def __init__(
        self,
        sealed: Callable[[], tuple[lmdb.Transaction, Any]],
        journal: lmdb.Transaction | None,
        index: JournalIndex,
    ) -> None:
        """`sealed`: the store's transaction and sealed database, opened on first need."""
        self._sealed = sealed
        self._journal = journal
        self._index = index
        self._chunks: dict[int, Groups] = {}

    def readings(self, state: DeviceState, start: int) -> Iterator[tuple[int, bytes]]:
        """(sequence, record) of each buffered reading of the device from `start` on."""
        seq = max(start, state.head)
        journal_first = self._index.first_seq(state.number)
        if journal_first is None or seq < journal_first:
            limit = state.next if journal_first is None else journal_first
            yield from self._from_sealed(state, seq, limit)
        for record, _, end in self._index.places(state.number):
            if end <= seq:
                continue
            first, records = self.journal_group(record, state.number)
            for offset, value in enumerate(records):
                at = first + offset
                if at >= seq and state.is_live(at):
                    yield at, value

    def first(self, state: DeviceState) -> tuple[int, bytes]:
        """The oldest buffered reading of a device that holds readings.

        Raises:
            StorageError: the state says readings are buffered but none is stored.
        """
        for found in self.readings(state, state.head):
            return found
        raise StorageError(f"device number {state.number} has readings but no head")

    def journal_group(self, record: int, number: int) -> tuple[int, list[bytes]]:
        """A device's segment of a journal record: (first sequence, records)."""
        groups = self._chunks.get(record)
        if groups is None:
            value = self._journal.get(U64.pack(record)) if self._journal is not None else None
            if value is None:
                raise StorageError(f"journal record {record} is missing")
            segments, records = journal_records(value)
            groups = self._chunks[record] = {
                s.number: (s.first, r) for s, r in zip(segments, records, strict=True)
            }
        return groups[number]

    def _from_sealed(self, state: DeviceState, seq: int, limit: int) -> Iterator[tuple[int, bytes]]:
        txn, db = self._sealed()
        for _, first, value in sealed_chunks(txn.cursor(db=db), state.number, state.sealed_from):
            if first >= limit:
                return
            if first + sealed_count(value) <= seq:
                continue
            for offset, record in enumerate(sealed_records(value)):
                at = first + offset
                if at >= limit:
                    return
                if at >= seq and state.is_live(at):
                    yield at, record


def sealed_chunks(
    cursor: lmdb.Cursor, number: int, sealed_from: int
) -> Iterator[tuple[int, int, bytes]]:
    """(seal, first sequence, chunk) of a FIFO's sealed chunks from seal `sealed_from` on.

    In sequence order: a FIFO's readings are sealed once each, older ones in older seals. Each
    step is one B-tree search, and seals holding none of the FIFO's chunks cost one each. The
    caller may delete the chunk just yielded with `cursor.delete()`.
    """
    seal = sealed_from
    if seal == NO_SEAL or not cursor.set_range(SEALED_KEY.pack(seal, number, 0)):
        return
    while key := cursor.key():
        at, owner, first = SEALED_KEY.unpack(key)
        if at == seal and owner == number:
            yield at, first, bytes(cursor.value())
            # A deletion has moved the cursor on already.
            if cursor.key() == key and not cursor.next():
                return
            continue
        # Past the FIFO's chunks in this seal: on to the next seal that may hold some.
        seal = max(at, seal + 1)
        if seal >= NO_SEAL or not cursor.set_range(SEALED_KEY.pack(seal, number, 0)):
            return
