"""Drops behind a lease: a FIFO keeps one gap, and no reading vanishes without a count.

A drop behind a flush in flight leaves a gap. When the next lease is shorter (the batch size
halved after a failed write), a later drop must not widen the gap over readings it did not
take; after a restart during a live-first drain the delivered live run is such a gap. The
start-up check counts the gap, and repair brings back readings a wrong gap hid.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.buffer.core.admission import Lane, Policy, Rules
from gateway.buffer.core.chunk import reading_bytes
from gateway.buffer.core.ledger import TOTALS
from gateway.buffer.store import Buffer
from gateway.errors import CapacityError
from tests.unit.buffer.checks import assert_counts_match, reading

if TYPE_CHECKING:
    import pytest

CAPACITY = 64 << 20
DROPPING = Lane(policy=Policy.DROP_OLDEST)


def drop_behind(buffer: Buffer, fifo: str, value: bytes) -> int:
    """Admit `value` into a buffer full to the byte: returns how many readings were dropped."""
    rules = Rules(budget_bytes=buffer.totals().nbytes, high=1.0, low=0.5, default_lane=DROPPING)
    admitted = buffer.admit([(fifo, value, DROPPING)], rules)
    return sum(admitted.dropped.values())


def test_drop_behind_a_shorter_lease_widens_the_gap(tmp_path: Path) -> None:
    """200 buffered, lease 100, drop, release, lease 10, drop: every reading gone is counted."""
    with Buffer(tmp_path, CAPACITY) as buffer:
        values = [reading("d", ts, 8 + ts % 390) for ts in range(200)]
        buffer.append([("d", v) for v in values])
        buffer.read([("d", 100)])
        dropped = drop_behind(buffer, "d", reading("d", 1000, 40))
        buffer.release(["d"])
        (span,) = buffer.read([("d", 10)])
        dropped += drop_behind(buffer, "d", reading("d", 1001, 40))
        assert_counts_match(buffer)
        assert buffer.totals().readings == 200 + 2 - dropped
        # The lease is untouched, and what is gone is one run: the FIFO's one gap, widened.
        left = buffer.readings_of("d")
        assert left[:10] == list(span.values) == values[:10]
        kept = set(left[10:-2])
        gone = [at for at, value in enumerate(values) if value not in kept and at >= 10]
        assert len(gone) == dropped
        assert gone == list(range(gone[0], gone[0] + len(gone)))
        # One batch later the FIFO is read on past the gap, nothing counted twice.
        assert buffer.delete([("d", 0, 10)]) == 10
        assert_counts_match(buffer)


def test_many_devices_with_halved_leases_keep_exact_counts(tmp_path: Path) -> None:
    """Thousands of devices, each with a drop behind a lease, then a shorter one: counts hold."""
    devices = [f"device-{i:04d}" for i in range(2000)]
    appended = 0
    with Buffer(tmp_path, CAPACITY) as buffer:
        for round_ in range(8):
            items = [
                (d, reading(d, round_ * 10_000 + i, 8 + i % 200)) for i, d in enumerate(devices)
            ]
            buffer.append(items)
            appended += len(items)
        dropped = 0
        for lease in (6, 3):
            buffer.read([(d, lease) for d in devices])
            for i, device in enumerate(devices[:300]):
                dropped += drop_behind(buffer, device, reading(device, 90_000 + i, 400))
                appended += 1
            buffer.release(devices)
        assert_counts_match(buffer)
        assert buffer.totals().readings == appended - dropped


def test_restart_during_a_live_first_drain_keeps_the_backlog_counted(tmp_path: Path) -> None:
    """A delivered live run survives a restart as the FIFO's gap; a drop widens it by its need."""
    with Buffer(tmp_path, CAPACITY) as buffer:
        buffer.append([("d", reading("d", ts, 8 + ts * 7 % 393)) for ts in range(1, 51)])
        buffer.begin_live_first()
        buffer.append([("d", reading("d", ts, 120)) for ts in range(100, 120)])
        (live,) = buffer.read_live([("d", 5)])
        assert buffer.delete([("d", live.first_seq, 5)]) == 5
    with Buffer(tmp_path, CAPACITY) as buffer:
        assert buffer.devices()["d"].gap_end > buffer.devices()["d"].gap_start
        buffer.read([("d", 10)])
        dropped = drop_behind(buffer, "d", reading("d", 500, 16))
        assert_counts_match(buffer)
        assert buffer.totals().readings == 50 + 15 + 1 - dropped
        # What the need asks for, not the whole backlog between the lease and the live run.
        assert 1 <= dropped <= 3
    with Buffer(tmp_path, CAPACITY) as buffer:
        assert_counts_match(buffer)


def test_start_up_check_counts_the_gap_and_repair_brings_hidden_readings_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A gap covering readings still counted is caught at start; the readings come back."""
    values = [reading("d", ts, 8 + ts * 13 % 393) for ts in range(200)]
    with Buffer(tmp_path, CAPACITY) as buffer:
        buffer.append([("d", v) for v in values])
    # What a drop widening the gap over undropped readings left on disk.
    buffer = Buffer(tmp_path, CAPACITY)
    state = buffer.devices()["d"]
    state.gap_start, state.gap_end = 10, 102
    with buffer._env.begin(write=True) as txn:
        txn.put(b"d", state.pack(), db=buffer._tables.devices)
    buffer.abandon()
    caplog.errors_expected = True  # type: ignore[attr-defined]
    with Buffer(tmp_path, CAPACITY) as buffer:
        assert "did not match its data" in caplog.text
        assert buffer.readings_of("d") == values
        assert_counts_match(buffer)


def test_accounting_past_the_data_is_recounted_instead_of_wedging(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A plausible ledger counting readings the data lacks: deletes and drops still work."""
    values = [reading("d", ts, 50) for ts in range(20)]
    with Buffer(tmp_path, CAPACITY) as buffer:
        buffer.append([("d", v) for v in values])
        buffer.append([("e", reading("e", ts, 50)) for ts in range(20)])
    buffer = Buffer(tmp_path, CAPACITY)
    state = buffer.devices()["d"]
    phantom = 5 * reading_bytes(values[0])
    state.next += 5
    state.readings += 5
    state.nbytes += phantom
    totals = buffer.totals()
    with buffer._env.begin(write=True) as txn:
        txn.put(b"d", state.pack(), db=buffer._tables.devices)
        raw = TOTALS.pack(totals.readings + 5, totals.nbytes + phantom)
        txn.put(b"totals", raw, db=buffer._tables.meta)
    buffer.abandon()
    caplog.errors_expected = True  # type: ignore[attr-defined]
    with Buffer(tmp_path, CAPACITY) as buffer:
        (span,) = buffer.read([("d", 100)])
        assert list(span.values) == values
        assert buffer.delete([("d", span.first_seq, 20)]) == 20
        assert buffer.devices()["d"].readings == 0
        assert buffer.totals().readings == 20
        buffer.append([("d", reading("d", 99, 50))])
        assert drop_behind(buffer, "e", reading("e", 99, 400)) > 0
        assert_counts_match(buffer)


def model_drop(model: list[bytes], gap: int | None, leased: int, dropped: int) -> int | None:
    """Take a drop out of the list the way the buffer does; returns where the gap lies now."""
    if gap is not None and leased < gap and dropped < gap - leased:
        # The run just before the gap: the gap widens towards the lease.
        del model[gap - dropped : gap]
        return gap - dropped
    if dropped:
        del model[leased : leased + dropped]
        return leased or None
    return gap


@st.composite
def steps(draw: st.DrawFn) -> list[tuple[str, int]]:
    """Leases (each releasing the one before), deliveries, drops, appends and restarts."""
    kinds = st.sampled_from(["lease", "lease", "deliver", "drop", "drop", "append", "reopen"])
    return draw(st.lists(st.tuples(kinds, st.integers(1, 60)), min_size=1, max_size=25))


@settings(max_examples=60, deadline=None)
@given(plan=steps(), sizes=st.lists(st.integers(8, 400), min_size=1, max_size=8))
def test_drops_never_take_a_leased_reading_nor_lose_one_uncounted(
    plan: list[tuple[str, int]], sizes: list[int]
) -> None:
    """Against a list: a drop takes readings after the lease only, in one run, all counted."""
    path = Path(tempfile.mkdtemp(prefix="drop-gaps-"))
    buffer = Buffer(path, CAPACITY)
    model: list[bytes] = []
    leased = 0
    # Where the FIFO's one gap lies, as a position in `model` (None: no gap).
    gap: int | None = None
    clock = 0

    def fresh() -> bytes:
        nonlocal clock
        clock += 1
        return reading("d", clock, sizes[clock % len(sizes)])

    try:
        fill = [fresh() for _ in range(120)]
        buffer.append([("d", v) for v in fill])
        model.extend(fill)
        for kind, n in plan:
            if kind == "lease":
                # A failed write releases its batch; the next read may be shorter.
                buffer.release(["d"])
                spans = buffer.read([("d", n)])
                got = [v for s in spans for v in s.values]
                assert got == model[: len(got)]
                leased = len(got)
            elif kind == "deliver" and leased:
                head = buffer.devices()["d"].head
                assert buffer.delete([("d", head, leased)]) == leased
                del model[:leased]
                gap = gap - leased if gap is not None and gap > leased else None
                leased = 0
            elif kind == "drop" and model:
                value = fresh()
                try:
                    dropped = drop_behind(buffer, "d", value)
                except CapacityError:
                    continue  # nothing droppable: all of it in flight
                assert dropped <= len(model) - leased
                gap = model_drop(model, gap, leased, dropped)
                model.append(value)
            elif kind == "append":
                more = [fresh() for _ in range(n)]
                buffer.append([("d", v) for v in more])
                model.extend(more)
            elif kind == "reopen":
                buffer.close()
                buffer = Buffer(path, CAPACITY)
                leased = 0
            assert buffer.readings_of("d") == model
            assert buffer.totals().readings == len(model)
        assert buffer.verify().is_consistent
    finally:
        buffer.close()
        shutil.rmtree(path)
