"""A redelivered reading the buffer already holds is acknowledged, not stored again.

QoS 1 is at least once: when a connection ends before the broker has read the PUBACKs of the
last commits (kill -9, a reset, a lost link), it sends those messages again on the next
connection, DUP set, before anything new. Stored twice, a raw reading is harmless (the database
keeps one point per series and timestamp), but the `compact` policy could put its first copy in
a summary and deliver the second raw: counted twice. So the buffer keeps the readings of its
newest commits out of compaction while the broker may still send them again, and remembers them
(gateway/buffer/core/fence.py); a DUP message's readings equal to one of those are dropped here
and counted `suppressed`. Equal bytes are the same series, timestamp and values, so nothing is
lost even when the copy came from another message; a reading stamped at receipt never matches,
since its stamp is new.

An intake holds the fence when its connection begins and when it ends, and lifts it at the
first message that is not a redelivery, or at the first redelivered one whose readings are not
all held: the broker sends again what was in flight before anything else
(gateway/ingest/breaker.py relies on the same order), in the order it first sent it, which was
the order of our commits, so the copies of committed messages come first. Waiting for a fresh
message alone could wait forever: the redelivered burst can be more than the buffer has room
for, so intake pauses again before it ends, and every pause holds the fence once more.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from gateway.buffer.store import Buffer


class Redelivery:
    """One intake's hold on the buffer's fence; the holder is this object."""

    def __init__(self, buffer: Buffer) -> None:
        """Not holding yet: the buffer holds what the last run committed from its start-up."""
        self._buffer = buffer
        self._holding = False

    def connection_changed(self) -> None:
        """A connection begins or ends: what was committed last may come again."""
        self._buffer.hold_fence(self)
        self._holding = True

    def fresh(self) -> None:
        """The broker sent again all the copies it will: something new, or not a copy, came."""
        if self._holding:
            self._holding = False
            self._buffer.lift_fence(self)

    def known(self, readings: Sequence[bytes]) -> list[bool]:
        """Which readings of a redelivered message the buffer holds already."""
        return self._buffer.redelivered(readings)
