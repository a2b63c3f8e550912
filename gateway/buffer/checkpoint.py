"""The buffer's checkpoint: what group commits leave in memory, written to the store at intervals.

A group commit writes one journal chunk and nothing else; deliveries and drops only move heads and
gaps in the ledger. Every `CHECKPOINT_INTERVAL_S` (and when the buffer closes, or a dead letter
must move atomically with its deletion) one transaction of the store writes what changed since
the last one: the FIFOs' accounting, the totals, the newest values noted, and how far into the
journal that accounting reaches (`applied`). Then the journal records nothing is buffered in any
more are deleted, and the sealed chunks that every reading of has gone.

Sealing: when the journal holds more than `SEAL_READINGS` readings or `SEAL_RECORDS` records
(the database is down, or a slow device keeps old records alive), the checkpoint also copies every
buffered reading of the journal into sealed chunks of one device each (key: seal number, FIFO
number, first sequence) and then deletes the whole journal. That bounds the journal and the memory
that indexes it whatever the backlog, and lets a drop of one device's oldest readings free their
space. Seals are numbered in order, so a seal appends at the right edge of the `sealed` B-tree
and leaves older seals' pages alone; each FIFO's state names the oldest seal that may hold its
chunks. Keyed by FIFO first, each seal rewrote every leaf of the tree: with 1,000 devices in a
2 MiB buffer the copies outgrew the map and even deletes failed; keyed by seal, the same buffer
holds 36,800 readings (16,400 before, when it could still be emptied at all), and deletes run
in key order so that emptied leaves are reused inside the transaction.

A restart reads the checkpoint and replays the journal records after `applied` (at most one
interval of them, plus whatever the journal holds unsealed), so the accounting after kill -9 is
exactly what the journal and sealed chunks hold. What a checkpoint had not written yet of the
deliveries comes back as buffered and is delivered again, which the design allows (DESIGN
invariant 6: InfluxDB overwrites an identical point).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from gateway.buffer.core.chunk import (
    JournalHeader,
    Segment,
    encode_sealed,
    journal_header,
    journal_records,
    sealed_count,
)
from gateway.buffer.core.journalindex import JournalIndex
from gateway.buffer.core.ledger import (
    NEWEST_NONE,
    NO_SEAL,
    SEALED_KEY,
    TOTALS,
    U32,
    U64,
    DeviceState,
    Ledger,
)
from gateway.buffer.transaction import PRUNE_FLOOR_ENTRIES, read_ledger
from gateway.errors import StorageError
from gateway.points.record import timestamp_of

if TYPE_CHECKING:
    from collections.abc import Container

    import lmdb

    from gateway.buffer.fiforead import FifoWalker
    from gateway.buffer.latest import LatestTable
    from gateway.buffer.transaction import Tables

CHECKPOINT_INTERVAL_S = 2.0
SEAL_READINGS = 131_072
SEAL_RECORDS = 4096
# The journal is sealed, too, once its records take this fraction of the capacity: drops free
# space in sealed chunks, not in journal chunks that other devices' readings keep.
SEAL_CAPACITY_FRACTION = 1 / 16
# The most readings one sealed chunk holds: a read decompresses a whole chunk.
SEALED_CHUNK_READINGS = 1024


def is_seal_due(index: JournalIndex, capacity_bytes: int) -> bool:
    """Whether the journal has grown enough to be sealed."""
    return (
        index.readings >= SEAL_READINGS
        or index.records >= SEAL_RECORDS
        or index.nbytes >= capacity_bytes * SEAL_CAPACITY_FRACTION
    )


def write(  # noqa: PLR0917 - the checkpoint's parts, named at its one call site
    txn: lmdb.Transaction,
    tables: Tables,
    ledger: Ledger,
    walker: FifoWalker,
    index: JournalIndex,
    latest: LatestTable | None,
    *,
    seal: bool,
    notes: dict[bytes, bytes] | None = None,
) -> Written:
    """Write the checkpoint (and seal the journal if `seal`) into the store's transaction.

    The ledger is left as it is: the caller applies what was written once the transaction
    committed (`Written.apply`), so a checkpoint that fails changes nothing.
    """
    written = Written()
    dirty = {
        state.number: (fifo, state)
        for fifo in ledger.dirty
        if (state := ledger.states.get(fifo)) is not None
    }
    targets: dict[int, tuple[int, int | None]] = {
        number: (state.sealed_from, state.head) for number, (_, state) in dirty.items()
    }
    targets.update((number, (seal, None)) for number, seal in ledger.retired.items())
    for number, left in _delete_dead_chunks(txn, tables.sealed, targets).items():
        if number in dirty and left != dirty[number][1].sealed_from:
            written.sealed_from[dirty[number][0]] = left
    for fifo, state in dirty.values():
        moved = written.sealed_from.get(fifo, state.sealed_from)
        txn.put(fifo.encode(), replace(state, sealed_from=moved).pack(), db=tables.devices)
    for fifo in ledger.forgotten:
        txn.delete(fifo.encode(), db=tables.devices)
    # Stored as the record after the last one, so that "none" needs no special value.
    after_applied = U64.pack(ledger.next_record)
    if seal:
        _seal(txn, tables, ledger, walker, index, written)
        txn.put(b"sealed_through", after_applied, db=tables.meta)
        txn.put(b"next_seal", U32.pack(ledger.next_seal + 1), db=tables.meta)
        written.sealed = True
    if latest is not None:
        latest.write(txn)
    for key, value in (notes or {}).items():
        txn.put(key, value, db=tables.notes)
    txn.put(b"totals", TOTALS.pack(ledger.readings, ledger.nbytes), db=tables.meta)
    txn.put(b"next_device", U32.pack(ledger.next_device), db=tables.meta)
    txn.put(b"applied", after_applied, db=tables.meta)
    return written


def is_pruning_due(ledger: Ledger, *, under_pressure: bool) -> bool:
    """Whether idle FIFO entries are worth forgetting: many of them, or the map nearly full.

    Not for a few: each one forgotten comes back with a new number (and its name in a journal
    record) when its device sends again.
    """
    entries = len(ledger.states)
    if ledger.active >= entries:
        return False
    return under_pressure or (entries >= PRUNE_FLOOR_ENTRIES and entries >= 2 * ledger.active)


def idle_fifos(ledger: Ledger, keep: Container[str], *, under_pressure: bool) -> set[str]:
    """FIFOs whose entries the next checkpoint forgets: no readings, and none in `keep`.

    A group commit forgets idle entries too, but inside a commit that the page guard may
    refuse: a small buffer full of idle entries would then refuse every reading for good.
    Only those idle since the last checkpoint (not in `ledger.dirty`) go, so that a device
    whose readings were delivered a moment ago keeps its entry; near a full map, all go.
    """
    if not is_pruning_due(ledger, under_pressure=under_pressure):
        return set()
    return {
        fifo
        for fifo, state in ledger.states.items()
        if not state.readings and fifo not in keep and (under_pressure or fifo not in ledger.dirty)
    }


@dataclass
class Written:
    """What a checkpoint changed besides the disk: applied to the ledger after it committed."""

    # FIFO -> its new `sealed_from`, where chunks were deleted or its first chunk sealed.
    sealed_from: dict[str, int] = field(default_factory=dict)
    sealed: bool = False

    def apply(self, ledger: Ledger) -> None:
        """Take the checkpoint's changes into the ledger it was written from."""
        for fifo, sealed_from in self.sealed_from.items():
            state = ledger.states.get(fifo)
            if state is not None:
                state.sealed_from = sealed_from
        if self.sealed:
            ledger.next_seal += 1
            ledger.sealed_through = ledger.next_record - 1
            ledger.retired.clear()
        else:
            for number in ledger.retired:
                ledger.retired[number] = NO_SEAL
        ledger.applied = ledger.next_record - 1
        ledger.dirty.clear()
        ledger.forgotten.clear()


def _seal(  # noqa: PLR0917 - the checkpoint's parts
    txn: lmdb.Transaction,
    tables: Tables,
    ledger: Ledger,
    walker: FifoWalker,
    index: JournalIndex,
    written: Written,
) -> None:
    """Copy every buffered reading of the journal into sealed chunks of one device each.

    Keys grow within the seal (FIFO number, then sequence) and past every older seal's, so
    each put appends at the B-tree's right edge and leaves the older seals' pages untouched.
    """
    seal = ledger.next_seal
    by_number = {state.number: (fifo, state) for fifo, state in ledger.states.items()}

    def put(number: int, first: int, run: list[bytes]) -> None:
        if not txn.put(
            SEALED_KEY.pack(seal, number, first), encode_sealed(run), append=True, db=tables.sealed
        ):
            raise StorageError(f"sealed chunk of seal {seal} is out of order")

    for number in sorted(index.numbers()):
        fifo, state = by_number.get(number, ("", None))
        first = index.first_seq(number)
        if state is None or not state.readings or first is None:
            continue
        run: list[bytes] = []
        run_first = 0
        for seq, value in walker.readings(state, max(first, state.head)):
            if run and (seq != run_first + len(run) or len(run) >= SEALED_CHUNK_READINGS):
                put(number, run_first, run)
                run = []
            if not run:
                run_first = seq
            run.append(value)
        if run:
            put(number, run_first, run)
            sealed_from = written.sealed_from.get(fifo, state.sealed_from)
            if sealed_from == NO_SEAL:
                written.sealed_from[fifo] = seal
                state = replace(state, sealed_from=seal)
                txn.put(fifo.encode(), state.pack(), db=tables.devices)


def _delete_dead_chunks(
    txn: lmdb.Transaction,
    db: Any,  # noqa: ANN401 - an LMDB handle
    targets: dict[int, tuple[int, int | None]],
) -> dict[int, int]:
    """Delete sealed chunks that end at or before their FIFO's head (all of them: head None).

    `targets`: FIFO number -> (its `sealed_from`, its head). In key order, seal by seal: a leaf
    page that empties is freed inside the transaction and taken again for the next one, so even
    deleting everything needs few free pages, where a FIFO-by-FIFO order would copy every leaf
    before freeing any. Returns FIFO number -> the seal of its first chunk left (NO_SEAL: none).
    """
    pending = {number: target for number, target in targets.items() if target[0] != NO_SEAL}
    left = dict.fromkeys(pending, NO_SEAL)
    cursor = txn.cursor(db=db)
    seal = min((sealed_from for sealed_from, _ in pending.values()), default=NO_SEAL)
    while pending and seal < NO_SEAL:
        for number in sorted(n for n, (sealed_from, _) in pending.items() if sealed_from <= seal):
            head = pending[number][1]
            found = cursor.set_range(SEALED_KEY.pack(seal, number, 0))
            while found and (key := cursor.key()):
                at, owner, first = SEALED_KEY.unpack(key)
                if (at, owner) != (seal, number):
                    break
                if head is not None and first + sealed_count(cursor.value()) > head:
                    left[number] = seal
                    del pending[number]
                    break
                found = cursor.delete()
        if not cursor.set_range(SEALED_KEY.pack(seal + 1, 0, 0)):
            break
        seal = SEALED_KEY.unpack(cursor.key())[0]
    return left


def delete_journal(journal: lmdb.Transaction, records: list[int]) -> None:
    """Delete journal records by number."""
    for record in records:
        journal.delete(U64.pack(record))


def delete_journal_through(journal: lmdb.Transaction, last: int) -> list[int]:
    """Delete every journal record up to `last`; returns their numbers."""
    cursor = journal.cursor()
    deleted = []
    if cursor.first():
        while True:
            key = cursor.key()
            if not key or U64.unpack(key)[0] > last:
                break
            deleted.append(U64.unpack(key)[0])
            if not cursor.delete():
                break
    return deleted


def recover(
    env: lmdb.Environment,
    journal: lmdb.Environment | None,
    tables: Tables,
    latest: LatestTable | None,
) -> tuple[Ledger, JournalIndex, dict[bytes, bytes]]:
    """The accounting and journal index: the checkpoint with the journal after it replayed.

    Also the notes of the replayed records, which the next checkpoint writes to the store.
    """
    unwritten: dict[bytes, bytes] = {}
    with env.begin() as txn:
        stored = read_ledger(txn, tables)
    index = JournalIndex()
    replay = _Replay(stored.states, latest)
    last = -1
    if journal is not None:
        with journal.begin() as jtxn:
            for key, value in jtxn.cursor():
                record = last = U64.unpack(key)[0]
                if record <= stored.sealed_through:
                    index.add(record, [])  # sealed already: deleted at the next checkpoint
                    continue
                header = journal_header(value)
                if record > stored.applied:
                    replay.apply(header, value)
                    unwritten.update(header.notes)
                index.add(record, replay.live(header), len(value))
    states = replay.states
    ledger = Ledger(states, stored.readings + replay.readings, stored.nbytes + replay.nbytes)
    ledger.next_device = max(
        stored.next_device, max((s.number + 1 for s in states.values()), default=0)
    )
    ledger.applied, ledger.sealed_through = stored.applied, stored.sealed_through
    ledger.next_seal = stored.next_seal
    ledger.next_record = max(last, stored.applied, stored.sealed_through) + 1
    ledger.dirty = replay.replayed
    return ledger, index, unwritten


def read_notes(txn: lmdb.Transaction, tables: Tables, prefix: bytes) -> dict[bytes, bytes]:
    """The notes under `prefix` that the last checkpoint wrote."""
    found: dict[bytes, bytes] = {}
    if tables.notes is None:
        return found
    cursor = txn.cursor(db=tables.notes)
    if cursor.set_range(prefix):
        for key, value in cursor:
            if not bytes(key).startswith(prefix):
                break
            found[bytes(key)] = bytes(value)
    return found


class _Replay:
    """Journal records past the checkpoint, applied to its accounting."""

    def __init__(self, states: dict[str, DeviceState], latest: LatestTable | None) -> None:
        self.states = states
        self.names = {state.number: name for name, state in states.items()}
        self.latest = latest
        self.readings = self.nbytes = 0
        self.replayed: set[str] = set()
        self.now_ns = time.time_ns()

    def apply(self, header: JournalHeader, value: bytes | memoryview) -> None:
        """Take a record's appends into the accounting and its values into the latest."""
        for number, name in header.names:
            _adopt_name(self.states, self.names, number, name)
        for segment in header.segments:
            name = self.names[segment.number]
            state = self.states[name]
            if not state.readings:
                state.head = segment.first
                state.gap_start = state.gap_end = 0
                state.oldest_ts_ns = segment.first_ts_ns
                state.newest_ts_ns = NEWEST_NONE
            state.next = segment.end
            state.readings += segment.count
            state.nbytes += segment.nbytes
            self.readings += segment.count
            self.nbytes += segment.nbytes
            self.replayed.add(name)
        segments, groups = journal_records(bytes(value))
        for segment, records in zip(segments, groups, strict=True):
            state = self.states[self.names[segment.number]]
            state.note_newest(max(timestamp_of(record) for record in records))
        if self.latest is not None:
            self.latest.note(_placed(segments, groups, self.names), self.now_ns)

    def live(self, header: JournalHeader) -> list[Segment]:
        """The record's segments holding a buffered reading."""
        live = []
        for segment in header.segments:
            name = self.names.get(segment.number)
            if name is not None and segment.end > self.states[name].head:
                live.append(segment)
        return live


def _adopt_name(
    states: dict[str, DeviceState], names: dict[int, str], number: int, name: str
) -> None:
    """A FIFO that a replayed commit created; an entry it replaced was forgotten before."""
    previous = names.get(number)
    if previous is not None and previous != name:
        states.pop(previous, None)
    old = states.get(name)
    if old is not None and old.number != number:
        names.pop(old.number, None)
    if old is None or old.number != number:
        states[name] = DeviceState(number, 0, 0, 0, 0, 0)
    names[number] = name


def _placed(
    segments: list[Segment], groups: list[list[bytes]], names: dict[int, str]
) -> list[tuple[str, int, int, bytes]]:
    return [
        (names[segment.number], segment.number, segment.first + offset, record)
        for segment, records in zip(segments, groups, strict=True)
        for offset, record in enumerate(records)
    ]
