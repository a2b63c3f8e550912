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
first message that is not a redelivery: the broker sends again what was in flight before
anything else (gateway/ingest/breaker.py relies on the same order). The first redelivered
message whose readings are not all held releases the held limits already: the broker sends
again in the order it first sent, which was the order of our commits, so the copies of
committed messages came before it; waiting for a fresh message could wait forever, since the
redelivered burst can be more than the buffer has room for, and every pause holds the fence
once more. The held readings are still recognised until the lift, since a copy can follow one
not held (a reading stamped at receipt is never held; of a commit bigger than the bound only
the newest readings are).
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
        self._holding = self._recognising = False

    def connection_changed(self) -> None:
        """A connection begins or ends: what was committed last may come again."""
        self._buffer.hold_fence(self)
        self._holding = True

    def fresh(self) -> None:
        """A message came that the broker sent for the first time: it sent again all it will."""
        if self._holding or self._recognising:
            self._holding = self._recognising = False
            self._buffer.lift_fence(self)

    def not_held(self) -> None:
        """A redelivered message not wholly held came: the copies before it came too.

        Its limits are released, so a redelivered burst bigger than the room cannot keep the
        fence held pause after pause; copies that still follow are recognised until `fresh`.
        """
        if self._holding:
            self._holding = False
            self._recognising = True
            self._buffer.unpin_fence(self)

    def known(self, readings: Sequence[bytes]) -> list[bool]:
        """Which readings of a redelivered message the buffer holds already."""
        return self._buffer.redelivered(readings)
