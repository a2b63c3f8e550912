"""Readings the broker may deliver again stay raw: the fence, pure and in a real buffer.

After kill -9 the broker sends again the messages whose PUBACKs it had not read; a first copy
already in a summary would, with its raw second copy, be counted twice in the database. The
model (test_buffer_model.py) redelivers after its crashes; these are the fence's own cases.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.buffer import checkpoint, compaction
from gateway.buffer.core.fence import RECENT_RECORDS, START, Fence
from gateway.buffer.store import FENCE_BUDGET_SHARE, Buffer
from tests.unit.buffer.test_compaction import FORCED, reading

if TYPE_CHECKING:
    from pathlib import Path


def test_the_newest_records_are_fenced_and_older_ones_are_not() -> None:
    """A FIFO's fence starts at its first reading in the newest `RECENT_RECORDS` records."""
    fence = Fence()
    for i in range(RECENT_RECORDS + 3):
        fence.add({1: 10 * i}, [b"r%d" % i])
    assert fence.limit(1) == 30
    assert fence.limit(2) is None
    assert fence.knows(b"r3")
    assert not fence.knows(b"r2")


def test_the_records_kept_take_at_most_the_bytes_allowed_but_the_newest_stays() -> None:
    """Older records leave once the readings pass `max_bytes`; one record alone always stays."""
    fence = Fence(max_bytes=250)
    fence.add({1: 0}, [b"a" * 100])
    fence.add({1: 1}, [b"b" * 100])
    fence.add({1: 2}, [b"c" * 100])
    assert (fence.limit(1), fence.knows(b"a" * 100)) == (1, False)
    fence.add({2: 0}, [b"d" * 1000])
    assert (fence.limit(1), fence.limit(2)) == (None, 0)


def test_a_hold_keeps_its_records_fenced_until_every_holder_lifts() -> None:
    """Records held at a connection's end stay fenced past newer ones until the last lift."""
    fence = Fence(records=2)
    fence.add({1: 0, 2: 0}, [b"first"])
    fence.hold("a")
    fence.hold("b")
    for i in range(1, 5):
        fence.add({1: 10 * i})
    assert (fence.limit(1), fence.limit(2), fence.knows(b"first")) == (0, 0, True)
    fence.lift("a")
    assert (fence.limit(1), fence.limit(2)) == (0, 0)
    fence.lift("b")
    assert (fence.limit(1), fence.limit(2), fence.knows(b"first")) == (30, None, False)


def test_the_noted_limits_come_back_as_the_oldest_record() -> None:
    """What a checkpoint notes is what start-up learns first."""
    fence = Fence()
    fence.add({1: 5, 7: 9})
    fence.hold(START)
    fence.add({1: 8, 3: 2})
    again = Fence()
    again.add_packed(fence.packed())
    assert {n: again.limit(n) for n in (1, 3, 7)} == {1: 5, 3: 2, 7: 9}


@given(
    records=st.lists(
        st.dictionaries(st.integers(0, 4), st.integers(1, 5), min_size=1), max_size=40
    ),
    hold_at=st.integers(0, 40),
)
def test_the_limit_is_the_first_reading_of_the_newest_records_or_the_held(
    records: list[dict[int, int]], hold_at: int
) -> None:
    """Against a plain replay: the limit is the smallest first sequence in the recent or held."""
    fence = Fence(records=4)
    nexts: dict[int, int] = {}
    firsts: list[dict[int, int]] = []
    held: dict[int, int] = {}
    for i, counts in enumerate(records):
        if i == hold_at:
            fence.hold("a")
            for record in firsts[-4:]:
                for number, first in record.items():
                    held[number] = min(held.get(number, first), first)
        record = {}
        for number, count in counts.items():
            record[number] = nexts.get(number, 0)
            nexts[number] = record[number] + count
        firsts.append(record)
        fence.add(record)
    for number in range(5):
        seen = [r[number] for r in firsts[-4:] if number in r]
        if number in held:
            seen.append(held[number])
        assert fence.limit(number) == (min(seen) if seen else None)


def _fill(buffer: Buffer, device: str, records: int, first: int = 0, per: int = 200) -> None:
    for r in range(records):
        buffer.append([(device, reading(device, first + r * per + i)) for i in range(per)])


def _compact_all(buffer: Buffer) -> None:
    for _ in range(200):
        if buffer.compact(FORCED, force=True) is None:
            return


def test_compaction_leaves_the_newest_records_raw_across_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compaction stops at the newest records; after a reopen they stay raw until a lift, and
    a clean connection end lets it take them."""
    # A FIFO that had nothing to give is looked at again at once, not a second later.
    monkeypatch.setattr(compaction, "EMPTY_NS", 0)
    newest = {reading("a", i) for i in range(30 * 200 - RECENT_RECORDS * 200, 30 * 200)}
    with Buffer(tmp_path, 64 << 20, redelivery_fence=True) as buffer:
        _fill(buffer, "a", 30)
        _compact_all(buffer)
        assert set(buffer.readings_of("a")) == newest
        assert all(buffer.redelivered(sorted(newest)))
    with Buffer(tmp_path, 64 << 20, redelivery_fence=True) as buffer:
        _compact_all(buffer)
        assert set(buffer.readings_of("a")) == newest
        assert all(buffer.redelivered(sorted(newest)))
        buffer.hold_fence("intake")
        _fill(buffer, "a", RECENT_RECORDS + 1, first=30 * 200)
        assert buffer.lift_fence("intake")
        _compact_all(buffer)
        # The start-up hold went with the lift: only the newest records of now stay raw.
        assert not set(buffer.readings_of("a")) & newest
        assert not any(buffer.redelivered(sorted(newest)))
        assert len(buffer.readings_of("a")) == RECENT_RECORDS * 200


@pytest.mark.parametrize("crash", [False, True])
def test_the_fence_pins_at_most_its_share_of_a_small_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, crash: bool
) -> None:
    """On the smallest buffer, commits are fenced only up to the fence's share of the budget,
    live and as a start-up reads them back from the journal after kill -9."""
    monkeypatch.setattr(compaction, "EMPTY_NS", 0)
    buffer = Buffer(tmp_path, 1 << 20, redelivery_fence=True)
    buffer.lift_fence("intake")
    _fill(buffer, "a", RECENT_RECORDS, per=2000)
    if crash:
        buffer.abandon()
        buffer = Buffer(tmp_path, 1 << 20, redelivery_fence=True)
    with buffer:
        _compact_all(buffer)
        kept = buffer.readings_of("a")
        one_record = sum(map(len, kept[-2000:]))
        assert 0 < sum(map(len, kept)) <= buffer.budget_bytes // FENCE_BUDGET_SHARE + one_record
        assert len(kept) < RECENT_RECORDS * 2000


def test_copies_recognised_stay_fenced_as_long_as_the_commit_that_acknowledged_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The PUBACKs of recognised copies go out with the next commit: a reset right after it
    brings the copies again, and their first copies must still be raw and known."""
    monkeypatch.setattr(compaction, "EMPTY_NS", 0)
    with Buffer(tmp_path, 64 << 20, redelivery_fence=True) as buffer:
        buffer.lift_fence("intake")
        _fill(
            buffer, "a", RECENT_RECORDS
        )  # acknowledged, but a reset came before the broker read it
        sent = buffer.readings_of("a")
        buffer.hold_fence("intake")
        assert all(buffer.redelivered(sent))  # all sent again, recognised, acknowledged again
        buffer.lift_fence("intake")  # a fresh message
        _fill(buffer, "b", 1)  # its commit; the acknowledgements go out after it
        buffer.hold_fence("intake")  # a reset before the broker read them
        _compact_all(buffer)
        assert buffer.readings_of("a") == sent
        assert all(buffer.redelivered(sent))


def test_without_the_fence_compaction_takes_every_reading(tmp_path: Path) -> None:
    """A buffer not fed by acknowledged messages (tools, benchmarks) has no fence."""
    with Buffer(tmp_path, 64 << 20) as buffer:
        _fill(buffer, "a", 5)
        _compact_all(buffer)
        assert buffer.readings_of("a") == []


def test_sealed_records_stay_fenced_across_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A seal moves the newest records out of the journal: the checkpoint keeps their fence."""
    monkeypatch.setattr(checkpoint, "SEAL_READINGS", 24)
    monkeypatch.setattr(checkpoint, "SEAL_RECORDS", 6)
    newest = {reading("a", i) for i in range(30 * 200 - RECENT_RECORDS * 200, 30 * 200)}
    buffer = Buffer(tmp_path, 64 << 20, redelivery_fence=True)
    for r in range(30):
        _fill(buffer, "a", 1, first=r * 200)
        buffer.checkpoint()  # completes the seal due: the record leaves the journal
    assert all(buffer.redelivered(sorted(newest)))
    buffer.abandon()  # kill -9
    with Buffer(tmp_path, 64 << 20, redelivery_fence=True) as buffer:
        assert all(buffer.redelivered(sorted(newest)))
        _compact_all(buffer)
        assert newest <= set(buffer.readings_of("a"))


def test_one_commit_bigger_than_the_bound_is_fenced_only_in_its_newest_readings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit of big readings past the fence's share of a small budget cannot keep the buffer
    above its low watermark: compaction takes all but its newest readings within the bound."""
    monkeypatch.setattr(compaction, "EMPTY_NS", 0)
    big = [reading("a", i, series="x" * 600) for i in range(1200)]
    with Buffer(tmp_path, 1 << 20, redelivery_fence=True) as buffer:
        buffer.lift_fence("intake")
        buffer.append([("a", value) for value in big])
        _compact_all(buffer)
        kept = buffer.readings_of("a")
        assert kept == big[-len(kept) :]
        assert 0 < sum(map(len, kept)) <= buffer.budget_bytes // FENCE_BUDGET_SHARE
        assert all(buffer.redelivered(kept))


@given(
    counts=st.lists(st.integers(1, 30), min_size=1, max_size=60),
    size=st.integers(1, 700),
    max_bytes=st.integers(1, 20_000),
)
def test_a_replayed_record_is_fenced_within_the_bound_however_many_devices_it_spans(
    counts: list[int], size: int, max_bytes: int
) -> None:
    """A start-up fences of a journal record the share within the bound (one reading at
    least) across all its devices, each limit inside its segment, not one reading per device."""
    fence = Fence(max_bytes=max_bytes)
    segments = [(number, 10 * number, count) for number, count in enumerate(counts)]
    fence.add_replayed(segments, size * sum(counts))
    fenced = 0
    for number, first, count in segments:
        limit = fence.limit(number)
        if limit is not None:
            assert first <= limit < first + count
            fenced += first + count - limit
    assert fenced >= 1
    assert fenced * size <= max(max_bytes, size)
    if size * sum(counts) <= max_bytes:
        assert fenced == sum(counts)
