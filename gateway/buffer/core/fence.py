"""Readings whose messages the broker may deliver again: compaction leaves them raw.

Pure. QoS 1 is at least once: a message whose PUBACK the broker had not read when the
connection ended (kill -9, a reset, a lost link) comes again on the next connection, DUP set,
before anything new. A raw reading stored twice is harmless, the database keeps one point for a
series and timestamp; but a first copy already inside a summary would, with its raw second copy,
be counted twice in the database. So the readings of the newest admission records, whose
acknowledgements may still be on their way, are not compacted; when a connection begins or
breaks (and at start-up, for what the last run committed), those of the newest records up to
then stay so until every holder has seen the broker send something new (`lift`). Meanwhile the
intake recognises a redelivered reading the buffer already holds, among the readings fenced
here (`knows`), and does not store it again (gateway/ingest/redelivery.py). Its PUBACK goes
out after the next commit, like that commit's own: what is held then goes into that commit's
record (`acknowledged_again`), so a reset right after it still finds the first copies raw.

The fence is kept as each FIFO's first sequence in each of the newest `RECENT_RECORDS`
admission records, with those records' readings: a compaction takes a FIFO's readings only
before its first sequence. The records kept take at most `max_bytes` of readings, a commit
bigger than that only its newest readings: the fence bounds what it pins of a small buffer (it
could otherwise hold one above its low watermark for a whole outage), and the memory it takes.
The price is the narrow case of a commit bigger than the bound whose PUBACKs were lost. Each
checkpoint writes the limits as a note (`packed`): a seal takes the newest records out of the
journal, and the start-up after a crash learns their fence from it (`add_packed`), then from
the journal; the buffer then reads the readings from the limits on (`remember`).
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Hashable, Iterable, Sequence

# Admission records whose PUBACKs may not have reached the broker: the acknowledgements of a
# commit go out right after it, so a kill or a reset finds at most the last few unread.
RECENT_RECORDS = 8
# The holder that start-up installs: the records the last run committed before it stopped.
START = "start"
# The checkpoint note holding every fenced FIFO's limit: (FIFO number, first sequence) pairs.
NOTE = b"fence/limits"
_LIMIT = struct.Struct(">IQ")


@dataclass(slots=True)
class _Record:
    """One admission record: each FIFO's first sequence in it, and its readings."""

    firsts: dict[int, int]
    readings: set[bytes] = field(default_factory=set)
    nbytes: int = 0


class Fence:
    """The first fenced sequence of each FIFO number, and the readings fenced; see the module."""

    __slots__ = (
        "_carry",
        "_held",
        "_held_readings",
        "_holders",
        "_recent",
        "_recent_bytes",
        "_recognising",
        "max_bytes",
    )

    def __init__(self, records: int = RECENT_RECORDS, max_bytes: int = 1 << 62) -> None:
        """No record yet, nothing held; `records` 0 is no fence at all."""
        self.max_bytes = max_bytes
        self._recent: deque[_Record] = deque(maxlen=records)
        self._recent_bytes = 0
        self._held: dict[int, int] = {}
        self._held_readings: set[bytes] = set()
        # Holders whose broker has sent a redelivered message not held: the copies before it
        # came, so their limits are released, but a copy can still follow one not held (a
        # reading stamped at receipt, a commit bigger than the bound): its readings are still
        # recognised until a message sent for the first time lifts the hold.
        self._recognising: set[Hashable] = set()
        self._holders: set[Hashable] = set()
        # Copies were recognised while held: their PUBACKs go out after the next commit, so
        # what is held goes into that commit's record, to stay fenced as long as it; a lift
        # before that commit keeps the hold until it.
        self._carry = False

    @property
    def enabled(self) -> bool:
        """Whether it keeps any record."""
        return self._recent.maxlen != 0

    def add(self, firsts: dict[int, int], readings: Iterable[bytes] = (), nbytes: int = 0) -> None:
        """An admission record committed: each FIFO's first sequence in it, and its readings.

        `nbytes`: the readings' bytes when they are not given (a record the journal replays),
        so that the bound holds for those records too.
        """
        if not firsts or not self.enabled:
            return
        kept = set(readings)
        record = _Record(firsts, kept, sum(map(len, kept)) or nbytes)
        if self._carry:
            self._carry = False
            extra = sum(map(len, self._held_readings - kept))
            # Within the bound only: a fence that kept more could hold a small buffer above
            # its low watermark for the whole outage.
            if record.nbytes + extra <= self.max_bytes:
                for number, first in self._held.items():
                    if first < firsts.get(number, first + 1):
                        firsts[number] = first
                record.nbytes += extra
                kept |= self._held_readings
            if not self._holders:
                self._held.clear()
                if not self._recognising:
                    self._held_readings = set()
        recent = self._recent
        if len(recent) == recent.maxlen:
            self._recent_bytes -= recent[0].nbytes
        recent.append(record)
        self._recent_bytes += record.nbytes
        while len(recent) > 1 and self._recent_bytes > self.max_bytes:
            self._recent_bytes -= recent.popleft().nbytes

    def add_placed(self, placed: Sequence[tuple[str, int, int, bytes]]) -> None:
        """An admission committed these (FIFO, number, sequence, reading).

        Its newest readings up to the bound, at least one, are the record: the older ones of a
        commit bigger than the bound are left to compaction.
        """
        left = self.max_bytes
        start = len(placed) - 1
        left -= len(placed[start][3])
        while start > 0 and left >= len(placed[start - 1][3]):
            start -= 1
            left -= len(placed[start][3])
        firsts: dict[int, int] = {}
        for _, number, seq, _ in placed[start:]:
            if seq < firsts.get(number, seq + 1):
                firsts[number] = seq
        self.add(firsts, (value for *_, value in placed[start:]))

    def add_replayed(self, segments: Iterable[tuple[int, int, int]], nbytes: int) -> None:
        """A record the journal replays: (number, first, count) of its segments.

        `nbytes` of readings; of a record bigger than the bound, the newest share of each
        segment is fenced.
        """
        segments = list(segments)
        share = min(1.0, self.max_bytes / nbytes) if nbytes else 1.0
        keep = [int(count * share) for _, _, count in segments]
        # The share of the whole record, one reading at least: one reading kept in each
        # segment would fence all of a record over many devices, a few readings each.
        left = max(1, int(sum(count for *_, count in segments) * share)) - sum(keep)
        for i in reversed(range(len(segments))):
            if left <= 0:
                break
            if keep[i] < segments[i][2]:
                keep[i] += 1
                left -= 1
        firsts = {
            number: first + count - k
            for (number, first, count), k in zip(segments, keep, strict=True)
            if k
        }
        self.add(firsts, nbytes=min(nbytes, self.max_bytes))

    def hold(self, holder: Hashable) -> None:
        """Keep the newest records fenced until `holder`, and every other holder, lifts."""
        self._holders.add(holder)
        if sum(map(len, self._held_readings)) > 2 * self.max_bytes:
            # Holds that were never lifted (a redelivered burst bigger than the room, pause
            # after pause) would otherwise gather the newest records of each: recognised are
            # those of the holds since the bound was passed.
            self._held_readings = set()
        held = self._held
        for record in self._recent:
            for number, first in record.firsts.items():
                if first < held.get(number, first + 1):
                    held[number] = first
            self._held_readings |= record.readings

    def lift(self, holder: Hashable) -> None:
        """`holder` has seen what the broker delivers again; the last holder ends the hold."""
        self._holders.discard(holder)
        self._recognising.discard(holder)
        if not self._holders and not self._carry:
            self._held.clear()
            if not self._recognising:
                self._held_readings = set()

    def unpin(self, holder: Hashable) -> None:
        """`holder`'s broker sent a redelivered message not held: the copies before it came.

        The held limits go (compaction may take those readings again), but the held readings
        are still recognised until `lift`.
        """
        self._holders.discard(holder)
        self._recognising.add(holder)
        if not self._holders and not self._carry:
            self._held.clear()

    def remember(self, readings: Iterable[bytes]) -> None:
        """Readings at or after the held limits, read back at start-up."""
        self._held_readings.update(readings)

    def acknowledged_again(self) -> None:
        """Copies of fenced readings came and are acknowledged with the next commit."""
        if self._holders or self._recognising:
            self._carry = True

    def knows(self, reading: bytes) -> bool:
        """Whether a reading equal to this one is fenced: a redelivered copy, most likely."""
        return reading in self._held_readings or any(reading in r.readings for r in self._recent)

    def packed(self) -> bytes:
        """Every fenced FIFO's limit, for the checkpoint's note."""
        numbers = set(self._held).union(*(r.firsts for r in self._recent))
        limits = ((n, self.limit(n)) for n in numbers)
        return b"".join(_LIMIT.pack(n, limit) for n, limit in limits if limit is not None)

    def add_packed(self, raw: bytes) -> None:
        """The limits a checkpoint noted, as one record older than the journal's."""
        self.add(dict(_LIMIT.iter_unpack(raw)))

    @property
    def holding(self) -> bool:
        """Whether some holder has not lifted yet."""
        return bool(self._holders)

    def held_limits(self) -> dict[int, int]:
        """The held limits by FIFO number (a copy)."""
        return dict(self._held)

    def limit(self, number: int) -> int | None:
        """The FIFO's first fenced sequence; None when none of its readings is fenced."""
        found = self._held.get(number)
        # Not the oldest record's: a record that took a carried hold may start earlier.
        for record in self._recent:
            first = record.firsts.get(number)
            if first is not None and (found is None or first < found):
                found = first
        return found
