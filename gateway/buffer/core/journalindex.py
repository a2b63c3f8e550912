"""Where each device's readings lie in the journal: its segments, per journal record.

Pure. The journal (gateway/buffer/store.py) holds one chunk per group commit with a segment per
device; this index, rebuilt at start-up from the chunks' headers, lists each device's segments in
sequence order and counts, per record, the segments still holding a buffered reading, so that a
record can be deleted once nothing in it is buffered. Its size is bounded by the journal's, which
sealing keeps small.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

    from gateway.buffer.core.chunk import Segment

# (journal record, first sequence, sequence after the last) of one device's segment.
Place = tuple[int, int, int]


class JournalIndex:
    """Each device's journal segments and each record's live segment count."""

    __slots__ = ("_dead", "_live", "_segments", "_sizes", "nbytes", "readings")

    def __init__(self) -> None:
        """An empty index."""
        self._segments: dict[int, deque[Place]] = {}
        self._live: dict[int, int] = {}
        self._sizes: dict[int, int] = {}
        # Records whose live count reached 0: kept apart, since every commit asks for them.
        self._dead: set[int] = set()
        # Readings in the segments listed, counted whole: what sealing would copy at most.
        self.readings = 0
        # Bytes the journal's records take (their values).
        self.nbytes = 0

    def add(self, record: int, segments: Iterable[Segment], size: int = 0) -> None:
        """List a record of `size` bytes and its segments (each at the end of its device's list)."""
        self._sizes[record] = size
        self.nbytes += size
        live = 0
        for segment in segments:
            self._segments.setdefault(segment.number, deque()).append(
                (record, segment.first, segment.end)
            )
            self.readings += segment.count
            live += 1
        self._live[record] = live
        if not live:
            self._dead.add(record)

    def places(self, number: int) -> deque[Place]:
        """A device's segments, oldest first (empty if it has none in the journal)."""
        return self._segments.get(number) or deque()

    def first_seq(self, number: int) -> int | None:
        """The first sequence of a device the journal holds, None if none."""
        places = self._segments.get(number)
        return places[0][1] if places else None

    def advance(self, number: int, head: int) -> None:
        """Forget a device's segments that end at or before its new head."""
        places = self._segments.get(number)
        while places and places[0][2] <= head:
            record, first, end = places.popleft()
            self._release(record, end - first)
        if places is not None and not places:
            del self._segments[number]

    def drop_record(self, record: int) -> dict[int, tuple[int, int]]:
        """Forget a record's segments (it is damaged); returns number -> (first, end) of each.

        Walks every device's list: damage is rare, and the record's own header is not to be
        trusted for which devices it served.
        """
        found: dict[int, tuple[int, int]] = {}
        for number in list(self._segments):
            places = self._segments[number]
            kept = deque(place for place in places if place[0] != record)
            if len(kept) == len(places):
                continue
            for at, first, end in places:
                if at == record:
                    found[number] = (first, end)
                    self._release(record, end - first)
            if kept:
                self._segments[number] = kept
            else:
                del self._segments[number]
        return found

    def forget(self, number: int) -> None:
        """Forget every segment of a device (it holds no reading any more)."""
        places = self._segments.pop(number, None)
        for record, first, end in places or ():
            self._release(record, end - first)

    def _release(self, record: int, readings: int) -> None:
        self.readings -= readings
        self._live[record] -= 1
        if self._live[record] <= 0:
            self._dead.add(record)

    def dead_records(self) -> list[int]:
        """Records holding no buffered reading, oldest first."""
        return sorted(self._dead)

    def deleted(self, records: Iterable[int]) -> None:
        """The records were deleted from the journal."""
        for record in records:
            self._dead.discard(record)
            self._live.pop(record, None)
            self.nbytes -= self._sizes.pop(record, 0)

    @property
    def has_dead(self) -> bool:
        """Whether a record holds no buffered reading (checked after every commit, so no sort)."""
        return bool(self._dead)

    @property
    def records(self) -> int:
        """How many records the journal holds that a seal would read (not those to delete)."""
        return len(self._live) - len(self._dead)

    @property
    def live_nbytes(self) -> int:
        """Bytes of the records that a seal would read (not of those to delete)."""
        return self.nbytes - sum(self._sizes.get(record, 0) for record in self._dead)

    def numbers(self) -> list[int]:
        """The device numbers with segments in the journal."""
        return list(self._segments)

    def last_record(self) -> int | None:
        """The newest record listed, None if none."""
        return max(self._live, default=None)

    def sealed_through(self, cut: int) -> None:
        """Records up to `cut` were sealed: none holds a buffered reading, all may be deleted.

        Costs one look per device plus the segments after the cut (a seal's cut is the newest
        record when it began, so those are few), not one per segment sealed.
        """
        readings = 0
        kept: dict[int, deque[Place]] = {}
        for number, places in self._segments.items():
            tail = []
            for place in reversed(places):
                if place[0] <= cut:
                    break
                tail.append(place)
                readings += place[2] - place[1]
            if tail:
                tail.reverse()
                kept[number] = deque(tail)
        self._segments = kept
        self.readings = readings
        for record in [r for r in self._live if r <= cut]:
            self._live[record] = 0
            self._dead.add(record)

    def records_through(self, cut: int) -> list[int]:
        """The records up to `cut` that hold a buffered reading, oldest first."""
        return sorted(r for r, live in self._live.items() if r <= cut and live > 0)

    def clear(self) -> None:
        """Every record was sealed and deleted."""
        self._segments.clear()
        self._live.clear()
        self._sizes.clear()
        self._dead.clear()
        self.readings = self.nbytes = 0
