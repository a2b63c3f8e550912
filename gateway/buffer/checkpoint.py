"""The buffer's checkpoint: what group commits leave in memory, written to the store at intervals.

A group commit writes one journal chunk and nothing else; the chunk also carries the states of
the FIFOs whose heads and gaps deliveries and drops moved since the chunk before. Every
`CHECKPOINT_INTERVAL_S` (and when the buffer closes, or a dead letter must move atomically with its
deletion) one transaction of the store writes what changed since the last one: the FIFOs'
accounting, the totals, the newest values noted, and how far into the journal that accounting
reaches (`applied`); it deletes the sealed chunks that every reading of has gone. The journal
records nothing is buffered in any more are deleted after it (gateway/buffer/checkpointer.py has
the order and why).

Sealing: when the journal holds more than `SEAL_READINGS` readings or `SEAL_RECORDS` records
(the database is down, or a slow device keeps old records alive), every buffered reading of the
journal is copied, in steps, into sealed chunks of one device each (key: seal number, FIFO
number, first sequence; gateway/buffer/sealing.py), a checkpoint names the seal complete, and
the sealed records are deleted. That bounds the journal and the memory that indexes it whatever
the backlog, and lets a drop of one device's oldest readings free their space. Seals are
numbered in order, so a seal writes at the right edge of the `sealed` B-tree and leaves older
seals' pages alone; each FIFO's state names the oldest seal that may hold its
chunks. Keyed by FIFO first, each seal rewrote every leaf of the tree: with 1,000 devices in a
2 MiB buffer the copies outgrew the map and even deletes failed; keyed by seal, the same buffer
holds 36,800 readings (16,400 before, when it could still be emptied at all), and deletes run
in key order so that emptied leaves are reused inside the transaction.

A restart reads the checkpoint and replays the journal records after `applied` (at most one
interval of them, plus whatever the journal holds unsealed), so the accounting after kill -9 is
exactly what the journal and sealed chunks hold. Each record also carries the states of the FIFOs
whose readings were delivered or dropped since the record before it, which the replay sets after
the record's appends: what comes back as buffered and is delivered again is only what was
delivered after the last group commit (DESIGN invariant 6 allows it: InfluxDB overwrites an
identical point). A record that fails its checksum is set aside (gateway/buffer/damage.py); the
sequences later records skip are what it held.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from gateway.buffer.core.chunk import (
    DECODE_ERRORS,
    READING_OVERHEAD,
    JournalHeader,
    Segment,
    State,
    is_sealed_intact,
    journal_contents,
    journal_header,
    sealed_count,
)
from gateway.buffer.core.damage import JOURNAL_KIND, take_range
from gateway.buffer.core.devicekeys import device_entry, device_key
from gateway.buffer.core.fence import NOTE as FENCE_NOTE
from gateway.buffer.core.journalindex import JournalIndex
from gateway.buffer.core.ledger import (
    LEVEL_SEPARATOR,
    NEWEST_NONE,
    NO_SEAL,
    SEALED_KEY,
    TOTALS,
    U32,
    U64,
    DeviceState,
    Ledger,
    fifo_level,
)
from gateway.buffer.transaction import PRUNE_FLOOR_ENTRIES, read_ledger
from gateway.points.record import timestamp_of

if TYPE_CHECKING:
    from collections.abc import Container

    import lmdb

    from gateway.buffer.core.fence import Fence
    from gateway.buffer.latest import LatestTable
    from gateway.buffer.sealing import Sealing
    from gateway.buffer.transaction import Tables

CHECKPOINT_INTERVAL_S = 2.0
SEAL_READINGS = 131_072
SEAL_RECORDS = 4096
# The journal is sealed, too, once its records take this fraction of the capacity: drops free
# space in sealed chunks, not in journal chunks that other devices' readings keep.
SEAL_CAPACITY_FRACTION = 1 / 16


def is_seal_due(index: JournalIndex, capacity_bytes: int) -> bool:
    """Whether the journal has grown enough to be sealed."""
    return (
        index.readings >= SEAL_READINGS
        or index.records >= SEAL_RECORDS
        or index.live_nbytes >= capacity_bytes * SEAL_CAPACITY_FRACTION
    )


def write(
    txn: lmdb.Transaction,
    tables: Tables,
    ledger: Ledger,
    latest: LatestTable | None,
    *,
    sealing: Sealing | None = None,
    below_seal: int = NO_SEAL,
    notes: dict[bytes, bytes] | None = None,
) -> Written:
    """Write the checkpoint into the store's transaction, completing `sealing` if given.

    `sealing` has copied every buffered reading of the journal up to its cut (gateway/buffer/
    sealing.py): this checkpoint names it complete. `below_seal`: chunks of this seal and later
    belong to a seal still in progress and are left alone. The ledger is left as it is: the
    caller applies what was written once the transaction committed (`Written.apply`), so a
    checkpoint that fails changes nothing.
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
    retired = ledger.retired
    if sealing is not None:
        # A retired number's chunks go before it may be given out again, this seal's included.
        retired = {n: min(s, sealing.seal) for n, s in retired.items()}
    targets.update((number, (seal, None)) for number, seal in retired.items())
    for number, left in _delete_dead_chunks(txn, tables.sealed, targets, below_seal).items():
        if number in dirty and left != dirty[number][1].sealed_from:
            written.sealed_from[dirty[number][0]] = left
    rewritten = dict(dirty.values())
    if sealing is not None:
        rewritten.update(_first_sealed(ledger, sealing, written))
    for fifo, state in rewritten.items():
        moved = written.sealed_from.get(fifo, state.sealed_from)
        txn.put(*device_entry(fifo, replace(state, sealed_from=moved)), db=tables.devices)
    for fifo in ledger.forgotten:
        txn.delete(device_key(fifo), db=tables.devices)
    # Stored as the record after the last one, so that "none" needs no special value.
    if sealing is not None:
        txn.put(b"sealed_through", U64.pack(sealing.cut + 1), db=tables.meta)
        txn.put(b"next_seal", U32.pack(sealing.seal + 1), db=tables.meta)
        written.sealing = sealing
    if latest is not None:
        latest.write(txn)
    _write_notes(txn, tables, notes or {})
    txn.put(b"totals", TOTALS.pack(ledger.readings, ledger.nbytes), db=tables.meta)
    txn.put(b"next_device", U32.pack(ledger.next_device), db=tables.meta)
    txn.put(b"applied", U64.pack(ledger.next_record), db=tables.meta)
    return written


def _write_notes(txn: lmdb.Transaction, tables: Tables, notes: dict[bytes, bytes]) -> None:
    for key, value in notes.items():
        # An empty note is one that goes (a sink's position the head has reached).
        if value:
            txn.put(key, value, db=tables.notes)
        else:
            txn.delete(key, db=tables.notes)


def _first_sealed(ledger: Ledger, sealing: Sealing, written: Written) -> dict[str, DeviceState]:
    """FIFOs whose first sealed chunk is in the seal being completed, now pointed at it."""
    found = {}
    for number in sealing.sealed_numbers:
        fifo = sealing.names[number]
        state = ledger.states.get(fifo)
        if state is None or state.number != number:
            continue
        if written.sealed_from.get(fifo, state.sealed_from) == NO_SEAL:
            written.sealed_from[fifo] = sealing.seal
            found[fifo] = state
    return found


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
    # The seal this checkpoint completed, if any.
    sealing: Sealing | None = None

    def apply(self, ledger: Ledger) -> None:
        """Take the checkpoint's changes into the ledger it was written from."""
        for fifo, sealed_from in self.sealed_from.items():
            state = ledger.states.get(fifo)
            if state is not None:
                state.sealed_from = sealed_from
        if self.sealing is not None:
            ledger.next_seal = self.sealing.seal + 1
            ledger.sealed_through = self.sealing.cut
            for number in self.sealing.retired:
                ledger.retired.pop(number, None)
        for number in ledger.retired:
            ledger.retired[number] = NO_SEAL
        ledger.applied = ledger.next_record - 1
        ledger.dirty.clear()
        ledger.forgotten.clear()


def _delete_dead_chunks(
    txn: lmdb.Transaction,
    db: Any,  # noqa: ANN401 - an LMDB handle
    targets: dict[int, tuple[int, int | None]],
    below_seal: int = NO_SEAL,
) -> dict[int, int]:
    """Delete sealed chunks that end at or before their FIFO's head (all of them: head None).

    Seals from `below_seal` on are in progress and left alone.

    `targets`: FIFO number -> (its `sealed_from`, its head). In key order, seal by seal: a leaf
    page that empties is freed inside the transaction and taken again for the next one, so even
    deleting everything needs few free pages, where a FIFO-by-FIFO order would copy every leaf
    before freeing any. Returns FIFO number -> the seal of its first chunk left (NO_SEAL: none).
    """
    pending = {number: target for number, target in targets.items() if target[0] != NO_SEAL}
    left = dict.fromkeys(pending, NO_SEAL)
    cursor = txn.cursor(db=db)
    seal = min((sealed_from for sealed_from, _ in pending.values()), default=NO_SEAL)
    while pending and seal < below_seal:
        for number in sorted(n for n, (sealed_from, _) in pending.items() if sealed_from <= seal):
            head = pending[number][1]
            found = cursor.set_range(SEALED_KEY.pack(seal, number, 0))
            while found and (key := cursor.key()):
                at, owner, first = SEALED_KEY.unpack(key)
                if (at, owner) != (seal, number):
                    break
                value = cursor.value()
                # A damaged chunk's count cannot be trusted: it stays until a read sets it
                # aside (gateway/buffer/damage.py).
                if head is not None and (
                    not is_sealed_intact(value) or first + sealed_count(value) > head
                ):
                    left[number] = seal
                    del pending[number]
                    break
                found = cursor.delete()
        if seal + 1 >= below_seal or not cursor.set_range(SEALED_KEY.pack(seal + 1, 0, 0)):
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


@dataclass
class Recovered:
    """What start-up found damaged in the journal (gateway/buffer/damage.py sets it aside)."""

    # (key, value) of journal records that failed their checksum or could not be decoded and
    # are not in the `damaged` table yet.
    records: list[tuple[bytes, bytes]] = field(default_factory=list)
    # FIFO -> readings lost with them, as the sequences later records skip show.
    lost: dict[str, int] = field(default_factory=dict)
    # A damaged record the checkpoint's accounting includes: only a scan can tell what it held.
    needs_scan: bool = False


def recover(
    env: lmdb.Environment,
    journal: lmdb.Environment | None,
    tables: Tables,
    latest: LatestTable | None,
    found: Recovered | None = None,
    *,
    fence: Fence | None = None,
) -> tuple[Ledger, JournalIndex, dict[bytes, bytes]]:
    """The accounting and journal index: the checkpoint with the journal after it replayed.

    Also the notes of the replayed records, which the next checkpoint writes to the store. A
    replayed record sets the states it carries after its appends, and the index forgets the
    segments those states' heads have passed. A damaged record is listed in `found`; it holds
    nothing readable any more, and the readings later records show missing are counted lost.
    `fence` learns the limits the checkpoint noted, then the admission records found
    (gateway/buffer/core/fence.py).
    """
    found = found if found is not None else Recovered()
    unwritten: dict[bytes, bytes] = {}
    with env.begin() as txn:
        stored = read_ledger(txn, tables)
        damaged_keys = _damaged_journal_keys(txn, tables)
        _fence_noted(txn, tables, fence)
    index = JournalIndex()
    replay = _Replay(stored.states, latest, fence)
    last = -1
    if journal is not None:
        with journal.begin() as jtxn:
            for key, value in jtxn.cursor():
                record = last = U64.unpack(key)[0]
                if record <= stored.sealed_through:
                    index.add(record, [])  # sealed already: deleted at the next checkpoint
                    continue
                try:
                    header = journal_header(value, verify=True)
                    if record > stored.applied:
                        replay.apply(header, value)
                        unwritten.update(header.notes)
                except DECODE_ERRORS:
                    index.add(record, [])  # nothing readable: deleted with the dead records
                    if bytes(key) not in damaged_keys:
                        found.records.append((bytes(key), bytes(value)))
                        found.needs_scan |= record <= stored.applied
                    continue
                index.add(record, replay.live(header), len(value))
                replay.fence_admitted(header)
                for number in replay.forgotten:
                    index.forget(number)
                for number in replay.moved:
                    index.advance(number, replay.states[replay.names[number]].head)
                replay.forgotten.clear()
                replay.moved.clear()
    found.lost = replay.settle_holes()
    for number in replay.moved:
        index.advance(number, replay.states[replay.names[number]].head)
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


def _fence_noted(txn: lmdb.Transaction, tables: Tables, fence: Fence | None) -> None:
    """Show `fence` the limits the checkpoint noted, before the journal's records.

    A seal takes records out of the journal, the newest too: their fence is in the note.
    """
    if fence is not None:
        fence.add_packed(read_notes(txn, tables, FENCE_NOTE).get(FENCE_NOTE, b""))


def _damaged_journal_keys(txn: lmdb.Transaction, tables: Tables) -> set[bytes]:
    """Keys of the journal records set aside before (gateway/buffer/damage.py)."""
    if tables.damaged is None:
        return set()
    cursor = txn.cursor(db=tables.damaged)
    keys = set()
    if cursor.set_range(JOURNAL_KIND):
        for key in cursor.iternext(keys=True, values=False):
            if not bytes(key).startswith(JOURNAL_KIND):
                break
            keys.add(bytes(key)[len(JOURNAL_KIND) :])
    return keys


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

    def __init__(
        self,
        states: dict[str, DeviceState],
        latest: LatestTable | None,
        fence: Fence | None = None,
    ) -> None:
        self.states = states
        self.fence = fence
        self.names = {state.number: name for name, state in states.items()}
        self.latest = latest
        self.readings = self.nbytes = 0
        self.replayed: set[str] = set()
        self.now_ns = time.time_ns()
        # FIFO numbers whose state a record set, and whose FIFO a record replaced, since the
        # caller last looked: the journal index follows them.
        self.moved: set[int] = set()
        self.forgotten: set[int] = set()
        # Sequences a record skipped (a damaged record held them), by FIFO number: [first,
        # end, timestamp of the reading at end, whether a state set since counts them].
        self.holes: dict[int, list[list[int]]] = {}

    def apply(self, header: JournalHeader, value: bytes | memoryview) -> None:
        """Take a record's appends into the accounting, then the states it carries.

        Raises:
            ValueError: the record is damaged (or another of chunk.DECODE_ERRORS), before any
                change to the accounting.
        """
        segments, groups, carried = journal_contents(bytes(value))
        for number, name in header.names:
            self._adopt_name(number, name)
        for segment in segments:
            state = self._state(segment.number)
            if segment.first > state.next:
                self.holes.setdefault(segment.number, []).append(
                    [state.next, segment.first, segment.first_ts_ns, 0]
                )
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
            self.replayed.add(self.names[segment.number])
        for segment, records in zip(segments, groups, strict=True):
            state = self.states[self.names[segment.number]]
            state.note_newest(max(timestamp_of(record) for record in records))
        for fields in carried:
            self._set_state(fields)
        if self.latest is not None:
            self.latest.note(_placed(segments, groups, self.names), self.now_ns)

    def _state(self, number: int) -> DeviceState:
        """The state of a FIFO number; one a damaged record named is kept as an orphan."""
        name = self.names.get(number)
        if name is None:
            # Its records carry their own device tag; integrity.repair names orphans alike.
            self._adopt_name(number, f"orphan-{number}")
            name = self.names[number]
        return self.states[name]

    def _set_state(self, fields: State) -> None:
        """Set a state a record carries; the totals follow by the difference."""
        number, head, next_seq, readings, nbytes, oldest, gap_start, gap_end, newest = fields
        name = self.names.get(number)
        if name is None:
            return  # its FIFO was forgotten and its name given to a new number since
        state = self.states[name]
        if head < state.head:
            # Only in a standby's journal: its primary, restarted after kill -9, delivers again
            # what the standby was told it had delivered, and a seal may have taken those
            # readings out since (gateway/buffer/replica.py keeps the head alike).
            return
        self.readings += readings - state.readings
        self.nbytes += nbytes - state.nbytes
        state.head, state.next = head, max(next_seq, state.next)
        state.readings, state.nbytes, state.oldest_ts_ns = readings, nbytes, oldest
        state.gap_start, state.gap_end, state.newest_ts_ns = gap_start, gap_end, newest
        self.replayed.add(name)
        self.moved.add(number)
        for hole in self.holes.get(number, ()):
            hole[3] = 1

    def settle_holes(self) -> dict[str, int]:
        """Take the readings of skipped sequences out of the accounting; returns FIFO -> lost.

        A state set after the skip was taken while the damaged record was still readable, so
        it counts the skipped readings still buffered; the appends alone never counted them.
        """
        lost: dict[str, int] = {}
        for number, holes in self.holes.items():
            name = self.names.get(number)
            if name is None:
                continue
            state = self.states[name]
            for first, end, end_ts_ns, counted in holes:
                if counted:
                    taken, freed = take_range(state, first, end)
                    self.readings -= taken
                    self.nbytes -= freed
                    if state.readings and state.head == end:
                        state.oldest_ts_ns = end_ts_ns
                    self.moved.add(number)
                else:
                    taken = end - first
                if taken:
                    lost[name] = lost.get(name, 0) + taken
                    self.replayed.add(name)
        return lost

    def fence_admitted(self, header: JournalHeader) -> None:
        """Show the fence a record's appends to devices' own FIFOs (a compaction's are none)."""
        if self.fence is not None:
            names = self.names
            raw = [
                s
                for s in header.segments
                if s.count and s.number in names and not fifo_level(names[s.number])
            ]
            # Sized as live records are (the readings' own bytes): a start-up fences the records
            # the run before it fenced, no more.
            nbytes = sum(s.nbytes - READING_OVERHEAD * s.count for s in raw)
            self.fence.add_replayed(((s.number, s.first, s.count) for s in raw), nbytes)

    def live(self, header: JournalHeader) -> list[Segment]:
        """The record's segments holding a buffered reading."""
        live = []
        for segment in header.segments:
            name = self.names.get(segment.number)
            if name is not None and segment.end > self.states[name].head:
                live.append(segment)
        return live

    def _adopt_name(self, number: int, name: str) -> None:
        """A FIFO that a replayed commit created; an entry it replaced was forgotten before.

        A replaced entry was empty when it was forgotten: what it still counts here are
        deliveries no record carried, so the totals drop them with it.
        """
        states, names = self.states, self.names
        previous = names.get(number)
        if previous is not None and previous != name:
            self._drop_state(states.pop(previous, None))
        old = states.get(name)
        if old is not None and old.number != number:
            names.pop(old.number, None)
            self._drop_state(old)
        if old is None or old.number != number:
            states[name] = DeviceState(number, 0, 0, 0, 0, 0)
        names[number] = name

    def _drop_state(self, state: DeviceState | None) -> None:
        if state is not None:
            self.readings -= state.readings
            self.nbytes -= state.nbytes
            self.forgotten.add(state.number)
            self.moved.discard(state.number)


def _placed(
    segments: list[Segment], groups: list[list[bytes]], names: dict[int, str]
) -> list[tuple[str, int, int, bytes]]:
    # Summaries (gateway/buffer/compaction.py) are not readings a device sent: never latest.
    return [
        (names[segment.number], segment.number, segment.first + offset, record)
        for segment, records in zip(segments, groups, strict=True)
        if LEVEL_SEPARATOR not in names[segment.number]
        for offset, record in enumerate(records)
    ]
