"""The buffer's read path: reads for the flusher, the leases they take, live-first splits.

What the flusher has read and not yet delivered is leased: admission never drops it, and a delete
must match it. A read returns one run of consecutive sequences from a FIFO's head (it stops at
the gap a drop left, and before sequences a damaged chunk took), so a delete can count from the
head. A live-first drain (gateway/buffer/live.py) splits FIFOs at their tails after an outage;
reads of the backlog stop at the split and live reads start after it, each with its own lease.

The store (gateway/buffer/store.py) holds the lock and the walker; this keeps the state of reads
between calls. Pure but for the walker it is given.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.buffer import live
from gateway.buffer.core.chunk import reading_bytes
from gateway.buffer.core.ledger import Span
from gateway.points.record import timestamp_of

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from gateway.buffer.core.ledger import DeviceState
    from gateway.buffer.fiforead import FifoWalker
    from gateway.buffer.live import LiveMark

# (first sequence after the leased readings, their bytes) of one FIFO's lease.
Lease = tuple[int, int]
NO_LEASE: Lease = (0, 0)


def lease_of(
    fifo: str,
    leases: Mapping[str, Lease],
    live_leases: Mapping[str, Lease],
    live_from: Mapping[str, int],
) -> Lease:
    """(first sequence a drop may take, bytes in flight) of a FIFO, both kinds of read counted.

    A live batch stays in flight after its split ended (its backlog delivered), and then its
    readings are the FIFO's oldest: the drop starts after them.
    """
    end, nbytes = leases.get(fifo, NO_LEASE)
    live = live_leases.get(fifo)
    if live is not None:
        nbytes += live[1]
        # While split, the live stream lies past `live_from`, where drops stop anyway.
        if fifo not in live_from:
            end = max(end, live[0])
    return end, nbytes


class Reads:
    """Leases and live-first splits of the FIFOs; see the module docstring."""

    def __init__(self) -> None:
        """No lease, no split."""
        # Readings the flusher has read and not yet deleted, per FIFO.
        self.leases: dict[str, Lease] = {}
        # A live-first drain's split of each FIFO, its `first` by FIFO for admission, and the
        # leases of live-stream reads.
        self.live: dict[str, LiveMark] = {}
        self.live_from: dict[str, int] = {}
        self.live_leases: dict[str, Lease] = {}
        # Split FIFOs whose live stream stopped at a reading not newer than their backlog, and
        # the sequence it stopped at: nothing of it can go until the backlog is delivered.
        self.held: dict[str, int] = {}

    def in_use(self) -> set[str]:
        """FIFOs with a lease or a split, whose entries must stay."""
        return self.leases.keys() | self.live_leases.keys() | self.live.keys()

    def read(
        self,
        walker: FifoWalker,
        states: Mapping[str, DeviceState],
        wanted: Iterable[tuple[str, int]],
    ) -> list[Span]:
        """Read and lease up to n oldest readings of each (FIFO, n), one run from the head."""
        spans = []
        for fifo, n in wanted:
            state = states.get(fifo)
            if state is None or n <= 0 or not state.readings:
                continue
            mark = self.live.get(fifo)
            stop = state.read_limit if mark is None else min(state.read_limit, mark.first)
            values: list[bytes] = []
            last_seq = state.head
            for seq, value in walker.readings(state, state.head):
                # Sequences missing mid-way were in a damaged chunk: a delete counts from the
                # head, so a read is one run and stops before them.
                if seq >= stop or len(values) >= n or seq != last_seq + bool(values):
                    break
                values.append(value)
                last_seq = seq
            if values:
                leased = sum(reading_bytes(v) for v in values)
                self.leases[fifo] = (last_seq + 1, leased)
                spans.append(Span(fifo, state.head, tuple(values)))
        return spans

    def begin_live_first(self, states: Mapping[str, DeviceState]) -> dict[str, int]:
        """Split every FIFO at its tail; returns each FIFO's next sequence now."""
        for fifo, state in states.items():
            mark = None if fifo in self.live else live.mark_of(state)
            if mark is not None:
                self.live[fifo] = mark
                self.live_from[fifo] = mark.first
        return {fifo: state.next for fifo, state in states.items()}

    def live_backlog(self, states: Mapping[str, DeviceState]) -> dict[str, int]:
        """Readings of each split FIFO's live stream still buffered and free to go."""
        self.end_finished_splits(states)
        waiting = {
            fifo: live.live_waiting(states[fifo], mark)
            for fifo, mark in self.live.items()
            if self.held.get(fifo) != live.cursor(states[fifo], mark)
        }
        return {fifo: n for fifo, n in waiting.items() if n}

    def read_live(
        self,
        walker: FifoWalker,
        states: Mapping[str, DeviceState],
        wanted: Iterable[tuple[str, int]],
    ) -> list[Span]:
        """Read and lease up to n readings of each (FIFO, n)'s live stream.

        A read stops at the first reading not newer than the FIFO's backlog: it waits for the
        backlog to be delivered (gateway/buffer/live.py).
        """
        spans = []
        for fifo, n in wanted:
            mark = self.live.get(fifo)
            state = states.get(fifo)
            if mark is None or state is None or n <= 0:
                continue
            first = live.cursor(state, mark)
            values: list[bytes] = []
            for seq, value in walker.readings(state, first):
                if len(values) >= n or seq != first + len(values):
                    break
                if timestamp_of(value) <= mark.newer_than_ns:
                    self.held[fifo] = seq
                    break
                values.append(value)
            if values:
                leased = sum(reading_bytes(v) for v in values)
                self.live_leases[fifo] = (first + len(values), leased)
                spans.append(Span(fifo, first, tuple(values)))
        return spans

    def end_finished_splits(self, states: Mapping[str, DeviceState]) -> None:
        """Forget the splits whose backlog is all gone: those FIFOs are read from their heads."""
        for fifo in [f for f, mark in self.live.items() if live.is_over(states.get(f), mark)]:
            del self.live[fifo]
            del self.live_from[fifo]
            self.held.pop(fifo, None)

    def release(self, fifos: Iterable[str]) -> None:
        """End the leases of FIFOs whose readings were not delivered."""
        for fifo in fifos:
            self.leases.pop(fifo, None)
            self.live_leases.pop(fifo, None)

    def backlog(self, states: Mapping[str, DeviceState]) -> dict[str, int]:
        """Buffered readings per FIFO that `read` can reach (a split FIFO's before its mark)."""
        self.end_finished_splits(states)
        counts = {d: s.readings for d, s in states.items() if s.readings}
        for fifo, mark in self.live.items():
            counts[fifo] -= live.live_waiting(states[fifo], mark)
        return {fifo: n for fifo, n in counts.items() if n}
