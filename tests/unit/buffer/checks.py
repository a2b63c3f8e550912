"""Checks shared by the buffer's unit tests."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.buffer.core.chunk import reading_bytes
from gateway.points.model import Reading
from gateway.points.record import pack

if TYPE_CHECKING:
    from gateway.buffer.store import Buffer


def assert_counts_match(buffer: Buffer) -> None:
    """What the accounting says is what reads find."""
    total = 0
    for fifo, state in buffer.devices().items():
        values = buffer.readings_of(fifo)
        assert state.readings == len(values), fifo
        assert state.nbytes == sum(map(reading_bytes, values)), fifo
        total += len(values)
    assert buffer.totals().readings == total
    assert buffer.verify().is_consistent


def reading(device: str, ts: int, size: int = 40) -> bytes:
    """A packed reading of about `size` bytes (8 to 400), stamped `ts`."""
    pad = max(0, size - 30)
    fields = (("v", ts), ("p", "x" * pad)) if pad else (("v", ts),)
    return pack(Reading(device, "m", (("d", device),), fields, ts))
