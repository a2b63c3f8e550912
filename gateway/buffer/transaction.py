"""One change to the buffer's FIFOs: appends, drops and deletes with their accounting.

The transaction works on copies of the ledger's entries it touches (gateway/buffer/core/
ledger.py) and hands back the change with `change`; the store has the ledger adopt it only after
LMDB committed, so the mirror never runs ahead of the disk. Appends become one journal chunk,
written by `finish`; drops and deletes only move heads and gaps. The chunk also carries the
states of the FIFOs whose readings were taken out since the previous chunk (`taken` here, and
the deliveries the store collected between commits), so that they reach the disk with the next
group commit; the checkpoint (gateway/buffer/checkpoint.py) writes them to the store, together
with the device names, totals and device numbers this module also reads back (`read_ledger`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from itertools import chain, takewhile
from typing import TYPE_CHECKING, Any

from gateway.buffer.core.chunk import (
    READING_OVERHEAD,
    Segment,
    State,
    encode_journal,
    reading_bytes,
)
from gateway.buffer.core.damage import settle_empty
from gateway.buffer.core.devicekeys import read_entry
from gateway.buffer.core.ledger import (
    NEWEST_NONE,
    TOTALS,
    U32,
    U32_MAX,
    U64,
    DeviceState,
    Ledger,
    LedgerChange,
)
from gateway.points.record import HEADER, timestamp_of

if TYPE_CHECKING:
    from collections.abc import Collection, Iterable, Iterator, Sequence

    import lmdb

    from gateway.buffer.fiforead import FifoWalker

logger = logging.getLogger(__name__)
# Idle FIFO entries are forgotten once there are this many entries and no more than half hold
# readings, so that device ids seen once (a firmware bug) do not pile up as keys.
PRUNE_FLOOR_ENTRIES = 10_000


@dataclass(frozen=True, slots=True)
class Tables:
    """The named databases of the buffer's store environment (py-lmdb's handles are untyped)."""

    sealed: Any
    devices: Any
    meta: Any
    dead: Any
    # Notes written with group commits (gateway/buffer/core/chunk.py); None in a read-only view
    # of a buffer from before notes.
    notes: Any = None
    # Chunks set aside as damaged (gateway/buffer/damage.py); None in a read-only view of a
    # buffer from before checksums.
    damaged: Any = None


def read_ledger(txn: lmdb.Transaction, tables: Tables) -> Ledger:
    """The accounting as the last checkpoint wrote it (gateway/buffer/checkpoint.py)."""
    states = dict(
        read_entry(bytes(key), bytes(value)) for key, value in txn.cursor(db=tables.devices)
    )
    raw = txn.get(b"totals", db=tables.meta)
    readings, nbytes = TOTALS.unpack(raw) if raw else (0, 0)
    ledger = Ledger(states, readings, nbytes)
    raw = txn.get(b"next_device", db=tables.meta)
    ledger.next_device = U32.unpack(raw)[0] if raw else 0
    raw = txn.get(b"next_seal", db=tables.meta)
    ledger.next_seal = U32.unpack(raw)[0] if raw else 0
    for name in ("applied", "sealed_through"):
        raw = txn.get(name.encode(), db=tables.meta)
        setattr(ledger, name, U64.unpack(raw)[0] - 1 if raw else -1)
    return ledger


def _join_before(state: DeviceState, start: int, limit: int | None) -> int | None:
    """Where a drop from `start` may stop once it freed enough; None: it may take nothing.

    Behind a lease, a gap beyond the start must be reached: the readings up to it go too.
    """
    if start == state.head:
        return start
    if limit is not None:
        return None
    if state.gap_end <= state.gap_start:
        return start
    # In flight past the gap's end, what follows would need a second gap.
    return state.gap_start if start <= state.gap_end else None


def _stopped_short(state: DeviceState, start: int, join_before: int, stop: int | None) -> bool:
    """Whether a drop from `start` must take a reading at or after `stop` to take any.

    It must reach `join_before`; and behind a lease with a gap further on, the run it takes may
    be the one just before the gap: a gap covers only readings taken.
    """
    if stop is None:
        return False
    return join_before > stop or (start != state.head and state.gap_start > max(start, stop))


def _before_gap(state: DeviceState, start: int, stop: int | None) -> bool:
    """Whether a drop from `start` may take the run just before the FIFO's gap."""
    has_gap = state.gap_end > state.gap_start
    return has_gap and start < state.gap_start and (stop is None or stop >= state.gap_start)


def _open_gap(state: DeviceState, start: int, end: int) -> None:
    """Sequences `start` to `end` - 1 went behind a lease: the FIFO's one gap takes them in.

    With a gap already, everything from `start` to it went too (the drop walked there), and
    what was taken after it.
    """
    if state.gap_end > state.gap_start:
        state.gap_start = min(start, state.gap_start)
        state.gap_end = max(state.gap_end, end)
    else:
        state.gap_start, state.gap_end = start, end


@dataclass(slots=True)
class _Appended:
    """The readings one transaction appends to one FIFO."""

    first: int
    first_ts_ns: int
    records: list[bytes] = field(default_factory=list)
    nbytes: int = 0


class FifoTransaction:
    """One change's view of the accounting; see the module docstring."""

    def __init__(self, ledger: Ledger, walker: FifoWalker) -> None:
        """Start from the committed `ledger`; it is only read here."""
        self._ledger = ledger
        self._walker = walker
        self._base = ledger.states
        self.changed: dict[str, DeviceState] = {}
        self.pruned: set[str] = set()
        # FIFOs this transaction emptied and then forgot, as they were when emptied.
        self._emptied: dict[str, DeviceState] = {}
        self.readings, self.nbytes = ledger.readings, ledger.nbytes
        self.active = ledger.active
        self._entries = len(self._base)
        self._next_device = ledger.next_device
        self._new_numbers: dict[int, str] = {}
        self._appended: dict[int, _Appended] = {}
        self._segments: list[Segment] | None = None
        self.chunk_bytes = 0
        # The journal chunk `finish` wrote, as a walker decodes it: (key, groups, record bytes).
        self.written: tuple[bytes, dict[int, tuple[int, list[bytes]]], int] | None = None
        # The journal chunk `finish` wrote, as stored (a standby is shipped it).
        self.record_value = b""

    def state(self, fifo: str) -> DeviceState | None:
        """The FIFO's accounting as this transaction has it, copied for change."""
        state = self.changed.get(fifo)
        if state is None and fifo not in self.pruned:
            base = self._base.get(fifo)
            if base is not None:
                state = self.changed[fifo] = DeviceState(*base.pack_fields())
        return state

    def active_states(self) -> Iterator[tuple[str, DeviceState]]:
        """Every FIFO holding readings, as this transaction has it."""
        for fifo, state in self._base.items():
            if fifo not in self.changed and state.readings:
                yield fifo, state
        for fifo, state in self.changed.items():
            if state.readings:
                yield fifo, state

    def store(self, fifo: str, value: bytes, size: int) -> None:
        """Append one packed reading to the FIFO's tail."""
        state = self.state(fifo)
        if state is None:
            if self._entries >= PRUNE_FLOOR_ENTRIES and self._entries >= 2 * self.active:
                self._prune_idle()
            number = self._new_number()
            self._new_numbers[number] = fifo
            state = self.changed[fifo] = DeviceState(number, 0, 0, 0, 0, 0)
            self.pruned.discard(fifo)
            self._entries += 1
        if not state.readings:
            state.head = state.next
            state.gap_start = state.gap_end = 0
            state.oldest_ts_ns = timestamp_of(value)
            state.newest_ts_ns = NEWEST_NONE
            self.active += 1
        self.append_to(state, value, size)

    def append_to(self, state: DeviceState, value: bytes, size: int) -> None:
        """Append to a FIFO that holds readings and whose state this transaction has."""
        ts_ns = timestamp_of(value)
        appended = self._appended.get(state.number)
        if appended is None:
            appended = self._appended[state.number] = _Appended(state.next, ts_ns)
        appended.records.append(value)
        appended.nbytes += size
        state.newest_ts_ns = max(state.newest_ts_ns, ts_ns)
        state.next += 1
        state.readings += 1
        state.nbytes += size
        self.readings += 1
        self.nbytes += size

    def append_run(self, state: DeviceState, values: list[bytes], size: int) -> None:
        """`append_to` for several readings of one FIFO at once; `size`: their bytes."""
        appended = self._appended.get(state.number)
        if appended is None:
            appended = self._appended[state.number] = _Appended(state.next, timestamp_of(values[0]))
        appended.records.extend(values)
        appended.nbytes += size
        unpack = HEADER.unpack_from
        newest = max(unpack(v)[0] for v in values)
        state.newest_ts_ns = max(state.newest_ts_ns, newest)
        added = len(values)
        state.next += added
        state.readings += added
        state.nbytes += size
        self.readings += added
        self.nbytes += size

    def drop(
        self,
        fifo: str,
        lease_end: int,
        *,
        need_bytes: int = 0,
        count: int | None = None,
        limit: int | None = None,
        stop: int | None = None,
        taken: list[bytes] | None = None,
    ) -> tuple[int, int]:
        """Take readings of `fifo` out of the buffer from its first one at or after `lease_end`.

        Takes `count` readings, or as many as free `need_bytes`; returns (readings, bytes).
        Readings before `lease_end` are in flight and stay, which leaves a gap behind them.
        A FIFO has one gap, so a drop behind a lease that ends before the gap widens it: it
        takes the run just before the gap that frees the need, or every reading up to the gap
        (all counted) and on after it if it needs more. Never may the gap cover a reading that
        was not taken: it would be gone without a count.
        `limit`: where a live-first drain's live stream begins; nothing from there on is taken,
        and nothing at all while the readings before it are in flight (that would need a second
        gap).
        `stop`: nothing from there on is taken either, but a gap behind a lease may still
        open or widen before it (a compaction keeps readings the broker may send again raw).
        `taken`: given, it receives the readings taken, in order (a compaction summarises them).
        """
        state = self.state(fifo)
        if state is None or not state.readings:
            return 0, 0
        start = max(state.head, lease_end)
        join_before = _join_before(state, start, limit)
        if join_before is None or _stopped_short(state, start, join_before, stop):
            return 0, 0
        if count is None and _before_gap(state, start, stop):
            before_gap = self._drop_before_gap(state, start, need_bytes, taken)
            if before_gap is not None:
                return before_gap
        dropped = freed = 0
        last = start - 1
        sink = [] if taken is None else taken
        until = min((at for at in (limit, stop) if at is not None), default=None)
        for seq, value in self._readings(state, start):
            if until is not None and seq >= until:
                break
            met = (dropped >= count) if count is not None else (freed >= need_bytes)
            if met and seq >= join_before:
                break
            freed += reading_bytes(value)
            dropped += 1
            last = seq
            sink.append(value)
        if not dropped:
            return 0, 0
        self._count_out(state, dropped, freed)
        if start == state.head:
            state.head = last + 1
            self._find_head(state)
        else:
            _open_gap(state, start, last + 1)
        return dropped, freed

    def _count_out(self, state: DeviceState, readings: int, nbytes: int) -> None:
        state.readings -= readings
        state.nbytes -= nbytes
        self.readings -= readings
        self.nbytes -= nbytes

    def _drop_before_gap(
        self, state: DeviceState, start: int, need_bytes: int, taken: list[bytes] | None
    ) -> tuple[int, int] | None:
        """Take the run just before the gap that frees `need_bytes`; None if all of it is needed.

        The readings between a lease and the gap are the oldest not in flight, but there may be
        a whole outage of them (after a restart during a live-first drain the gap is the live
        run delivered): joining the gap would drop them all for a need of a few. Taking the end
        of the run keeps one gap and drops what is needed. Reads only about the readings it
        takes, from an estimate of their count by the FIFO's mean size.
        """
        mean = max(1, state.nbytes // max(1, state.readings))
        span = min(state.gap_start - start, 2 * (need_bytes // mean) + 8)
        gap_start = state.gap_start
        while True:
            low = state.gap_start - span
            # The walk goes on past the gap to the FIFO's end: stop it at the gap.
            found = list(takewhile(lambda at: at[0] < gap_start, self._readings(state, low)))
            freed = 0
            for dropped, (seq, value) in enumerate(reversed(found), 1):
                freed += reading_bytes(value)
                if freed >= need_bytes:
                    if seq == start:
                        return None  # the whole run: joined by the caller's walk
                    state.gap_start = seq
                    self._count_out(state, dropped, freed)
                    if taken is not None:
                        taken.extend(value for _, value in found[len(found) - dropped :])
                    return dropped, freed
            if low <= start:
                return None
            span = min(state.gap_start - start, span * 4)
            if span <= 0:
                return None

    def _readings(self, state: DeviceState, start: int) -> Iterator[tuple[int, bytes]]:
        """The FIFO's readings from `start`: committed ones, then this transaction's appends."""
        appended = self._appended.get(state.number)
        if appended is None:
            return self._walker.readings(state, start)
        committed = (
            found for found in self._walker.readings(state, start) if found[0] < appended.first
        )
        own = (
            (appended.first + offset, value)
            for offset, value in enumerate(appended.records)
            if appended.first + offset >= start and state.is_live(appended.first + offset)
        )
        return chain(committed, own)

    def _find_head(self, state: DeviceState) -> None:
        """Move the head past what was taken out, to the oldest reading still buffered."""
        if not state.readings:
            self._empty(state)
            return
        origin = state.head
        if state.gap_start <= state.head < state.gap_end:
            state.head = state.gap_end
        if state.gap_end <= state.head:
            state.gap_start = state.gap_end = 0
        seq, value = next(iter(self._readings(state, state.head)), (None, b""))
        if seq is None:
            self._recount(state, origin)
            return
        state.head = seq
        state.oldest_ts_ns = timestamp_of(value)

    def _empty(self, state: DeviceState) -> None:
        state.head = state.next
        state.gap_start = state.gap_end = 0
        state.oldest_ts_ns = 0
        self.active -= 1

    def _recount(self, state: DeviceState, origin: int) -> None:
        """Count what a FIFO really holds from `origin` on, its gap included.

        Only reached when the accounting and the data disagree (a bug, or a damaged disk): the
        data wins, so that deliveries and admission go on instead of failing for good, and a
        reading a wrong gap hid comes back as buffered rather than vanish.
        """
        whole = DeviceState(*state.pack_fields())
        whole.head, whole.gap_start, whole.gap_end = origin, 0, 0
        readings = nbytes = 0
        first: tuple[int, bytes] | None = None
        for found in self._readings(whole, origin):
            if first is None:
                first = found
            readings += 1
            nbytes += reading_bytes(found[1])
        logger.error(
            "accounting of device number %d said %d readings (%d bytes) from sequence %d, the "
            "data holds %d (%d bytes); counted as the data says",
            state.number,
            state.readings,
            state.nbytes,
            origin,
            readings,
            nbytes,
        )
        self.readings += readings - state.readings
        self.nbytes += nbytes - state.nbytes
        state.readings, state.nbytes = readings, nbytes
        state.gap_start = state.gap_end = 0
        if first is None:
            self._empty(state)
            return
        state.head = first[0]
        state.oldest_ts_ns = timestamp_of(first[1])

    def delete_head(self, state: DeviceState, count: int, freed: int | None = None) -> None:
        """Take the `count` oldest readings of a FIFO out after their delivery.

        Reads stop at a gap, so the run lies before it. `freed`: their bytes, when the caller
        knows them (the lease of the read that returned them), which saves reading them again.
        """
        if freed is None:
            freed = 0
            for _, (_, value) in zip(range(count), self._readings(state, state.head), strict=False):
                freed += reading_bytes(value)
        self._take(state, count, freed)
        state.head += count
        self._find_head(state)
        self._settle(state)

    def delete_before(self, state: DeviceState, end: int) -> None:
        """Take out every buffered reading before sequence `end`: every sink has had them.

        Several sinks confirm at their own pace (gateway/buffer/cursors.py), so what goes may
        span the FIFO's gap; the readings are walked for their count and bytes.
        """
        count = freed = 0
        for seq, value in self._readings(state, state.head):
            if seq >= end:
                break
            count += 1
            freed += reading_bytes(value)
        self._take(state, count, freed)
        state.head = max(state.head, end)
        self._find_head(state)
        self._settle(state)

    def _take(self, state: DeviceState, count: int, freed: int) -> None:
        # A loss to damage counted low bytes (gateway/buffer/core/damage.py): never below 0.
        freed = min(freed, state.nbytes)
        state.readings -= count
        state.nbytes -= freed
        self.readings -= count
        self.nbytes -= freed

    def _settle(self, state: DeviceState) -> None:
        left = settle_empty(state)
        self.nbytes -= left

    def delete_live(self, state: DeviceState, first: int, count: int, freed: int) -> None:
        """Take a delivered run out of the middle of a FIFO: the live stream of a live-first drain.

        The run starts where the gap ends (or opens it), so the FIFO still has one gap: its
        older readings before it, the rest of the live stream after it.
        """
        self._take(state, count, freed)
        if state.gap_end <= state.gap_start:
            state.gap_start = first
        state.gap_end = first + count
        if not state.readings:
            self._find_head(state)
            self._settle(state)

    def _new_number(self) -> int:
        # Numbers wrap after 2**32 devices (a firmware bug can invent that many over months);
        # one still in use, or forgotten since the last checkpoint, is skipped.
        in_use, retired = self._ledger.numbers, self._ledger.retired
        number = self._next_device
        while (
            number > U32_MAX or number in in_use or number in retired or number in self._new_numbers
        ):
            number = 0 if number >= U32_MAX else number + 1
        self._next_device = number + 1
        return number

    def _prune_idle(self) -> None:
        """Forget FIFOs without readings, so that device ids seen once do not pile up."""
        for fifo, state in list(self._base.items()) + list(self.changed.items()):
            if not state.readings and fifo not in self.pruned:
                self.pruned.add(fifo)
                if self.changed.pop(fifo, None) is not None:
                    # Emptied by this transaction: what a journal chunk carries for it.
                    self._emptied[fifo] = state
                self._entries -= 1

    def taken(self) -> set[str]:
        """The FIFOs this transaction took readings out of (drops, deletes) or forgot."""
        found = set(self.pruned)
        for fifo, state in self.changed.items():
            base = self._base.get(fifo)
            before = base.readings if base is not None and base.number == state.number else 0
            appended = self._appended.get(state.number)
            if state.readings < before + (len(appended.records) if appended else 0):
                found.add(fifo)
        return found

    def _carried(self, moved: Collection[str], held: Collection[str]) -> list[State]:
        """The states a start-up sets after this chunk's appends: `moved` and `taken` FIFOs."""
        by_number: dict[int, DeviceState] = {}
        for fifo in (set(moved) | self.taken()).difference(held):
            state = self.changed.get(fifo)
            if fifo in self.pruned or state is None:
                # A forgotten FIFO keeps the number of its last state until a seal; one this
                # transaction emptied is carried empty, not as it was before.
                state = self._emptied.get(fifo) or self._base.get(fifo)
            if state is not None:
                by_number[state.number] = state
        return pack_states(s for _, s in sorted(by_number.items()))

    def finish(
        self,
        journal: lmdb.Transaction,
        notes: Sequence[tuple[bytes, bytes]] = (),
        moved: Collection[str] = (),
        held: Collection[str] = (),
    ) -> None:
        """Write this transaction's appends, drops and `notes` as one journal chunk (or none).

        The chunk carries the states of the FIFOs this transaction took readings out of and of
        `moved` ones (deliveries since the previous chunk), never a chunk of its own for them:
        that would cost a disk write per delivery (DESIGN invariant 9). `held` FIFOs are left
        out (a loss to damage not written yet: gateway/buffer/damage.py).
        """
        if not self._appended and not notes and not self.taken():
            return
        segments = []
        groups = []
        decoded: dict[int, tuple[int, list[bytes]]] = {}
        record_bytes = 0
        for number, appended in self._appended.items():
            decoded[number] = (appended.first, appended.records)
            record_bytes += appended.nbytes - READING_OVERHEAD * len(appended.records)
            segments.append(
                Segment(
                    number,
                    appended.first,
                    len(appended.records),
                    appended.nbytes,
                    appended.first_ts_ns,
                )
            )
            groups.append(appended.records)
        names = [(n, f) for n, f in self._new_numbers.items() if f in self.changed]
        value = encode_journal(segments, groups, names, notes, self._carried(moved, held))
        key = U64.pack(self._ledger.next_record)
        self.record_value = value
        if not journal.put(key, value, append=True):
            raise AssertionError("journal record numbers must grow")
        self._segments = segments
        self.chunk_bytes = len(value)
        self.written = (key, decoded, record_bytes)

    def change(self) -> LedgerChange:
        """What the ledger adopts once LMDB committed this transaction."""
        return LedgerChange(
            self.changed,
            self.pruned,
            set(self._new_numbers),
            self.readings,
            self.nbytes,
            self.active,
            next_device=self._next_device & U32_MAX,
            segments=self._segments,
        )


def pack_states(states: Iterable[DeviceState]) -> list[State]:
    """FIFO states as a journal chunk carries them (gateway/buffer/core/chunk.py `STATE`)."""
    return [
        (
            s.number,
            s.head,
            s.next,
            s.readings,
            s.nbytes,
            s.oldest_ts_ns,
            s.gap_start,
            s.gap_end,
            s.newest_ts_ns,
        )
        for s in states
    ]
