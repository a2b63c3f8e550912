"""Delivery positions of several sinks: each reads a FIFO at its own pace, one copy on disk.

With one sink there are none: the FIFO's head is where its sink reads (gateway/buffer/reads.py).
With several, a sink's position in a FIFO is the first sequence it has not had; the FIFO's head
is the lowest of them, so a reading leaves the buffer once every sink confirmed it (or a drop
took it, counted). Only positions ahead of the head are kept: a sink without one reads from the
head, so a FIFO that every sink has caught up with costs nothing here, and memory follows the
FIFOs where sinks differ.

Positions live in memory and reach the store as notes of the next checkpoint (one key per sink
and FIFO that moved, `>IQ` FIFO number and position), not with each delivery: a sink's
deliveries add a few bytes per FIFO every checkpoint interval, nothing per reading. After a
kill -9 a sink resumes from its last checkpointed position, never ahead of it: it may be sent
again what it confirmed in the last interval (a database keeps one point per series and
timestamp, so a copy changes nothing), and a head that moved since (carried by the journal) only
lifts positions behind it. A note names the FIFO's number, so one left by a FIFO since forgotten
cannot place a new FIFO of the same name.

Drops, compaction and the page guard stay as they are: a sink's lease joins the FIFO's one lease
that they respect (its end the furthest of the sinks' ends, its bytes their sum), and a gap that
a drop opens moves any position inside it to its end. A sink may also give up its oldest
readings (`skip`): its position moves on and the count is its own.

Pure but for the walker it is given; the store holds the lock.
"""

from __future__ import annotations

import hashlib
import struct
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.buffer.core.chunk import reading_bytes
from gateway.buffer.core.ledger import Span
from gateway.errors import StorageError
from gateway.points.record import timestamp_of

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from gateway.buffer.core.ledger import DeviceState
    from gateway.buffer.fiforead import FifoWalker

NOTE_PREFIX = b"sink\x00"
POSITION = struct.Struct(">IQ")
# With fewer sinks, the FIFO's head is the one position (gateway/buffer/reads.py).
MIN_SINKS = 2
_DIGEST_BYTES = 16
# The most readings one `skip` call walks for timestamps, so that it holds the loop briefly.
SKIP_WALK_MAX = 20_000


@dataclass(frozen=True, slots=True)
class SinkLease:
    """Readings of one FIFO a sink has read and not yet confirmed: `start` to `end` - 1."""

    start: int
    end: int
    nbytes: int
    last_ts_ns: int


def note_key(sink: str, fifo: str) -> bytes:
    """The notes key of `sink`'s position in `fifo` (a digest: names may be long)."""
    digest = hashlib.blake2b(fifo.encode(), digest_size=_DIGEST_BYTES).digest()
    return NOTE_PREFIX + sink.encode() + b"\x00" + digest


def position(ahead: tuple[int, int] | None, state: DeviceState) -> int:
    """Where a sink reads `state`'s FIFO, given its kept (number, position) if any."""
    if ahead is None or ahead[0] != state.number:
        return state.head
    at = max(ahead[1], state.head)
    if state.gap_start <= at < state.gap_end:
        at = state.gap_end
    return min(at, state.next)


def waiting(at: int, state: DeviceState) -> int:
    """Readings of the FIFO from sequence `at` on (a gap after it not counted)."""
    if not state.readings:
        return 0
    if at <= state.head:
        return state.readings
    gap = max(0, min(state.gap_end, state.next) - max(state.gap_start, at))
    return max(0, min(state.readings, state.next - at - gap))


class Cursors:
    """The positions and leases of every sink; see the module docstring."""

    def __init__(self, sinks: Sequence[str]) -> None:
        """Every sink at every FIFO's head, none with a lease."""
        if len(set(sinks)) != len(sinks) or len(sinks) < MIN_SINKS:
            raise ValueError(f"sinks must be two or more distinct names, not {list(sinks)}")
        self.sinks = tuple(sinks)
        # sink -> FIFO -> (FIFO number, first sequence the sink has not had), when ahead.
        self.ahead: dict[str, dict[str, tuple[int, int]]] = {s: {} for s in sinks}
        self.leases: dict[str, dict[str, SinkLease]] = {s: {} for s in sinks}
        # The timestamp of the newest reading each sink confirmed per FIFO it is ahead in: its
        # lag is measured from there without reading the next one.
        self.confirmed_ts: dict[str, dict[str, int]] = {s: {} for s in sinks}
        self.skipped: Counter[str] = Counter()
        # Notes for the next checkpoint (b"": the key goes); the store hands them over.
        self.notes: dict[bytes, bytes] = {}

    def _check(self, sink: str) -> None:
        if sink not in self.ahead:
            raise StorageError(f"no sink named {sink!r} reads this buffer")

    def at(self, sink: str, fifo: str, state: DeviceState) -> int:
        """Where `sink` reads `fifo`."""
        return position(self.ahead[sink].get(fifo), state)

    def lowest(self, fifo: str, state: DeviceState) -> int:
        """The lowest position of any sink in `fifo`: where its head may move to."""
        return min(self.at(sink, fifo, state) for sink in self.sinks)

    def _place(self, sink: str, fifo: str, state: DeviceState, at: int) -> None:
        """Keep `sink`'s position in `fifo` (none at the head) and note it for the checkpoint."""
        key = note_key(sink, fifo)
        if at <= state.head:
            if self.ahead[sink].pop(fifo, None) is not None:
                self.notes[key] = b""
            self.confirmed_ts[sink].pop(fifo, None)
            return
        self.ahead[sink][fifo] = (state.number, at)
        self.notes[key] = POSITION.pack(state.number, at)

    def settle(self, fifo: str, state: DeviceState | None) -> None:
        """Forget positions the head reached (or a FIFO gone); call after the head moved."""
        for sink in self.sinks:
            kept = self.ahead[sink].get(fifo)
            if kept is None:
                continue
            if state is None or kept[0] != state.number:
                del self.ahead[sink][fifo]
                self.confirmed_ts[sink].pop(fifo, None)
                self.notes[note_key(sink, fifo)] = b""
            elif kept[1] <= state.head:
                self._place(sink, fifo, state, state.head)

    def lease(self, fifo: str) -> tuple[int, int] | None:
        """The FIFO's one lease for drops: (the furthest end of any sink's, their bytes)."""
        found = [leases[fifo] for leases in self.leases.values() if fifo in leases]
        if not found:
            return None
        return max(lease.end for lease in found), sum(lease.nbytes for lease in found)

    def read(
        self,
        sink: str,
        walker: FifoWalker,
        states: Mapping[str, DeviceState],
        wanted: Iterable[tuple[str, int]],
    ) -> list[Span]:
        """Read and lease up to n readings of each (FIFO, n) from `sink`'s position, one run."""
        self._check(sink)
        spans = []
        for fifo, n in wanted:
            state = states.get(fifo)
            if state is None or n <= 0 or not state.readings:
                continue
            values: list[bytes] = []
            first = last = self.at(sink, fifo, state)
            for seq, value in walker.readings(state, first):
                # One run, so that a confirmation counts from its first: it stops at a gap
                # and before sequences a damaged chunk took (missing before it: skipped).
                if len(values) >= n or (values and seq != last + 1):
                    break
                if not values:
                    first = seq
                values.append(value)
                last = seq
            if values:
                nbytes = sum(reading_bytes(v) for v in values)
                self.leases[sink][fifo] = SinkLease(
                    first, last + 1, nbytes, timestamp_of(values[-1])
                )
                spans.append(Span(fifo, first, tuple(values)))
        return spans

    def check(self, sink: str, spans: Iterable[tuple[str, int, int]]) -> None:
        """Raise StorageError unless each (FIFO, first, count) run is what `sink` has leased."""
        self._check(sink)
        leases = self.leases[sink]
        for fifo, first, count in spans:
            lease = leases.get(fifo)
            if lease is None or lease.start != first or lease.end != first + count:
                raise StorageError(
                    f"sink {sink!r}: delete of {fifo!r} from {first} does not match its read"
                )

    def confirm(
        self, sink: str, spans: Iterable[tuple[str, int, int]], states: Mapping[str, DeviceState]
    ) -> dict[str, int]:
        """`sink` delivered these (FIFO, first sequence, count) runs, each as it was read.

        Returns each FIFO's lowest position now, for the store to move its head to.

        Raises:
            StorageError: a run is not what `sink` has leased; nothing was confirmed.
        """
        spans = list(spans)
        self.check(sink, spans)
        leases = self.leases[sink]
        lowest = {}
        for fifo, first, count in spans:
            lease = leases.pop(fifo)
            state = states.get(fifo)
            if state is None:
                continue
            self._place(sink, fifo, state, first + count)
            if fifo in self.ahead[sink]:
                self.confirmed_ts[sink][fifo] = lease.last_ts_ns
            lowest[fifo] = self.lowest(fifo, state)
        return lowest

    def release(self, sink: str, fifos: Iterable[str]) -> None:
        """End `sink`'s leases of these FIFOs: their readings were not delivered."""
        self._check(sink)
        for fifo in fifos:
            self.leases[sink].pop(fifo, None)

    def backlog(self, sink: str, states: Mapping[str, DeviceState]) -> dict[str, int]:
        """Readings per FIFO that `sink` has still to have."""
        self._check(sink)
        ahead = self.ahead[sink]
        counts = {}
        for fifo, state in states.items():
            if not state.readings:
                continue
            n = waiting(position(ahead.get(fifo), state), state)
            if n:
                counts[fifo] = n
        return counts

    def oldest_ns(self, sink: str, states: Mapping[str, DeviceState]) -> int | None:
        """About the oldest timestamp `sink` has still to have (None: it has everything).

        Where the sink is ahead of the head, the newest reading it confirmed stands for the
        next one, which is no older as a rule: a lag measured from it is never too low by more
        than the time between two readings.
        """
        self._check(sink)
        ahead, confirmed = self.ahead[sink], self.confirmed_ts[sink]
        oldest: int | None = None
        for fifo, state in states.items():
            if not state.readings:
                continue
            at = position(ahead.get(fifo), state)
            if at <= state.head:
                ts = state.oldest_ts_ns
            elif waiting(at, state):
                ts = confirmed.get(fifo, state.oldest_ts_ns)
            else:
                continue
            oldest = ts if oldest is None else min(oldest, ts)
        return oldest

    def skip_older(
        self,
        sink: str,
        walker: FifoWalker,
        states: Mapping[str, DeviceState],
        before_ns: int,
    ) -> dict[str, int]:
        """Give up `sink`'s readings older than `before_ns`, oldest first, for it alone.

        A FIFO the sink has a lease in is left for now. Walks at most `SKIP_WALK_MAX` readings
        (call again while it skips). Returns each touched FIFO's lowest position now.
        """
        self._check(sink)
        lowest: dict[str, int] = {}
        budget = SKIP_WALK_MAX
        for fifo, state in states.items():
            if budget <= 0:
                break
            if not state.readings or fifo in self.leases[sink]:
                continue
            start = self.at(sink, fifo, state)
            if not waiting(start, state):
                continue
            at, skipped, newest = start, 0, None
            for seq, value in walker.readings(state, start):
                ts = timestamp_of(value)
                if ts >= before_ns or budget <= 0:
                    break
                at, skipped, newest = seq + 1, skipped + 1, ts
                budget -= 1
            if skipped:
                self.skipped[sink] += skipped
                self._place(sink, fifo, state, at)
                if newest is not None and fifo in self.ahead[sink]:
                    self.confirmed_ts[sink][fifo] = newest
                lowest[fifo] = self.lowest(fifo, state)
        return lowest

    def skip_share(
        self, sink: str, states: Mapping[str, DeviceState], fraction: float
    ) -> dict[str, int]:
        """Give up the oldest `fraction` of `sink`'s backlog in every FIFO, for it alone.

        Counted by sequence (a run's gap left out), so nothing is read. A FIFO the sink has a
        lease in is left for now. Returns each touched FIFO's lowest position now.
        """
        self._check(sink)
        lowest: dict[str, int] = {}
        for fifo, state in states.items():
            if not state.readings or fifo in self.leases[sink]:
                continue
            start = self.at(sink, fifo, state)
            n = waiting(start, state)
            take = min(n, max(1, int(n * fraction + 0.999))) if n else 0
            if not take:
                continue
            at = start + take
            if state.gap_end > state.gap_start and start < state.gap_start < at:
                at += state.gap_end - state.gap_start
            at = min(at, state.next)
            self.skipped[sink] += take
            self._place(sink, fifo, state, at)
            lowest[fifo] = self.lowest(fifo, state)
        return lowest

    def recover(self, notes: Mapping[bytes, bytes], states: Mapping[str, DeviceState]) -> None:
        """Take the positions a checkpoint noted; forget notes of sinks or FIFOs gone."""
        by_digest = {note_key("", fifo)[len(NOTE_PREFIX) + 1 :]: fifo for fifo in states}
        for key, value in notes.items():
            if not key.startswith(NOTE_PREFIX) or not value:
                continue
            sink_bytes, _, digest = key[len(NOTE_PREFIX) :].partition(b"\x00")
            sink = sink_bytes.decode(errors="replace")
            fifo = by_digest.get(digest)
            state = states.get(fifo) if fifo is not None else None
            if (
                sink not in self.ahead
                or fifo is None
                or state is None
                or len(value) != POSITION.size
            ):
                self.notes[key] = b""
                continue
            number, at = POSITION.unpack(value)
            if number != state.number or at <= state.head:
                self.notes[key] = b""
                continue
            self.ahead[sink][fifo] = (number, min(at, state.next))
