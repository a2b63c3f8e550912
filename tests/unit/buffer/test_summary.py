"""Summary records: exact statistics through any ladder, safe timestamps, types kept."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.buffer.core.summary import (
    SUFFIXES,
    Ladder,
    Stats,
    level_of_ts,
    read_stats,
    summarise,
)
from gateway.points.model import Reading
from gateway.points.record import pack, split

if TYPE_CHECKING:
    from gateway.points.model import FieldValue

S = 1_000_000_000
LADDER = Ladder((60 * S, 600 * S, 3600 * S))
# Series with every character line protocol escapes, and one without a tag but the device.
SERIES = (
    ("m", (("device", "d1"),)),
    ("m x,y", (("device", "d 2"), ("k=v", "a,b\\"))),
)
KINDS: dict[str, type] = {"f": float, "i": int, "s": str, "b": bool}


def record(ts_ns: int, fields: dict[str, FieldValue], series: int = 0) -> bytes:
    """A packed raw reading of one of SERIES."""
    measurement, tags = SERIES[series]
    return pack(Reading(tags[0][1], measurement, tags, tuple(fields.items()), ts_ns))


def merged(values: list[bytes], level: int) -> dict[tuple[bytes, str], list[Any]]:
    """Per (series, field): [count, sum, min, max] over records of `level`, raw or summaries."""
    out: dict[tuple[bytes, str], list[Any]] = {}
    for value in values:
        series, _, fields = read_stats(value, level)
        for name, stat in fields.items():
            if isinstance(stat, Stats):
                count, total, low, high = stat.count, stat.total, stat.low, stat.high
            elif type(stat) in {int, float}:
                count, total, low, high = 1, stat, stat, stat
            else:
                continue
            slot = out.setdefault((series, name), [0, [], low, high])
            slot[0] += count
            slot[1].append(total)
            slot[2] = min(slot[2], low)
            slot[3] = max(slot[3], high)
    return out


def assert_same_stats(got: dict[Any, list[Any]], want: dict[Any, list[Any]]) -> None:
    """Counts, minima and maxima equal; integer sums exact, float sums to 1e-12."""
    assert got.keys() == want.keys()
    for key, (count, totals, low, high) in want.items():
        g_count, g_totals, g_low, g_high = got[key]
        assert (g_count, g_low, g_high) == (count, low, high), key
        if all(type(t) is int for t in totals):
            assert sum(g_totals) == sum(totals), key
        else:
            # Partial sums are rounded once each: allow for that where they cancel.
            scale = math.fsum(abs(t) for t in totals)
            assert math.isclose(math.fsum(g_totals), math.fsum(totals), abs_tol=1e-12 * scale)


@st.composite
def raw_runs(draw: st.DrawFn) -> tuple[list[bytes], Ladder, bool]:
    """Raw readings (any order or in time order), and a ladder whose finest step they span."""
    step0 = draw(st.sampled_from([S, 60 * S, 16_000]))
    multipliers = draw(st.lists(st.integers(2, 5), max_size=3))
    steps = [step0]
    for m in multipliers:
        steps.append(steps[-1] * m)
    base = draw(st.integers(0, 10**6)) * steps[-1]
    in_order = draw(st.booleans())
    readings = []
    for _ in range(draw(st.integers(1, 60))):
        offset = draw(st.integers(0, 3 * steps[-1] // 1000)) * 1000  # whole microseconds
        if draw(st.integers(0, 9)) == 0:  # a clock in true nanoseconds now and then
            offset += draw(st.integers(0, 999))
        names = draw(st.lists(st.sampled_from(sorted(KINDS)), min_size=1, unique=True))
        fields: dict[str, FieldValue] = {}
        for name in names:
            if name == "f":
                fields[name] = draw(st.floats(-1e6, 1e6, allow_nan=False))
            elif name == "i":
                fields[name] = draw(st.integers(-(2**40), 2**40))
            elif name == "s":
                fields[name] = draw(st.sampled_from(['a"b', "c\\d", "e f", "g,h=i"]))
            else:
                fields[name] = draw(st.booleans())
        readings.append((base + offset % (3 * steps[-1]), fields, draw(st.integers(0, 1))))
    if in_order:
        readings.sort(key=lambda r: r[0])
    return [record(ts, f, s) for ts, f, s in readings], Ladder(tuple(steps)), in_order


class Compaction:
    """FIFOs per level, compacted oldest first in runs, as the buffer does."""

    def __init__(self, raw: list[bytes], ladder: Ladder, number: int) -> None:
        self.fifos: list[list[bytes]] = [list(raw)] + [[] for _ in ladder.steps_ns]
        self.ladder = ladder
        self.number = number
        self.made: list[tuple[int, bytes]] = []

    def step(self, source: int, take: int) -> None:
        """Summarise the oldest `take` records of level `source` into the level above."""
        run, self.fifos[source] = self.fifos[source][:take], self.fifos[source][take:]
        level = source + 1
        out = summarise(run, level=level, ladder=self.ladder, compaction_no=self.number)
        self.number += 1
        step = self.ladder.step(level)
        for value in out:
            ts = split(value).ts_ns
            assert level_of_ts(ts) == level
            assert ts % 8 != 0
            assert ts % step < self.ladder.step(1)
        # Every summary stands for exactly the run's readings of its series and window.
        by_window: dict[int, list[bytes]] = defaultdict(list)
        for value in run:
            ts = split(value).ts_ns
            by_window[ts - ts % step].append(value)
        made: dict[int, list[bytes]] = defaultdict(list)
        for value in out:
            ts = split(value).ts_ns
            made[ts - ts % step].append(value)
        assert made.keys() == by_window.keys()
        for window, inputs in by_window.items():
            assert_same_stats(merged(made[window], level), merged(inputs, source))
        raw_keys = {(split(v).series, split(v).ts_ns) for v in run}
        assert not raw_keys & {(split(v).series, split(v).ts_ns) for v in out}
        self.fifos[level].extend(out)
        self.made.extend((level, v) for v in out)


@settings(max_examples=100, deadline=None)
@given(raw_runs(), st.integers(0, 2**40), st.data())
def test_summaries_of_summaries_keep_the_raw_statistics(
    case: tuple[list[bytes], Ladder, bool], number: int, data: st.DataObject
) -> None:
    """Any runs through any ladder keep count, min, max and sum per coarsest window exact."""
    raw, ladder, in_order = case
    compaction = Compaction(raw, ladder, number)
    for _ in range(data.draw(st.integers(0, 12))):
        sources = [s for s in range(ladder.levels) if compaction.fifos[s]]
        if not sources:
            break
        source = data.draw(st.sampled_from(sources))
        compaction.step(source, data.draw(st.integers(1, len(compaction.fifos[source]))))
    for source in range(ladder.levels):  # then everything up to the coarsest step
        if compaction.fifos[source]:
            compaction.step(source, len(compaction.fifos[source]))
    top = compaction.fifos[-1]
    assert sum(len(f) for f in compaction.fifos[:-1]) == 0

    coarsest = ladder.step(ladder.levels)
    assert_same_stats(by_window(top, ladder.levels, coarsest), by_window(raw, 0, coarsest))
    assert_means(top, ladder.levels)

    # No two summaries share a series and timestamp; none takes a raw reading's.
    keys = [(split(v).series, split(v).ts_ns) for _, v in compaction.made]
    assert len(keys) == len(set(keys))
    # Raw readings on a microsecond grid never meet a summary; true nanoseconds are checked
    # within each run, in `Compaction.step`.
    on_grid = {(split(v).series, split(v).ts_ns) for v in raw if split(v).ts_ns % 1000 == 0}
    assert not set(keys) & on_grid
    assert_types_kept(raw, [v for _, v in compaction.made])
    if in_order:
        assert_last_values(raw, top, coarsest)


def by_window(values: list[bytes], level: int, step: int) -> dict[Any, list[Any]]:
    """Per (series, window of `step`, field): [count, sums, min, max] of records of `level`."""
    out: dict[Any, list[Any]] = {}
    for value in values:
        ts = split(value).ts_ns
        for (series, name), stat in merged([value], level).items():
            slot = out.setdefault((series, ts - ts % step, name), [0, [], stat[2], stat[3]])
            slot[0] += stat[0]
            slot[1] += stat[1]
            slot[2], slot[3] = min(slot[2], stat[2]), max(slot[3], stat[3])
    return out


def assert_means(values: list[bytes], level: int) -> None:
    """The mean written under a field's own name is its sum over its count."""
    for value in values:
        means = dict(split_fields(value))
        for name, stat in read_stats(value, level)[2].items():
            if not isinstance(stat, Stats):
                continue
            if type(stat.total) is int:
                assert means[name] == round(stat.total / stat.count)
            else:
                mean = stat.total / stat.count
                assert math.isclose(means[name], mean, rel_tol=1e-12, abs_tol=1e-12)


def split_fields(value: bytes) -> list[tuple[str, FieldValue]]:
    """The plain fields of a packed record."""
    return list(read_stats(value, 0)[2].items())


def assert_types_kept(raw: list[bytes], made: list[bytes]) -> None:
    """Each summary field has its raw field's type; counts are integers."""
    kinds = {name: type(v) for value in raw for name, v in split_fields(value)}
    for value in made:
        for name, v in split_fields(value):
            if name in kinds:
                assert type(v) is kinds[name], name
                continue
            field, _, suffix = name.rpartition("_")
            assert f"_{suffix}" in SUFFIXES, name
            assert type(v) is (int if suffix == "count" else kinds[field]), name


def assert_last_values(raw: list[bytes], top: list[bytes], coarsest: int) -> None:
    """The last string or boolean of a window is the raw last one, of readings in time order."""
    want: dict[Any, FieldValue] = {}
    for value in raw:
        stored = split(value)
        for name, v in split_fields(value):
            if type(v) in {str, bool}:
                want[stored.series, stored.ts_ns - stored.ts_ns % coarsest, name] = v
    got: dict[Any, FieldValue] = {}
    for value in top:
        stored = split(value)
        for name, v in split_fields(value):
            if type(v) in {str, bool}:
                got[stored.series, stored.ts_ns - stored.ts_ns % coarsest, name] = v
    assert got == want


# Edge cases, one table row each: raw fields of one window in -> level-1 fields out.
CASES = [
    pytest.param(
        [{"t": 1.5}],
        {"t": 1.5, "t_min": 1.5, "t_max": 1.5, "t_count": 1, "t_sum": 1.5},
        id="a single reading",
    ),
    pytest.param(
        [{"n": 1}, {"n": 2}],
        {"n": 2, "n_min": 1, "n_max": 2, "n_count": 2, "n_sum": 3},
        id="an integer mean stays an integer, rounded half to even",
    ),
    pytest.param(
        [{"n": 2**62}, {"n": 2**62}, {"n": 2**62 + 1}],
        {"n": 2**62, "n_min": 2**62, "n_max": 2**62 + 1, "n_count": 3},
        id="an integer sum beyond 64 bits is left out, the mean exact",
    ),
    pytest.param(
        [{"x": 1e308}, {"x": 1.5e308}],
        {"x": 1.25e308, "x_min": 1e308, "x_max": 1.5e308, "x_count": 2},
        id="a float sum beyond the largest double is left out, the mean kept",
    ),
    pytest.param(
        [{"n": 1}, {"n": 2.5}],
        {"n": 1.75, "n_min": 1.0, "n_max": 2.5, "n_count": 2, "n_sum": 3.5},
        id="a field both integer and float reads as a float",
    ),
    pytest.param(
        [{"on": True, "s": 'x"y'}, {"on": False, "s": "a\\b"}],
        {"on": False, "s": "a\\b"},
        id="booleans and strings keep the last value",
    ),
    pytest.param(
        [{"x": 1.0}, {"x": "on"}],
        {"x": "on"},
        id="a field last a string is a string",
    ),
    pytest.param(
        [{"x": "on"}, {"x": 2}],
        {"x": 2, "x_min": 2, "x_max": 2, "x_count": 1, "x_sum": 2},
        id="a field last a number is a number",
    ),
    pytest.param(
        [{"a": 1.0, "a_min": 5.0}, {"a": 3.0, "a_min": 7.0}],
        {
            "a": 2.0,
            "a_min": 6.0,
            "a_min_min": 5.0,
            "a_min_max": 7.0,
            "a_min_count": 2,
            "a_min_sum": 12.0,
        },
        id="a statistic named like another field is not written",
    ),
    pytest.param(
        [{"a": 1.0, "a_min": "low"}],
        {"a": 1.0, "a_min": "low"},
        id="a string field named like a statistic",
    ),
]


@pytest.mark.parametrize(("readings", "expected"), CASES)
def test_summary_fields(readings: list[dict[str, FieldValue]], expected: dict[str, Any]) -> None:
    """The fields a window's readings give, with their types."""
    raw = [record(3600 * S + i * S, fields) for i, fields in enumerate(readings)]
    (out,) = summarise(raw, level=1, ladder=LADDER, compaction_no=0)
    got = dict(split_fields(out))
    assert got == expected
    assert {k: type(v) for k, v in got.items()} == {k: type(v) for k, v in expected.items()}


def test_a_colliding_field_counts_as_one_sample_above() -> None:
    """Read back, `a` without its statistics is a plain value and `a_min` a group of its own."""
    raw = [record(3600 * S + i * S, {"a": float(i), "a_min": float(i)}) for i in range(4)]
    (level1,) = summarise(raw, level=1, ladder=LADDER, compaction_no=0)
    _, _, fields = read_stats(level1, 1)
    assert fields == {"a": 1.5, "a_min": Stats(4, 6.0, 0.0, 3.0)}
    (level2,) = summarise([level1], level=2, ladder=LADDER, compaction_no=1)
    assert read_stats(level2, 2)[2] == {"a": 1.5, "a_min": Stats(4, 6.0, 0.0, 3.0)}


def test_fields_named_like_a_whole_group_are_not_read_as_one() -> None:
    """Raw `a`, `a_min`, `a_max`, `a_count`, `a_sum` stay five fields at every level."""
    names = ["a", "a_min", "a_max", "a_count", "a_sum"]
    raw = [record(3600 * S, dict.fromkeys(names, 2))]
    (level1,) = summarise(raw, level=1, ladder=LADDER, compaction_no=0)
    fields = read_stats(level1, 1)[2]
    assert fields["a"] == 2
    assert all(fields[name] == Stats(1, 2, 2, 2) for name in names[1:])


def test_sums_left_out_for_their_size_still_summarise() -> None:
    """Summaries without a sum merge again: counts exact, extremes kept, the mean bounded."""
    for big in (1e308, -1e308, 2**62, -(2**62)):
        raw = [record(3600 * S + i * S, {"x": big}) for i in range(3)]
        level1 = summarise(raw, level=1, ladder=LADDER, compaction_no=0)
        level1 += summarise(raw, level=1, ladder=LADDER, compaction_no=1)
        raw = [record(3600 * S, {"x": -big})]
        level1 += summarise(raw, level=1, ladder=LADDER, compaction_no=2)
        (level2,) = summarise(level1, level=2, ladder=LADDER, compaction_no=3)
        stats = read_stats(level2, 2)[2]["x"]
        assert isinstance(stats, Stats)
        assert (stats.count, stats.low, stats.high) == (7, min(big, -big), max(big, -big))
        assert stats.low <= dict(split_fields(level2))["x"] <= stats.high


def test_windows_then_series_in_order_of_appearance() -> None:
    """Summaries come by window, then in the order each series first appears."""
    raw = [
        record(700 * S, {"v": 1.0}, 1),
        record(30 * S, {"v": 1.0}, 0),
        record(10 * S, {"v": 1.0}, 1),
    ]
    out = summarise(raw, level=1, ladder=LADDER, compaction_no=3)
    got = [(split(v).ts_ns, split(v).series) for v in out]
    s0, s1 = (split(raw[1]).series, split(raw[0]).series)
    assert got == [(1 + 8 * 3, s1), (1 + 8 * 3, s0), (660 * S + 1 + 8 * 3, s1)]


def test_timestamp_numbers_wrap_within_half_the_first_step() -> None:
    """The compaction number moves a summary by 8 ns steps, never past half its first window."""
    spread = LADDER.step(1) // 16
    raw = [record(3600 * S, {"v": 1.0})]
    for number, offset in [(0, 1), (1, 9), (spread - 1, 1 + 8 * (spread - 1)), (spread, 1)]:
        (out,) = summarise(raw, level=1, ladder=LADDER, compaction_no=number)
        assert split(out).ts_ns == 3600 * S + offset


def test_a_true_nanosecond_reading_keeps_its_timestamp() -> None:
    """A summary whose timestamp a raw reading of its series has moves to the upper half."""
    spread = LADDER.step(1) // 16
    clash = 3600 * S + 1 + 8 * 5
    raw = [record(3600 * S, {"v": 1.0}), record(clash, {"v": 2.0})]
    (out,) = summarise(raw, level=1, ladder=LADDER, compaction_no=5)
    assert split(out).ts_ns == 3600 * S + 1 + 8 * (spread + 5)
    raw.append(record(split(out).ts_ns, {"v": 3.0}))
    (again,) = summarise(raw, level=1, ladder=LADDER, compaction_no=5)
    assert split(again).ts_ns == 3600 * S + 1 + 8 * (spread + 6)
    assert split(again).ts_ns % LADDER.step(1) < LADDER.step(1)


def test_raw_readings_read_back_plain() -> None:
    """`read_stats` of a raw reading gives its series, timestamp and fields as they are."""
    value = record(5 * S, {"t": 1.5, "n": 2, "s": "x", "b": True}, 1)
    series, ts, fields = read_stats(value, 0)
    assert (series, ts) == (split(value).series, 5 * S)
    assert fields == {"t": 1.5, "n": 2, "s": "x", "b": True}
