"""Readings whose messages the broker may deliver again: compaction leaves them raw.

Pure. QoS 1 is at least once: a message whose PUBACK the broker had not read when the
connection ended (kill -9, a reset, a lost link) comes again on the next connection, DUP set,
before anything new. A raw reading stored twice is harmless, the database keeps one point for a
series and timestamp; but a first copy already inside a summary would, with its raw second copy,
be counted twice in the database. So the readings of the newest admission records, whose
acknowledgements may still be on their way, are not compacted; when a connection ends (and at
start-up, for what the last run committed), those of the newest records up to then stay so until
every holder has seen the broker send something new (`lift`). Meanwhile the intake recognises a
redelivered reading the buffer already holds, among the readings fenced here, and does not store
it again (gateway/ingest/redelivery.py).

The fence is kept as each FIFO's first sequence in each of the newest `RECENT_RECORDS`
admission records: a compaction takes a FIFO's readings only before it. Each checkpoint writes
the limits as a note (`packed`): a seal takes the newest records out of the journal, and the
start-up after a crash learns their fence from it (`add_packed`), then from the journal.

A connection that ends cleanly, the broker having read every PUBACK, settles the fence
(`settle`): what it committed cannot come again.
"""

from __future__ import annotations

import struct
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Hashable, Iterable

    from gateway.buffer.core.chunk import Segment

# Admission records whose PUBACKs may not have reached the broker: the acknowledgements of a
# commit go out right after it, so a kill or a reset finds at most the last few unread.
RECENT_RECORDS = 16
# The holder that start-up installs: the records the last run committed before it stopped.
START = "start"
# The checkpoint note holding every fenced FIFO's limit: (FIFO number, first sequence) pairs.
NOTE = b"fence/limits"
_LIMIT = struct.Struct(">IQ")


class Fence:
    """The first fenced sequence of each FIFO number; see the module docstring."""

    __slots__ = ("_held", "_holders", "_recent")

    def __init__(self, records: int = RECENT_RECORDS) -> None:
        """No record yet, nothing held."""
        self._recent: deque[dict[int, int]] = deque(maxlen=records)
        self._held: dict[int, int] = {}
        self._holders: set[Hashable] = set()

    def add(self, segments: Iterable[Segment]) -> None:
        """An admission record committed with these segments (FIFO number, first sequence)."""
        firsts = {s.number: s.first for s in segments if s.count}
        if firsts:
            self._recent.append(firsts)

    def hold(self, holder: Hashable) -> None:
        """Keep the newest records fenced until `holder`, and every other holder, lifts."""
        self._holders.add(holder)
        held = self._held
        for firsts in self._recent:
            for number, first in firsts.items():
                if first < held.get(number, first + 1):
                    held[number] = first

    def lift(self, holder: Hashable) -> None:
        """`holder` has seen what the broker delivers again; the last holder ends the hold."""
        self._holders.discard(holder)
        if not self._holders:
            self._held.clear()

    def settle(self, holder: Hashable) -> None:
        """`holder`'s connection ended with every PUBACK read: none of its commits comes again.

        The records of other holders' connections, if any still hold, stay fenced.
        """
        self.lift(holder)
        self.lift(START)
        if not self._holders:
            self._recent.clear()

    def packed(self) -> bytes:
        """Every fenced FIFO's limit, for the checkpoint's note."""
        numbers = set(self._held).union(*self._recent)
        limits = ((n, self.limit(n)) for n in numbers)
        return b"".join(_LIMIT.pack(n, limit) for n, limit in limits if limit is not None)

    def add_packed(self, raw: bytes) -> None:
        """The limits a checkpoint noted, as one record older than the journal's."""
        firsts = dict(_LIMIT.iter_unpack(raw))
        if firsts:
            self._recent.append(firsts)

    @property
    def holding(self) -> bool:
        """Whether some holder has not lifted yet."""
        return bool(self._holders)

    def limit(self, number: int) -> int | None:
        """The FIFO's first fenced sequence; None when none of its readings is fenced."""
        found = self._held.get(number)
        for firsts in self._recent:
            first = firsts.get(number)
            if first is not None:
                return first if found is None else min(found, first)
        return found
