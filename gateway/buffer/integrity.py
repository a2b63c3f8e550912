"""Buffer integrity: walk the data, compare it with the accounting, rebuild the accounting.

A concern of its own: the start-up check and `gateway verify-buffer`, never the hot path. The
comparison itself is pure, in gateway/buffer/core/verify.py. What a FIFO holds is what a walk of
its sealed chunks and journal segments finds from its head on (chunks are deleted lazily, so
what lies before the head is not counted).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.buffer.core.chunk import reading_bytes
from gateway.buffer.core.ledger import SEALED_KEY, DeviceState, Ledger
from gateway.buffer.core.verify import Found, Report, compare
from gateway.points.record import timestamp_of

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    import lmdb

    from gateway.buffer.fiforead import FifoWalker
    from gateway.buffer.transaction import Tables

# An orphan's walk takes every sequence.
_EVERYTHING = 2**63 - 1


def scan(
    walker: FifoWalker,
    ledger: Ledger,
    orphans: Iterable[int],
    progress: Callable[[int, int, int], None] | None = None,
) -> dict[int, Found]:
    """What each FIFO number really holds: the ledger's FIFOs from their heads, orphans whole."""
    found: dict[int, Found] = {}
    states = list(ledger.states.values())
    states += [DeviceState(number, 0, _EVERYTHING, 1, 0, 0, sealed_from=0) for number in orphans]
    seen = 0
    for done, state in enumerate(states, 1):
        entry = _walk(walker, state)
        if entry.readings:
            found[state.number] = entry
        seen += entry.readings
        if progress is not None:
            progress(done, len(states), seen)
    return found


def _walk(walker: FifoWalker, state: DeviceState) -> Found:
    entry = Found()
    for seq, value in walker.readings(state, state.head):
        if not entry.readings:
            entry.first_seq, entry.oldest_ts_ns = seq, timestamp_of(value)
        entry.readings += 1
        entry.nbytes += reading_bytes(value)
        entry.last_seq = seq
    return entry


def _rescan_gaps(walker: FifoWalker, ledger: Ledger, found: dict[int, Found]) -> None:
    """Walk the gap of each FIFO whose accounting disagrees with its data, and take it away.

    A drop never covers a reading it did not take, so such a gap may hide readings still
    stored: they come back as buffered (delivered, perhaps again) rather than vanish.
    """
    for state in ledger.states.values():
        if state.gap_end <= state.gap_start:
            continue
        seen = found.get(state.number, Found())
        expected_first = state.head if state.readings else -1
        if (seen.readings, seen.nbytes, seen.first_seq) == (
            state.readings,
            state.nbytes,
            expected_first,
        ):
            continue
        whole = DeviceState(*state.pack_fields())
        whole.gap_start = whole.gap_end = 0
        entry = _walk(walker, whole)
        found.pop(state.number, None)
        if entry.readings:
            found[state.number] = entry
        state.gap_start = state.gap_end = 0


def sealed_numbers(txn: lmdb.Transaction, tables: Tables) -> set[int]:
    """Every FIFO number with a sealed chunk."""
    cursor = txn.cursor(db=tables.sealed)
    return {SEALED_KEY.unpack(key)[1] for key in cursor.iternext(keys=True, values=False)}


def verify(
    walker: FifoWalker,
    ledger: Ledger,
    orphans: Iterable[int],
    progress: Callable[[int, int, int], None] | None = None,
) -> Report:
    """Compare the accounting with a walk of the data."""
    found = scan(walker, ledger, list(orphans), progress)
    return compare(dict(ledger.states), (ledger.readings, ledger.nbytes), found)


def repair(
    walker: FifoWalker,
    ledger: Ledger,
    orphans: Iterable[int],
    progress: Callable[[int, int, int], None] | None = None,
) -> Report:
    """Rebuild the accounting in `ledger` from a walk; returns what was wrong before.

    Readings whose FIFO number has no FIFO are kept under a FIFO named `orphan-<number>`: their
    records still carry their own device tag. The caller checkpoints the result.
    """
    orphans = list(orphans)
    # A wrong `sealed_from` would hide chunks: look from the first seal; the checkpoint after
    # the repair moves each FIFO's on to its first chunk again.
    for state in ledger.states.values():
        state.sealed_from = 0
    found = scan(walker, ledger, orphans, progress)
    report = compare(ledger.states, (ledger.readings, ledger.nbytes), found)
    if report.is_consistent:
        return report
    _rescan_gaps(walker, ledger, found)
    for number in report.orphan_numbers:
        seen = found[number]
        ledger.states[f"orphan-{number}"] = DeviceState(
            number, seen.first_seq, seen.last_seq + 1, 0, 0, 0, sealed_from=0
        )
        ledger.numbers.add(number)
    for state in ledger.states.values():
        seen = found.get(state.number, Found())
        if seen.readings:
            state.head = seen.first_seq
            state.next = max(state.next, seen.last_seq + 1)
        else:
            state.head = state.next = max(state.next, state.head)
            state.gap_start = state.gap_end = 0
        state.readings, state.nbytes = seen.readings, seen.nbytes
        state.oldest_ts_ns = seen.oldest_ts_ns
    ledger.readings = sum(f.readings for f in found.values())
    ledger.nbytes = sum(f.nbytes for f in found.values())
    ledger.active = sum(1 for state in ledger.states.values() if state.readings)
    ledger.next_device = max(
        ledger.next_device, max((s.number + 1 for s in ledger.states.values()), default=0)
    )
    ledger.dirty.update(ledger.states)
    return report
