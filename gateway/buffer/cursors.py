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
readings (`share_targets`, `skips`): its position moves on and the count is its own.

Pure but for the walker it is given; the store holds the lock.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.buffer.core.chunk import reading_bytes
from gateway.buffer.core.ledger import Span
from gateway.errors import StorageError

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from gateway.buffer.core.ledger import DeviceState
    from gateway.buffer.fiforead import FifoWalker

NOTE_PREFIX = b"sink\x00"
POSITION = struct.Struct(">IQ")
# With fewer sinks, the FIFO's head is the one position (gateway/buffer/reads.py).
MIN_SINKS = 2
_DIGEST_BYTES = 16


@dataclass(frozen=True, slots=True)
class SinkLease:
    """Readings of one FIFO a sink has read and not yet confirmed: `start` to `end` - 1."""

    start: int
    end: int
    nbytes: int
    # The buffer's count of chunks set aside as damaged when it was read: one set aside since
    # may have taken readings inside it, and then its count and bytes are not the run's.
    damage_seen: int = 0


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
        self.skipped: Counter[str] = Counter()
        # Notes for the next checkpoint (b"": the key goes); the store hands them over.
        self.notes: dict[bytes, bytes] = {}

    def _check(self, sink: str) -> None:
        if sink not in self.ahead:
            raise StorageError(f"no sink named {sink!r} reads this buffer")

    def at(self, sink: str, fifo: str, state: DeviceState) -> int:
        """Where `sink` reads `fifo`."""
        return position(self.ahead[sink].get(fifo), state)

    def _place(self, sink: str, fifo: str, state: DeviceState, at: int) -> None:
        """Keep `sink`'s position in `fifo` (none at the head) and note it for the checkpoint."""
        key = note_key(sink, fifo)
        if at <= state.head:
            if self.ahead[sink].pop(fifo, None) is not None:
                self.notes[key] = b""
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
        damage_seen: int = 0,
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
                self.leases[sink][fifo] = SinkLease(first, last + 1, nbytes, damage_seen)
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

    def confirmed(self, sink: str, spans: Iterable[tuple[str, int, int]]) -> dict[str, int]:
        """Where `sink` is once these runs it read are confirmed: the moves for `move`.

        Raises:
            StorageError: a run is not what `sink` has leased.
        """
        spans = list(spans)
        self.check(sink, spans)
        return {fifo: first + count for fifo, first, count in spans}

    def lowest_after(
        self, sink: str, moves: Mapping[str, int], states: Mapping[str, DeviceState]
    ) -> dict[str, int]:
        """Each moved FIFO's lowest position were `sink` moved there: where its head may go."""
        lowest = {}
        for fifo, at in moves.items():
            state = states.get(fifo)
            if state is None:
                continue
            others = (self.at(other, fifo, state) for other in self.sinks if other != sink)
            lowest[fifo] = min(at, *others)
        return lowest

    def leased_bytes(
        self, sink: str, fifo: str, start: int, end: int, damage_seen: int
    ) -> int | None:
        """The bytes of `sink`'s lease of `fifo`, if it is the run `start` to `end` - 1.

        None as well when a chunk was set aside as damaged since the read.
        """
        lease = self.leases[sink].get(fifo)
        if lease is None or (lease.start, lease.end) != (start, end):
            return None
        return lease.nbytes if lease.damage_seen == damage_seen else None

    def move(self, sink: str, moves: Mapping[str, int], states: Mapping[str, DeviceState]) -> None:
        """Move `sink` to these positions; its leases of those FIFOs end."""
        leases = self.leases[sink]
        for fifo, at in moves.items():
            leases.pop(fifo, None)
            state = states.get(fifo)
            if state is not None:
                self._place(sink, fifo, state, at)

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
        # Called for every batch: a FIFO the sink is not ahead in costs one lookup.
        for fifo, state in states.items():
            n = state.readings
            if not n:
                continue
            kept = ahead.get(fifo)
            if kept is not None and kept[0] == state.number and kept[1] > state.head:
                n = waiting(position(kept, state), state)
                if not n:
                    continue
            counts[fifo] = n
        return counts

    def share_targets(
        self, sink: str, states: Mapping[str, DeviceState], fraction: float
    ) -> dict[str, int]:
        """Where `sink` would be, giving up the oldest `fraction` of its backlog in each FIFO.

        Counted by sequence (a gap left out), so nothing is read. A FIFO the sink has a lease
        in is left for now.
        """
        self._check(sink)
        targets = {}
        for fifo, state in states.items():
            if not state.readings or fifo in self.leases[sink]:
                continue
            start = self.at(sink, fifo, state)
            n = waiting(start, state)
            if not n:
                continue
            at = start + min(n, max(1, math.ceil(n * fraction)))
            if state.gap_end > state.gap_start and start < state.gap_start < at:
                at += state.gap_end - state.gap_start
            targets[fifo] = min(at, state.next)
        return targets

    def skips(
        self, sink: str, targets: Mapping[str, int], states: Mapping[str, DeviceState]
    ) -> tuple[dict[str, int], int]:
        """The moves of `targets` still ahead of `sink` and free of its leases, and their count."""
        self._check(sink)
        moves, count = {}, 0
        for fifo, target in targets.items():
            state = states.get(fifo)
            if state is None or fifo in self.leases[sink]:
                continue
            start = self.at(sink, fifo, state)
            # A target from before the FIFO was forgotten and made again may lie past its tail.
            at = min(target, state.next)
            taken = waiting(start, state) - waiting(at, state)
            if at > start and taken > 0:
                moves[fifo] = at
                count += taken
        return moves, count

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
