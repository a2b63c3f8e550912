"""The compact policy's step in the buffer: what it takes, what it leaves, and what a crash keeps.

The pure choice (gateway/buffer/core/compaction.py) has table tests; the step itself
(gateway/buffer/compaction.py) runs on real buffers here. The state machine
(test_buffer_model.py) interleaves it with everything else.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections import Counter
from typing import TYPE_CHECKING

import lmdb
import pytest

from gateway.buffer import compaction
from gateway.buffer.capacity import readings_budget
from gateway.buffer.core.admission import Lane, Policy, Rules
from gateway.buffer.core.compaction import Choice, Group, choose
from gateway.buffer.core.ledger import level_fifo
from gateway.buffer.core.summary import Ladder, read_stats
from gateway.buffer.damage import Damage
from gateway.buffer.fiforead import FifoWalker
from gateway.buffer.store import Buffer
from gateway.errors import CapacityError, ConfigError, StorageError
from gateway.points.model import Reading
from gateway.points.record import pack
from tests.unit.buffer.checks import WindowStats, window_stats
from tests.unit.buffer.faults import Fault, Faults

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

CAPACITY = 64 << 20
SECOND = 1_000_000_000
LADDER = Ladder((SECOND, 4 * SECOND))
COMPACTING = Lane(policy=Policy.COMPACT, steps_ns=LADDER.steps_ns)
FORCED = Rules(budget_bytes=1 << 40, default_lane=COMPACTING)


def reading(device: str, i: int, *, step_ns: int = 10_000_000, series: str = "") -> bytes:
    """Reading `i` of a device, `step_ns` apart, with an int, a float and a string field."""
    tags = (("device", device), ("s", series)) if series else (("device", device),)
    fields = (("v", i), ("t", i / 4), ("s", f"state{i % 3}"))
    return pack(Reading(device, "m", tags, fields, i * step_ns))


def fill(buffer: Buffer, devices: list[str], count: int, **kwargs: int) -> None:
    for start in range(0, count, 500):
        buffer.append(
            [
                (d, reading(d, i, **kwargs))
                for i in range(start, min(count, start + 500))
                for d in devices
            ]  # type: ignore[arg-type]
        )


def stats_of(records: list[tuple[int, bytes]]) -> dict[tuple[bytes, int, str], WindowStats]:
    """The statistics per series, coarsest window and numeric field."""
    return window_stats(records, LADDER.step(LADDER.levels))


def held(buffer: Buffer, device: str) -> list[tuple[int, bytes]]:
    """Every record of a device's FIFOs, with its level."""
    return [
        (level, value)
        for level in range(LADDER.levels + 1)
        for value in buffer.readings_of(level_fifo(device, level))
    ]


def compact_all(buffer: Buffer, rules: Rules = FORCED, *, limit: int = 10_000) -> int:
    steps = 0
    while steps < limit and buffer.compact(rules, force=True) is not None:
        steps += 1
    return steps


# The choice.


def group(fifo: str, nbytes: tuple[int, ...], droppable: tuple[int, ...] | None = None) -> Group:
    return Group(fifo, nbytes, nbytes if droppable is None else droppable)


@pytest.mark.parametrize(
    ("groups", "spent", "expected"),
    [
        # The device with the most droppable bytes; its raw readings while levels are small.
        ([group("a", (100, 0, 0)), group("b", (300, 10, 0))], (), Choice("b", 0)),
        # In flight does not count: b holds more, a can give more.
        ([group("a", (200, 0, 0)), group("b", (300, 0, 0), (50, 0, 0))], (), Choice("a", 0)),
        # A level past its share of the device's bytes goes up first, the finest such.
        ([group("a", (50, 30, 30))], (), Choice("a", 1)),
        ([group("a", (50, 10, 40))], (), Choice("a", 0)),  # the coarsest never goes up
        ([group("a", (50, 0, 30, 30))], (), Choice("a", 2)),
        # A level past its share but all in flight: the raw readings.
        ([group("a", (50, 30, 0), (50, 0, 0))], (), Choice("a", 0)),
        # Raw spent (not worth it): the finest level with something, else the coarsest dropped.
        ([group("a", (50, 5, 10))], {("a", 0)}, Choice("a", 1)),
        ([group("a", (50, 0, 10))], {("a", 0)}, Choice("a", 2, drop=True)),
        ([group("a", (0, 0, 10))], (), Choice("a", 2, drop=True)),
        # A group whose only bytes are spent loses to any other.
        ([group("a", (500, 0, 0)), group("b", (10, 0, 0))], {("a", 0)}, Choice("b", 0)),
        # Nothing to give.
        ([group("a", (100, 0, 0), (0, 0, 0))], (), None),
        ([group("a", (100, 0, 0))], {("a", 0)}, None),
        ([], (), None),
    ],
)
def test_choose_takes_the_largest_device_and_the_level_past_its_share(
    groups: list[Group], spent: set[tuple[str, int]], expected: Choice | None
) -> None:
    """The choice: the device with most droppable bytes, a level past its share, raw, then up."""
    assert choose(groups, 0.25, spent) == expected


def test_critical_and_other_lanes_are_never_compacted(tmp_path: Path) -> None:
    """Critical compact lanes and lanes of other policies keep every reading."""
    with Buffer(tmp_path, CAPACITY) as buffer:
        fill(buffer, ["a", "b"], 400)
        before = buffer.level_counts()
        critical = Rules(1 << 40, default_lane=Lane(policy=Policy.COMPACT, critical=True))
        dropping = Rules(1 << 40, default_lane=Lane(policy=Policy.DROP_OLDEST))
        assert buffer.compact(critical, force=True) is None
        assert buffer.compact(dropping, force=True) is None
        assert buffer.level_counts() == before


# The step.


def test_compaction_keeps_every_statistic_and_raw_keeps_the_newest(tmp_path: Path) -> None:
    """Runs become summaries level by level; per window the statistics are the raw ones."""
    with Buffer(tmp_path, CAPACITY) as buffer:
        fill(buffer, ["a", "b"], 3000)
        raw = {d: [(0, v) for v in buffer.readings_of(d)] for d in "ab"}
        made: Counter[int] = Counter()
        for _ in range(6):
            done = buffer.compact(FORCED, force=True)
            assert done is not None
            made += done.made
        assert made[1] > 0
        for device in "ab":
            records = held(buffer, device)
            assert stats_of(records) == stats_of(raw[device])
            newest = buffer.readings_of(device)
            if newest:
                assert newest[-1] == raw[device][-1][1]
        counts = buffer.level_counts()
        assert counts[1][0] == sum(made.values()) - buffer.level_counts().get(2, (0, 0))[0]
        assert sum(n for n, _ in counts.values()) == buffer.totals().readings
        assert sum(b for _, b in counts.values()) == buffer.totals().nbytes
        assert buffer.verify().is_consistent


def test_a_compaction_behind_a_lease_leaves_the_lease_deletable(tmp_path: Path) -> None:
    """The run starts after the readings in flight; their delivery deletes them as read."""
    with Buffer(tmp_path, CAPACITY) as buffer:
        fill(buffer, ["a"], 3000)
        (span,) = buffer.read([("a", 100)])
        assert buffer.compact(FORCED, force=True) is not None
        assert buffer.readings_of("a")[:100] == list(span.values)
        assert buffer.delete([("a", span.first_seq, 100)]) == 100
        assert buffer.verify().is_consistent


def test_a_compaction_never_takes_the_live_stream(tmp_path: Path) -> None:
    """During a live-first drain only the backlog is summarised; live readings go as they are."""
    with Buffer(tmp_path, CAPACITY) as buffer:
        fill(buffer, ["a"], 2000)
        buffer.begin_live_first()
        live = [reading("a", i) for i in range(5000, 5100)]
        buffer.append([("a", v) for v in live])
        compact_all(buffer)
        assert buffer.readings_of("a") == live
        spans = buffer.read_live([("a", 100)])
        assert [v for s in spans for v in s.values] == live


def test_a_run_whose_summaries_free_nothing_commits_nothing(tmp_path: Path) -> None:
    """Every reading a series of its own in its window: no step, no journal record."""
    with Buffer(tmp_path, CAPACITY) as buffer:
        buffer.append([("a", reading("a", i, series=f"s{i}")) for i in range(300)])
        records = buffer._ledger.next_record
        before = buffer.readings_of("a")
        assert buffer.compact(FORCED, force=True) is None
        assert buffer._ledger.next_record == records
        assert buffer.readings_of("a") == before
        assert buffer.level_counts() == {0: (300, buffer.totals().nbytes)}


def test_compaction_starts_midway_to_the_high_watermark_and_stops_below_the_low(
    tmp_path: Path,
) -> None:
    """Hysteresis: nothing below the start; once started, steps until below the low watermark."""
    with Buffer(tmp_path, CAPACITY) as buffer:
        fill(buffer, ["a", "b"], 3000)
        used = buffer.totals().nbytes
        # The start (midway between 0.8 and 0.9) is just above the fill: nothing to do.
        calm = Rules(int(used / 0.84), high=0.9, low=0.8, default_lane=COMPACTING)
        assert buffer.compact(calm) is None
        # Just past the start: steps until below the low watermark, then none.
        pressed = Rules(int(used / 0.86), high=0.9, low=0.8, default_lane=COMPACTING)
        steps = 0
        while buffer.compact(pressed) is not None:
            steps += 1
            assert steps < 1000
        assert steps > 0
        assert buffer.totals().nbytes < pressed.low_bytes


class CountingWalker:
    """Counts the bytes of the records walked, as `FifoWalker.readings` hands them out."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.nbytes = 0
        walk = FifoWalker.readings

        def readings(walker: FifoWalker, *args: object) -> Iterator[tuple[int, bytes]]:
            for seq, value in walk(walker, *args):  # type: ignore[arg-type]
                self.nbytes += len(value)
                yield seq, value

        monkeypatch.setattr(FifoWalker, "readings", readings)


@pytest.mark.parametrize("size", [0, 2_000, 200_000])
def test_a_step_reads_at_most_its_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    """One step reads about STEP_BYTES of records (one more at most), whatever the backlog."""
    with Buffer(tmp_path, CAPACITY) as buffer:
        pad = "p" * size
        for start in range(0, 4000 if size < 1000 else 40, 200):
            buffer.append(
                [
                    ("a", pack(Reading("a", "m", (("device", "a"),), (("v", i), ("s", pad)), i)))
                    for i in range(start * 1000, (start + 200) * 1000, 1000)
                ]
            )
        counting = CountingWalker(monkeypatch)
        biggest = max(len(v) for v in buffer.readings_of("a"))
        counting.nbytes = 0
        done = buffer.compact(FORCED, force=True)
        assert done is not None or size
        # The run's last record crosses the bound; the walk looks at the next one, and the
        # FIFO's new head is read for its timestamp.
        assert counting.nbytes <= compaction.STEP_BYTES + 3 * biggest


def test_summaries_never_become_latest_values(tmp_path: Path) -> None:
    """The latest-value table holds raw readings only, after a compaction and after a replay,
    also for a series the table's bound had evicted."""
    with Buffer(tmp_path, CAPACITY, latest_series=1) as buffer:
        fill(buffer, ["a"], 3000)
        buffer.append([("b", reading("b", 1))])  # evicts a's series from the table
        buffer.checkpoint()  # the raw readings' latest values are stored, not replayed
        compact_all(buffer, limit=6)
        latest = {d: buffer.latest_of(d) for d in "ab"}
        buffer.abandon()
    buffer = Buffer(tmp_path, CAPACITY, latest_series=1)
    try:
        assert {d: buffer.latest_of(d) for d in "ab"} == latest
        assert latest["a"] == []
    finally:
        buffer.close()


@pytest.mark.parametrize("point", ["before_commit", "after_commit"])
def test_a_crash_around_a_step_keeps_all_of_it_or_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, point: str
) -> None:
    """kill -9 just before a step's commit keeps none of it; just after, all of it."""

    class Killed(BaseException):
        pass

    def kill(_pid: int, _signal: int) -> None:
        raise Killed

    with Buffer(tmp_path, CAPACITY) as buffer:
        fill(buffer, ["a"], 3000)
        before = {level: buffer.readings_of(level_fifo("a", level)) for level in range(3)}
        raw = stats_of(held(buffer, "a"))
    monkeypatch.setenv(compaction.FAULT_ENV, f"{point}:1:1")
    monkeypatch.setattr(os, "kill", kill)
    buffer = Buffer(tmp_path, CAPACITY)
    with pytest.raises(Killed):
        buffer.compact(FORCED, force=True)
    buffer.abandon()
    monkeypatch.delenv(compaction.FAULT_ENV)
    with Buffer(tmp_path, CAPACITY) as buffer:
        after = {level: buffer.readings_of(level_fifo("a", level)) for level in range(3)}
        if point == "before_commit":
            assert after == before
        else:
            assert after != before
            assert len(after[0]) < len(before[0])
        assert stats_of(held(buffer, "a")) == raw
        assert buffer.verify().is_consistent
        # The next step's summaries never take an earlier one's timestamps.
        compact_all(buffer, limit=3)
        places = [read_stats(v, level)[:2] for level, v in held(buffer, "a")]
        assert len(places) == len(set(places))


def test_a_failed_step_commit_changes_nothing(tmp_path: Path) -> None:
    """A step whose journal commit fails raises StorageError and leaves every FIFO as it was."""
    with Buffer(tmp_path, CAPACITY) as buffer:
        fill(buffer, ["a"], 3000)
        before = held(buffer, "a")
        faults = Faults(buffer)
        faults.arm(Fault("journal", 0, None, lmdb.Error))
        with pytest.raises(StorageError):
            buffer.compact(FORCED, force=True)
        assert held(buffer, "a") == before
        assert buffer.compact(FORCED, force=True) is not None


def test_thousands_of_devices_compact_exactly(tmp_path: Path) -> None:
    """3,000 devices of a few readings each: steps go device by device, statistics exact."""
    devices = [f"dev-{i:04d}" for i in range(3000)]
    with Buffer(tmp_path, CAPACITY) as buffer:
        fill(buffer, devices, 8, step_ns=100_000_000)
        raw = {d: stats_of([(0, v) for v in buffer.readings_of(d)]) for d in devices[:50]}
        steps = 0
        while buffer.compact(FORCED, force=True) is not None and steps < 200:
            steps += 1
        assert steps == 200
        assert buffer.level_counts()[1][0] > 0
        for device, stats in raw.items():
            assert stats_of(held(buffer, device)) == stats
        assert buffer.verify().is_consistent


def test_damaged_summaries_are_counted_apart_from_readings() -> None:
    """A damaged chunk's raw readings count by class, its summaries by level, each told apart."""
    damage = Damage()
    told: list[object] = []
    damage.on_damaged = lambda chunks, lost: told.append((chunks, lost))
    damage.on_damaged_summaries = told.append
    damage.count(1, {"a": 2, "a\x1fcold": 1, level_fifo("a", 1): 3, level_fifo("b", 2): 4})
    assert damage.by_class == Counter({("damaged", "default"): 2, ("damaged", "cold"): 1})
    assert damage.readings == 3
    assert damage.summaries == Counter({1: 3, 2: 4})
    assert told == [Counter({1: 3, 2: 4}), (1, damage.by_class)]


def test_the_fault_hook_is_absent_unless_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset there is no hook; a malformed one is refused; a set one kills at its NTH step."""
    monkeypatch.delenv(compaction.FAULT_ENV, raising=False)
    assert compaction.fault_from_environment() is None
    monkeypatch.setenv(compaction.FAULT_ENV, "during:1:1")
    with pytest.raises(ConfigError):
        compaction.fault_from_environment()
    monkeypatch.setenv(compaction.FAULT_ENV, "after_commit:2:2")
    kills: list[int] = []
    monkeypatch.setattr(os, "kill", lambda _pid, sig: kills.append(sig))
    hook = compaction.fault_from_environment()
    assert hook is not None
    for level in (2, 1, 2):
        hook("before_commit", level)
        hook("after_commit", level)
    assert kills == [signal.SIGKILL]


def test_the_coarsest_summaries_are_dropped_last_and_counted(tmp_path: Path) -> None:
    """With raw and finer levels spent, the coarsest level's oldest summaries go, counted."""
    with Buffer(tmp_path, CAPACITY) as buffer:
        fill(buffer, ["a"], 3000)
        dropped: Counter[int] = Counter()
        made: Counter[int] = Counter()
        while (done := buffer.compact(FORCED, force=True)) is not None:
            dropped += done.dropped_summaries
            made += done.made
        assert set(dropped) == {LADDER.levels}
        assert buffer.level_counts() == {0: (0, 0)}
        assert made[LADDER.levels] == dropped[LADDER.levels]


def test_a_step_before_the_gap_reads_no_further_than_the_gap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refused batch retried shorter, then a step: it reads about its bytes, not to the end."""
    with Buffer(tmp_path, CAPACITY) as buffer:
        fill(buffer, ["a"], 30_000)
        buffer.read([("a", 2000)])
        assert buffer.compact(FORCED, force=True) is not None  # the gap, behind the batch
        buffer.release(["a"])
        (span,) = buffer.read([("a", 100)])
        counting = CountingWalker(monkeypatch)
        assert buffer.compact(FORCED, force=True) is not None
        assert counting.nbytes <= 2 * compaction.STEP_BYTES
        assert buffer.delete([("a", span.first_seq, 100)]) == 100
        assert buffer.verify().is_consistent


def test_pages_near_the_guard_start_compaction_below_the_watermarks(tmp_path: Path) -> None:
    """Readings that fill the pages before the budget: compaction starts, the guard never stops it.

    With the default watermarks a 1 MiB buffer of these readings met the page guard at a third
    of its budget, and the guard refused intake and every later compaction step alike.
    """
    capacity = 1 << 20
    rules = Rules(readings_budget(capacity), high=0.9, low=0.8, default_lane=COMPACTING)
    with Buffer(tmp_path, capacity) as buffer:
        steps = 0
        for i in range(0, 1500, 10):
            for device in (f"dev-{k:02}" for k in range(20)):
                batch = [
                    (device, reading(device, j, step_ns=100_000_000), COMPACTING)
                    for j in range(i, i + 10)
                ]
                try:
                    buffer.admit(batch, rules)
                except CapacityError:
                    pytest.fail(
                        f"intake paused at fill {buffer.totals().nbytes / rules.budget_bytes:.2f}"
                    )
                buffer.maintain()
                # As the service does: a step without room is tried again later.
                with contextlib.suppress(CapacityError):
                    steps += buffer.compact(rules) is not None
        assert steps > 0
        assert buffer.totals().nbytes < rules.high_bytes
        assert buffer.verify().is_consistent


def test_summary_fifos_take_no_place_of_max_devices(tmp_path: Path) -> None:
    """A fleet as large as `max_devices` keeps every reading once its readings are summarised.

    Compaction moved each device's readings into summary FIFOs; they held places of the limit,
    so a device whose raw FIFO was emptied, or a device new to the buffer, was refused.
    """
    rules = Rules(1 << 40, max_devices=3, default_lane=COMPACTING)
    with Buffer(tmp_path, CAPACITY) as buffer:
        for device in "ab":
            buffer.admit([(device, reading(device, i), COMPACTING) for i in range(3000)], rules)
        while buffer.level_counts()[0][0]:
            assert buffer.compact(rules, force=True) is not None
        assert buffer.totals().devices >= 2
        admitted = buffer.admit([(d, reading(d, 5000), COMPACTING) for d in ("a", "b", "c")], rules)
        assert (admitted.stored, admitted.refused) == (3, Counter())
        # The limit still holds for devices.
        refused = buffer.admit([("d", reading("d", 1), COMPACTING)], rules).refused
        assert refused == Counter({("max_devices", "default"): 1})


def test_a_step_commits_at_the_page_guard_and_intake_resumes(tmp_path: Path) -> None:
    """At the page guard a step still commits (it writes nothing to the store), then intake goes on.

    The guard refused every step as it refused intake: with the database down, nothing could
    ever free a page again.
    """
    capacity = 1 << 20
    budget = readings_budget(capacity)
    holding = Rules(budget, high=0.9, low=0.8, default_lane=Lane())
    rules = Rules(budget, high=0.9, low=0.8, default_lane=COMPACTING)
    devices = [f"dev-{k:02}" for k in range(20)]

    def batch(device: str, i: int) -> list[tuple[str, bytes, Lane]]:
        return [
            (device, reading(device, j, step_ns=100_000_000), COMPACTING) for j in range(i, i + 10)
        ]

    with Buffer(tmp_path, capacity) as buffer:

        def fill_to_the_guard() -> None:
            i = 0
            while True:
                for device in devices:
                    buffer.admit(batch(device, i), holding)
                buffer.maintain()
                i += 10

        with pytest.raises(CapacityError, match="nearly full"):
            fill_to_the_guard()
        assert buffer.totals().nbytes < rules.low_bytes  # the pages, not the budget, are full
        steps = 0
        while buffer.compact(rules) is not None:
            steps += 1
            buffer.maintain()
        assert steps > 0
        buffer.admit(batch(devices[0], 100_000), rules)
        assert buffer.verify().is_consistent
