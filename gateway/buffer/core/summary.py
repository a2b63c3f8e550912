"""Summary records: per-series statistics standing for a run of readings over a time window.

Pure. A summary is an ordinary stored record (gateway/points/record.py) with the series of the
readings it stands for. For each numeric field `f` it holds the mean under `f` itself (an
integer field keeps an integer mean, so the database sees no type change), and `f_min`,
`f_max`, `f_count` and `f_sum`; a string or boolean field keeps its last value. Summaries of
summaries merge those statistics, so min, max, count and sum stay exact at every level.

A summary's timestamp is its window's start plus its level plus 8 times a compaction number:
raw readings (whole microseconds or coarser) have timestamps divisible by 8, so no summary can
take the place of a raw reading in the database, nor two summaries of one window each other's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from gateway.points.model import FieldValue

# The low bits of a timestamp that carry a summary's level (0: a raw reading).
LEVEL_BITS = 8


@dataclass(frozen=True, slots=True)
class Ladder:
    """The summary steps in nanoseconds, finest first; level n summarises at `steps_ns[n-1]`."""

    steps_ns: tuple[int, ...]

    def step(self, level: int) -> int:
        """The window of summaries at `level` (1 and up), in nanoseconds."""
        return self.steps_ns[level - 1]

    @property
    def levels(self) -> int:
        """The coarsest level."""
        return len(self.steps_ns)


@dataclass(frozen=True, slots=True)
class Stats:
    """What summaries keep of a numeric field over a window."""

    count: int
    total: int | float
    low: int | float
    high: int | float


def level_of_ts(ts_ns: int) -> int:
    """The level of a record by its timestamp: 0 for a raw reading."""
    return ts_ns % LEVEL_BITS


def summarise(
    values: Sequence[bytes], *, level: int, ladder: Ladder, compaction_no: int
) -> list[bytes]:
    """The summaries at `level` of packed records (raw readings or summaries one level finer)."""
    raise NotImplementedError


def read_stats(value: bytes, level: int) -> tuple[bytes, int, dict[str, Stats | FieldValue]]:
    """The series, timestamp and per-field statistics (or plain value) of a packed record."""
    raise NotImplementedError
