"""Summary records: per-series statistics standing for a run of readings over a time window.

Pure. A summary is an ordinary stored record (gateway/points/record.py) with the series of the
readings it stands for. For each numeric field `f` it holds the mean under `f` itself (an
integer field keeps an integer mean, so the database sees no type change), and `f_min`,
`f_max`, `f_count` and `f_sum`; a string or boolean field keeps its last value. Summaries of
summaries merge those statistics, so min, max, count and sum stay exact at every level.

A summary's timestamp is its window's start plus its level plus 8 times a compaction number:
raw readings (whole microseconds or coarser) have timestamps divisible by 8, so no summary can
take the place of a raw reading in the database, nor two summaries of one window each other's.
A sensor clock in true nanoseconds could still meet one: a summary moves off any raw reading of
its own series in its run (one elsewhere is not checked).

Names: a statistic whose name another field of the window has (`a_min` beside `a`) is not
written, and that field's statistics then stay out altogether; at the next level it counts as one
sample. An integer sum beyond 64 bits or a float sum beyond the largest double is left out too,
and the mean times the count stands for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.points.lineparse import parse_fields
from gateway.points.lineproto import encode_fields
from gateway.points.names import INT64_MAX, INT64_MIN
from gateway.points.record import HEADER

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
    """The summaries at `level` of packed records (raw readings or summaries one level finer).

    One summary per series and window of `ladder.step(level)`, in window order, then in the
    order each series first appears in `values`.
    """
    step = ladder.step(level)
    finer = ladder.step(level - 1) if level > 1 else 0
    windows: dict[tuple[int, bytes], _Window] = {}
    ranks: dict[bytes, int] = {}
    # Raw readings whose timestamps could be a summary's (a sensor clock in true nanoseconds).
    taken: set[tuple[bytes, int]] = set()
    header = HEADER
    start = header.size
    for value in values:
        ts, series_len = header.unpack_from(value)
        series = value[start : start + series_len]
        text = value[start + series_len :].decode()
        window = ts - ts % step
        slot = windows.get((window, series))
        if slot is None:
            slot = windows[window, series] = _Window()
            ranks.setdefault(series, len(ranks))
        if level == 1:
            if ts % LEVEL_BITS == level:
                taken.add((series, ts))
            slot.add_raw(parse_fields(text), ts)
        else:
            slot.add_summary(_grouped(parse_fields(text)), ts - ts % finer)
    order = sorted(windows, key=lambda key: (key[0], ranks[key[1]]))
    out = []
    for window, series in order:
        ts = _summary_ts(window, level, ladder, compaction_no, taken=taken, series=series)
        fields = encode_fields(windows[window, series].fields()).encode()
        out.append(header.pack(ts, len(series)) + series + fields)
    return out


def read_stats(value: bytes, level: int) -> tuple[bytes, int, dict[str, Stats | FieldValue]]:
    """The series, timestamp and per-field statistics (or plain value) of a packed record.

    A raw reading (`level` 0) has plain values only; in a summary, each numeric field written
    with its statistics reads back as their `Stats`, and any other field as its plain value.
    """
    ts, series_len = HEADER.unpack_from(value)
    start = HEADER.size
    fields = parse_fields(value[start + series_len :].decode())
    series = value[start : start + series_len]
    if level == 0:
        return series, ts, dict(fields)
    return series, ts, dict(_grouped(fields))


# The statistics a numeric field `f` is written with beside its mean under `f` itself.
SUFFIXES = ("_min", "_max", "_count", "_sum")
_NUMERIC = (int, float)
# Field layouts repeat for every summary of a series: the grouping is worked out once per layout.
GROUPING_CACHE_SIZE = 4096
_groupings: dict[tuple[tuple[str, type], ...], frozenset[str]] = {}


def _summary_ts(
    window: int,
    level: int,
    ladder: Ladder,
    number: int,
    *,
    taken: set[tuple[bytes, int]],
    series: bytes,
) -> int:
    """The timestamp of a summary: its window, its level, and the compaction's number.

    Numbers take the lower half of the window's first step; a summary whose timestamp would be
    a raw reading's of its own series (a true-nanosecond clock) moves to the upper half, where no
    other compaction's first choice can land, and on from there while it still meets one.
    """
    spread = max(1, ladder.step(1) // 16)
    ts = window + level + LEVEL_BITS * (number % spread)
    bump = 0
    while (series, ts) in taken and bump < 2 * spread:
        ts = window + level + LEVEL_BITS * (spread + (number + bump) % spread)
        bump += 1
    return ts


def _heads(kinds: dict[str, type]) -> frozenset[str]:
    """The fields written with their statistics, by the names and types of a summary's fields.

    `f` is one when `f_min` and `f_max` of its type and an integer `f_count` are there (`f_sum`
    too, unless it did not fit), and none of them is itself one. Longer names are settled first:
    with fields `a` and `a_min`, the statistics `a_min_min`... make `a_min` one, and `a`, whose
    statistics were not written, stays a plain field.
    """
    heads: set[str] = set()
    for name in sorted(kinds, key=len, reverse=True):
        kind = kinds[name]
        if kind not in _NUMERIC:
            continue
        low, high, count, total = (name + suffix for suffix in SUFFIXES)
        if (
            kinds.get(low) is kind
            and kinds.get(high) is kind
            and kinds.get(count) is int
            and kinds.get(total, kind) is kind
            and not heads.intersection((low, high, count, total))
        ):
            heads.add(name)
    return frozenset(heads)


def _grouped(fields: list[tuple[str, FieldValue]]) -> list[tuple[str, Stats | FieldValue]]:
    """A summary's fields with each numeric field's statistics gathered into its `Stats`."""
    layout = tuple([(name, type(value)) for name, value in fields])
    heads = _groupings.get(layout)
    if heads is None:
        if len(_groupings) >= GROUPING_CACHE_SIZE:
            _groupings.clear()
        heads = _groupings[layout] = _heads(dict(layout))
    if not heads:
        return list(fields)
    values = dict(fields)
    members = {name + suffix for name in heads for suffix in SUFFIXES}
    out: list[tuple[str, Stats | FieldValue]] = []
    for name, value in fields:
        if name in heads:
            count = values[name + "_count"]
            total = values.get(name + "_sum")
            if total is None:  # the sum did not fit its type: the mean stands for it
                total = value * count  # type: ignore[operator]
            out.append((name, Stats(count, total, values[name + "_min"], values[name + "_max"])))  # type: ignore[arg-type]
        elif name not in members:
            out.append((name, value))
    return out


class _Window:
    """What one series' readings in one window add up to, field by field.

    Values come in the run's order; `at` orders them in time (a raw reading's timestamp, a
    summary's window), and of equal `at` the later in the run counts as the later value.
    """

    __slots__ = ("names", "numbers", "plain")

    def __init__(self) -> None:
        self.names: dict[str, None] = {}  # every field, in order of first appearance
        # name -> [count, integer total, float totals, low, high, `at` of the latest value]
        self.numbers: dict[str, list[Any]] = {}
        self.plain: dict[str, tuple[int, FieldValue]] = {}  # name -> (`at`, last value)

    def add_raw(self, fields: list[tuple[str, FieldValue]], at: int) -> None:
        """Add a raw reading's fields."""
        numbers = self.numbers
        for name, value in fields:
            kind = type(value)
            if kind is not float and kind is not int:
                self._add_plain(name, value, at)
                continue
            slot = numbers.get(name)
            if slot is None:
                self.names[name] = None
                if kind is float:
                    numbers[name] = [1, 0, [value], value, value, at]
                else:
                    numbers[name] = [1, value, [], value, value, at]
                continue
            slot[0] += 1
            if kind is float:
                slot[2].append(value)
            else:
                slot[1] += value
            if value < slot[3]:
                slot[3] = value
            elif value > slot[4]:
                slot[4] = value
            slot[5] = max(at, slot[5])

    def add_summary(self, fields: list[tuple[str, Stats | FieldValue]], at: int) -> None:
        """Add a summary's fields, each numeric one a `Stats` or a single sample."""
        numbers = self.numbers
        for name, value in fields:
            if type(value) is Stats:
                stats = value
            elif type(value) is float or type(value) is int:
                stats = Stats(1, value, value, value)
            else:
                self._add_plain(name, value, at)  # type: ignore[arg-type]
                continue
            slot = numbers.get(name)
            if slot is None:
                self.names[name] = None
                slot = numbers[name] = [0, 0, [], stats.low, stats.high, at]
            slot[0] += stats.count
            if type(stats.total) is float:
                slot[2].append(stats.total)
            else:
                slot[1] += stats.total
            slot[3] = min(slot[3], stats.low)
            slot[4] = max(slot[4], stats.high)
            slot[5] = max(at, slot[5])

    def _add_plain(self, name: str, value: FieldValue, at: int) -> None:
        last = self.plain.get(name)
        if last is None:
            self.names[name] = None
        if last is None or at >= last[0]:
            self.plain[name] = (at, value)

    def fields(self) -> tuple[tuple[str, FieldValue], ...]:
        """The summary's fields: per numeric field its mean and statistics, else the last value.

        A statistic whose name another field of the window has is not written, and its field
        then goes without statistics (a single sample at the next level), rather than two
        fields under one name.
        """
        numbers, plain, names = self.numbers, self.plain, self.names
        # Most windows have no field named like a statistic: one look per name says so.
        suspect = any(name.endswith(SUFFIXES) for name in names)
        out: list[tuple[str, FieldValue]] = []
        for name in names:
            slot = numbers.get(name)
            last = plain.get(name)
            if slot is None or (last is not None and last[0] >= slot[5]):
                out.append((name, last[1]))  # type: ignore[index]
                continue
            count, whole, parts, low, high, _ = slot
            if parts:  # a float field (an integer one that also had floats reads as a float)
                mean, stats = _float_stats(count, whole, parts, low, high)
            else:
                mean, stats = _int_stats(count, whole, low, high)
            out.append((name, mean))
            if not suspect or not any(name + suffix in names for suffix in SUFFIXES):
                out.extend((name + suffix, stat) for suffix, stat in stats)
        return tuple(out)


def _float_stats(
    count: int, whole: int, parts: list[float], low: float, high: float
) -> tuple[float, list[tuple[str, FieldValue]]]:
    if whole:
        parts.append(float(whole))
    low, high = float(low), float(high)
    stats: list[tuple[str, FieldValue]] = [("_min", low), ("_max", high), ("_count", count)]
    total = _fsum(parts)
    if math.isfinite(total):
        stats.append(("_sum", total))
        mean = total / count
    else:  # beyond the largest double: the mean of the parts, rounded each on its own
        mean = _fsum([part / count for part in parts if math.isfinite(part)])
    return min(max(mean, low), high), stats


def _fsum(parts: list[float]) -> float:
    """The exactly rounded sum, or infinity beyond the largest double (never an exception).

    A sum left out for its size comes back as the mean times the count, which may be infinite
    of either sign: no such part may stop a compaction.
    """
    try:
        return math.fsum(parts)
    except (OverflowError, ValueError):
        return math.inf


def _int_stats(
    count: int, total: int, low: int, high: int
) -> tuple[int, list[tuple[str, FieldValue]]]:
    # Exact rounding half to even, as round() does, without a float's 53 bits.
    mean, rest = divmod(total, count)
    if 2 * rest > count or (2 * rest == count and mean % 2):
        mean += 1
    stats: list[tuple[str, FieldValue]] = [("_min", low), ("_max", high), ("_count", count)]
    if INT64_MIN <= total <= INT64_MAX:
        stats.append(("_sum", total))
    return mean, stats
