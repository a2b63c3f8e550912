"""Checks shared by the buffer's unit tests."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.buffer.core.chunk import reading_bytes
from gateway.buffer.core.summary import Stats, read_stats
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


# (count, sum, min, max) of a numeric field over a window.
WindowStats = tuple[int, int | float, int | float, int | float]


def window_stats(
    records: list[tuple[int, bytes]], step_ns: int
) -> dict[tuple[bytes, int, str], WindowStats]:
    """Per series, window of `step_ns` and numeric field, the statistics of (level, record)s.

    Raw readings (level 0) count as one sample of each numeric field, summaries with theirs:
    what a compaction did to the records must leave these as they were.
    """
    found: dict[tuple[bytes, int, str], WindowStats] = {}
    for level, value in records:
        series, ts, fields = read_stats(value, level)
        for name, plain in fields.items():
            if isinstance(plain, Stats):
                stats = plain
            elif isinstance(plain, (int, float)) and not isinstance(plain, bool):
                stats = Stats(1, plain, plain, plain)
            else:
                continue
            key = (series, ts - ts % step_ns, name)
            count, total, low, high = found.get(key, (0, 0, stats.low, stats.high))
            found[key] = (
                count + stats.count,
                total + stats.total,
                min(low, stats.low),
                max(high, stats.high),
            )
    return found
