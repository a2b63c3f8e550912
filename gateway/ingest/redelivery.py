"""A redelivered reading the buffer already holds is acknowledged, not stored again.

QoS 1 is at least once: when a connection ends before the broker has read the PUBACKs of the
last commits (kill -9, a reset, a lost link), it sends those messages again on the next
connection, DUP set, before anything new. Stored twice, a raw reading is harmless (the database
keeps one point per series and timestamp), but the `compact` policy could put its first copy in
a summary and deliver the second raw: counted twice. So the buffer keeps the readings of its
newest commits out of compaction while the broker may still send them again
(gateway/buffer/core/fence.py), and a DUP message's readings that are byte for byte among those
readings of their FIFO are dropped here and counted `suppressed`. Equal bytes are the same
series, timestamp and values, so nothing is lost even when the copy came from another message;
a reading stamped at receipt never matches, since its stamp is new.

The fence a connection holds is lifted at its first QoS 1 message without DUP: the broker has
then sent again all it will. A connection that ends cleanly (intake pausing at a watermark)
settles it: the broker read every PUBACK before it closed, so nothing acknowledged comes again,
and compaction may take all of it while intake waits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.buffer.store import Buffer


class Redelivery:
    """One intake's view of the buffer's fence, with the fenced readings it looked up."""

    def __init__(self, buffer: Buffer) -> None:
        """Nothing looked up; the holder is this object."""
        self._buffer = buffer
        self._fenced: dict[str, set[bytes]] = {}
        self._holding = False

    def connection_began(self) -> None:
        """A connection begins: the last commits before it may come again on it."""
        self._fenced.clear()
        self._buffer.hold_fence(self)
        self._holding = True

    def connection_ended(self, *, clean: bool) -> None:
        """A connection ended; `clean`: the broker read all its PUBACKs (a pause of intake)."""
        self._fenced.clear()
        self._holding = not clean
        if clean:
            self._buffer.settle_fence(self)
        else:
            self._buffer.hold_fence(self)

    def fresh(self) -> None:
        """A message came that the broker sent for the first time: it sent again all it will."""
        if self._holding:
            self._holding = False
            self._fenced.clear()
            self._buffer.lift_fence(self)

    def held(self, fifo: str) -> set[bytes]:
        """The FIFO's readings that a redelivered message may repeat."""
        found = self._fenced.get(fifo)
        if found is None:
            found = self._fenced[fifo] = self._buffer.fenced_readings(fifo)
        return found
