"""The flusher accounts summaries apart from raw readings, and learns of those compaction adds.

Summaries live in level FIFOs beside their device's raw one (gateway/buffer/core/ledger.py);
to the buffer they are ordinary records, so here they are appended as such.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import anyio
import pytest

from gateway.buffer.core.admission import Lane, Policy, Rules
from gateway.buffer.core.ledger import level_fifo
from gateway.buffer.store import Buffer
from gateway.errors import SinkRejected
from gateway.flush.flusher import Flusher
from gateway.observe.accounting import Accounting
from gateway.observe.metrics import Metrics
from tests.unit.flush.test_flusher_wakes import SETTINGS, Database, drain, rec

if TYPE_CHECKING:
    from pathlib import Path

A1 = level_fifo("a", 1)
A2 = level_fifo("a", 2)


class Refusing(Database):
    """Refuses every write holding a line of one timestamp, as a database refuses a bad point."""

    def __init__(self, bad_ts: int) -> None:
        super().__init__()
        self._bad = b" %d" % bad_ts

    async def write(self, body: bytes, *, encoding: str | None = None) -> None:
        if any(line.endswith(self._bad) for line in body.split(b"\n")):
            raise SinkRejected("field type conflict")
        await super().write(body, encoding=encoding)


def _flusher(buffer: Buffer, database: Database, raw: int, summaries: dict[int, int]) -> Flusher:
    metrics = Metrics()
    metrics.accounting = Accounting(recovered=raw, summaries_recovered=summaries)
    return Flusher(buffer, database, SETTINGS, metrics)


@pytest.mark.anyio
async def test_delivered_summaries_are_counted_by_level(tmp_path: Path) -> None:
    """Raw readings and summaries of each level leave the buffer under their own counts."""
    with Buffer(tmp_path, 16 << 20) as buffer:
        buffer.append([("a", rec("a", 8)), ("a", rec("a", 16)), (A1, rec("a", 9))])
        buffer.append([(A2, rec("a", 2)), (A2, rec("a", 10))])
        flusher = _flusher(buffer, Database(), 2, {1: 1, 2: 2})
        await drain(flusher, buffer)
        s = flusher._metrics.accounting.snapshot()
    assert s.outcomes["delivered"] == 2
    assert s.summaries["delivered"] == {1: 1, 2: 2}
    assert s.buffered == 0
    assert s.summaries_buffered == {}


@pytest.mark.anyio
async def test_dead_lettered_summaries_are_counted_by_level(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A refused summary is a dead-lettered summary of its level, not a dead-lettered reading."""
    caplog.errors_expected = True  # type: ignore[attr-defined]
    with Buffer(tmp_path, 16 << 20) as buffer:
        buffer.append([("a", rec("a", 8)), (A1, rec("a", 9)), (A1, rec("a", 17))])
        flusher = _flusher(buffer, Refusing(bad_ts=17), 1, {1: 2})
        await drain(flusher, buffer)
        s = flusher._metrics.accounting.snapshot()
        assert buffer.dead_letter_count() == 1
    assert (s.outcomes["delivered"], s.outcomes["dead_lettered"]) == (1, 0)
    assert s.summaries["delivered"] == {1: 1}
    assert s.summaries["dead_lettered"] == {1: 1}
    assert s.summaries_buffered == {}


@pytest.mark.anyio
async def test_summaries_keep_the_age_of_the_readings_they_replace(tmp_path: Path) -> None:
    """After a step that took 3 readings for 1 summary, 2 records wait, still as old."""
    with Buffer(tmp_path, 16 << 20) as buffer:
        buffer.append([("a", rec("a", ts)) for ts in (8, 16, 24, 32)])
        flusher = _flusher(buffer, Database(), 4, {})
        buffer.append([("b", rec("b", 8))])
        flusher.notify(1)
        lag_before = flusher.lag_s(time.monotonic())
        # What a compaction does to the buffer: the oldest readings out, a summary in.
        [span] = buffer.read([("a", 3)])
        buffer.delete([("a", span.first_seq, 3)])
        buffer.append([(A1, rec("a", 9))])
        flusher.note_appended(1)
        assert len(flusher._streams) == buffer.totals().readings == 3
        assert flusher.lag_s(time.monotonic()) >= lag_before


@pytest.mark.anyio
async def test_summaries_the_flusher_did_not_know_of_wake_it(tmp_path: Path) -> None:
    """Summaries beyond the records known to wait are counted and wake a sleeping worker."""
    with Buffer(tmp_path, 16 << 20) as buffer:
        database = Database()
        flusher = _flusher(buffer, database, 0, {})
        async with anyio.create_task_group() as tg:
            tg.start_soon(flusher.run)
            await anyio.wait_all_tasks_blocked()
            buffer.append([(A1, rec("a", 9)), (A1, rec("a", 17))])
            flusher.note_appended(2)
            assert len(flusher._streams) == 2
            with anyio.fail_after(2):
                while buffer.totals().readings:
                    await database.wrote.wait()
                    database.wrote = anyio.Event()
            tg.cancel_scope.cancel()
    assert len(database.lines) == 2


COMPACTING = Lane(policy=Policy.COMPACT, steps_ns=(10**9, 4 * 10**9), level_share=0.25)


@pytest.mark.anyio
async def test_compaction_then_delivery_keeps_the_counts_equal_to_the_buffer(
    tmp_path: Path,
) -> None:
    """After real compaction steps and a drain, every count agrees with the buffer's levels.

    It needs the buffer's compaction (gateway/buffer/compaction.py).
    """
    with Buffer(tmp_path, 16 << 20) as buffer:
        rules = Rules(buffer.budget_bytes, high=0.9, low=0.8, default_lane=COMPACTING)
        values = [
            (device, rec(device, 10**18 + 125_000_000 * i))
            for i in range(2_000)
            for device in ("a", "b")
        ]
        admitted = buffer.admit([(fifo, value, COMPACTING) for fifo, value in values], rules)
        flusher = _flusher(buffer, Database(), 0, {})
        accounting = flusher._metrics.accounting
        accounting.committed(accepted=admitted.stored, invalid=0)
        flusher.notify(admitted.stored)
        steps = 0
        while steps < 5 and (step := buffer.compact(rules, force=True)) is not None:
            accounting.compacted(step)
            flusher.note_appended(step.appended)
            steps += 1
            s = accounting.snapshot()
            levels = buffer.level_counts()
            assert s.buffered == levels[0][0]
            assert s.summaries_buffered == {n: c for n, (c, _) in levels.items() if n}
            assert len(flusher._streams) == buffer.totals().readings
        # Raw readings, summaries and summaries of summaries wait together.
        assert steps == 5
        assert sorted(buffer.level_counts()) == [0, 1, 2]
        await drain(flusher, buffer)
        s = accounting.snapshot()
    assert s.buffered == 0
    assert s.summaries_buffered == {}
    assert s.outcomes["delivered"] + s.outcomes["summarised"] == admitted.stored
    assert sum(s.summaries["delivered"].values()) + sum(s.summaries["resummarised"].values()) + sum(
        s.summaries["dropped"].values()
    ) == sum(s.summaries["made"].values())
