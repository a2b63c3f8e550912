"""Walking one device's buffered readings in order, across its sealed chunks and the journal.

A device's older readings are in sealed chunks (key: seal, FIFO number, first sequence), its
newer ones in journal chunks (gateway/buffer/core/journalindex.py lists them); whichever sequences
the device's state says are gone (before its head, in its gap) are skipped, since chunks are deleted
lazily. Each journal chunk is decompressed once per walker, however many devices it serves.

A chunk that fails its checksum or cannot be decoded raises `DamagedChunkError` before any of its
readings is yielded; the buffer sets it aside (gateway/buffer/damage.py) and walks again, and a
sealed chunk set aside but not yet deleted is passed by (`skipped`).
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from gateway.buffer.core.chunk import (
    DECODE_ERRORS,
    is_sealed_intact,
    journal_records,
    sealed_count,
    sealed_records,
)
from gateway.buffer.core.ledger import NO_SEAL, SEALED_KEY, U64
from gateway.errors import DamagedChunkError, StorageError

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterator

    import lmdb

    from gateway.buffer.core.journalindex import JournalIndex
    from gateway.buffer.core.ledger import DeviceState

# (first sequence, records) of each device's segment in one journal chunk, by FIFO number.
Groups = dict[int, tuple[int, list[bytes]]]
# Decompressed chunks kept between reads: a bound on memory whatever the backlog (the default;
# `[buffer] decoded_cache_bytes`, gateway/config/sections.py, sizes it from the capacity).
MAX_DECODED_BYTES = 16 << 20
# Keys of decoded journal chunks in the cache (sealed ones start with b"s").
JOURNAL_PREFIX = b"j"


class FifoWalker:
    """Reads readings of any device inside the caller's transactions."""

    def __init__(
        self,
        sealed: Callable[[], tuple[lmdb.Transaction, Any]],
        journal: lmdb.Transaction | None,
        index: JournalIndex,
        decoded: DecodedChunks | None = None,
        skipped: Collection[bytes] = (),
    ) -> None:
        """`sealed`: the store's transaction and sealed database, opened on first need.

        `decoded`: chunks decompressed before, shared between walkers (chunks never change, and
        their keys are never used again). `skipped`: keys of sealed chunks set aside as damaged.
        """
        self._sealed = sealed
        self._journal = journal
        self._index = index
        self._decoded = decoded if decoded is not None else DecodedChunks()
        self._skipped = skipped
        # The last chunk decoded too big for `decoded` to hold: a journal chunk serves every
        # device of its commit, and a read or delete walks them one after the other.
        self._oversized: tuple[bytes, Any] | None = None

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
        key = U64.pack(record)

        def decode() -> tuple[Groups, int]:
            value = self._journal.get(key) if self._journal is not None else None
            if value is None:
                raise StorageError(f"journal record {record} is missing")
            try:
                segments, records = journal_records(value)
            except DECODE_ERRORS as exc:
                raise DamagedChunkError("journal", key, str(exc)) from exc
            groups = {s.number: (s.first, r) for s, r in zip(segments, records, strict=True)}
            return groups, sum(len(r) for rs in records for r in rs)

        groups: Groups = self._chunk(JOURNAL_PREFIX + key, decode)
        return groups[number]

    def _chunk(self, key: bytes, decode: Callable[[], tuple[Any, int]]) -> Any:  # noqa: ANN401 - what `decode` returns
        """The decoded chunk under `key`: from `decoded`, else decoded once for this walk.

        Kept by the walker rather than by `decoded`, a chunk bigger than the bound lasts for one
        read (one lock hold) only; without it, a read of N devices of one commit would decode
        the commit's chunk N times.
        """
        if self._oversized is not None and self._oversized[0] == key:
            return self._oversized[1]
        value = self._decoded.get(key, decode)
        if key not in self._decoded:
            self._oversized = (key, value)
        return value

    def _from_sealed(self, state: DeviceState, seq: int, limit: int) -> Iterator[tuple[int, bytes]]:
        txn, db = self._sealed()
        for seal, first, value in sealed_chunks(txn.cursor(db=db), state.number, state.sealed_from):
            if first >= limit:
                return
            sealed_key = SEALED_KEY.pack(seal, state.number, first)
            if sealed_key in self._skipped or not self._is_after(sealed_key, value, seq):
                continue
            records: list[bytes] = self._chunk(
                b"s" + sealed_key, functools.partial(_decode_sealed, sealed_key, value)
            )
            end = first + len(records)
            low, high = max(seq, state.head, first), min(limit, state.next, end)
            # Only a gap makes a reading between the head and the tail not live.
            gap = state.gap_start < high and state.gap_end > max(low, state.gap_start)
            for at in range(low, high):
                if not gap or state.is_live(at):
                    yield at, records[at - first]
            if end >= limit:
                return

    def _is_after(self, sealed_key: bytes, value: bytes, seq: int) -> bool:
        """Whether a sealed chunk holds sequences from `seq` on (checked for damage first).

        Raises:
            DamagedChunkError: the chunk fails its checksum, so its count cannot be trusted.
        """
        if b"s" + sealed_key not in self._decoded and not is_sealed_intact(value):
            raise DamagedChunkError("sealed", sealed_key, "checksum mismatch")
        first: int = SEALED_KEY.unpack(sealed_key)[2]
        return first + sealed_count(value) > seq


def _decode_sealed(sealed_key: bytes, value: bytes) -> tuple[list[bytes], int]:
    try:
        records = sealed_records(value)
    except DECODE_ERRORS as exc:
        raise DamagedChunkError("sealed", sealed_key, str(exc)) from exc
    return records, sum(len(r) for r in records)


class DecodedChunks:
    """Decompressed chunks, the least recently used dropped past `max_bytes`.

    A flush reads a batch, deletes it, and finds the new head in the same chunks: decompressed
    once, not three times. The records held never pass `max_bytes`: a chunk bigger than that is
    not held at all (each read decompresses it again), so that the bound is the memory used.
    """

    def __init__(self, max_bytes: int = MAX_DECODED_BYTES) -> None:
        """Hold up to `max_bytes` of decompressed records."""
        self._max_bytes = max_bytes
        self._bytes = 0
        self._entries: OrderedDict[bytes, tuple[Any, int]] = OrderedDict()

    def __contains__(self, key: bytes) -> bool:
        """Whether the chunk under `key` is held decoded."""
        return key in self._entries

    def get(self, key: bytes, decode: Callable[[], tuple[Any, int]]) -> Any:  # noqa: ANN401 - what `decode` returns
        """The decoded chunk under `key`, decoding it (value, size) if not held."""
        held = self._entries.get(key)
        if held is not None:
            self._entries.move_to_end(key)
            return held[0]
        value, size = decode()
        self.put(key, value, size)
        return value

    @property
    def nbytes(self) -> int:
        """Bytes of the records held."""
        return self._bytes

    def clear(self) -> None:
        """Forget every chunk held."""
        self._entries.clear()
        self._bytes = 0

    def put(self, key: bytes, value: Any, size: int) -> None:  # noqa: ANN401 - as `get` returns
        """Hold a chunk decoded elsewhere (`size`: its records' bytes); `key` must be new."""
        if size > self._max_bytes:
            return
        self._entries[key] = (value, size)
        self._bytes += size
        while self._bytes > self._max_bytes:
            _, (_, dropped) = self._entries.popitem(last=False)
            self._bytes -= dropped


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


class Walking:
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
        skipped: Collection[bytes] = (),
    ) -> None:
        """Walk in `journal_txn` and `store_txn` where given, else in read transactions of its own.

        `skipped`: keys of sealed chunks set aside as damaged (gateway/buffer/damage.py).
        """
        self._env, self._journal, self._db, self._index = env, journal, sealed_db, index
        self._skipped = skipped
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
        """The walker, with the transactions it lacked begun."""
        journal_txn = self._given
        if journal_txn is None:
            journal_txn = self._journal.begin() if self._journal is not None else None
            self._own_journal = journal_txn
        else:
            self._own_journal = None
        return FifoWalker(self._sealed, journal_txn, self._index, self._decoded, self._skipped)

    def __exit__(self, *exc: object) -> None:
        """End the transactions it began."""
        for txn in self._txns:
            txn.abort()
        if self._own_journal is not None:
            self._own_journal.abort()
