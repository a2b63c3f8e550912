"""A redelivered reading the buffer already holds is acknowledged and counted, not stored again.

The taker and the committer on a real buffer with its redelivery fence, as the service opens
it; the kill -9 fault test of the compact policy (tests/fault/test_compact.py) shows the same
with the broker redelivering for real.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from gateway.buffer.core.admission import Rules
from gateway.buffer.core.fence import RECENT_RECORDS
from gateway.buffer.rejects import RejectLog
from gateway.buffer.store import Buffer
from gateway.ingest.core.packets import Incoming
from gateway.ingest.redelivery import Redelivery
from tests.unit.ingest.test_commit_deadband import Line

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture
def line(tmp_path: Path) -> Iterator[Line]:
    """A taker and committer on a buffer with the fence, on a connection that just began."""
    with (
        Buffer(tmp_path / "b", 16 << 20, sync="none", redelivery_fence=True) as buffer,
        RejectLog(tmp_path / "b") as rejects,
    ):
        redelivery = Redelivery(buffer)
        redelivery.connection_changed()
        yield Line(buffer, rejects, Rules(budget_bytes=buffer.budget_bytes), redelivery)


def _redelivery(line: Line) -> Redelivery:
    assert line.taker.redelivery is not None
    return line.taker.redelivery


@pytest.mark.anyio
async def test_a_redelivered_copy_of_a_committed_message_is_not_stored_again(line: Line) -> None:
    """The connection breaks; the broker's DUP copy is acknowledged, counted
    suppressed, and the buffer holds each reading once."""
    assert await line.commit(line.take("fast/d/m", (0, 1.0), (1, 2.0))) == [1]
    _redelivery(line).connection_changed()  # broken, and the next one begins
    again = line.take("fast/d/m", (0, 1.0), (1, 2.0), dup=True)
    assert (again.suppressed, again.items) == (2, [])
    assert await line.commit(again) == [2]
    assert line.buffer.totals().readings == 2
    snapshot = line.metrics.accounting.snapshot()
    assert (snapshot.outcomes["received"], snapshot.outcomes["suppressed"]) == (4, 2)
    assert snapshot.outcomes["accepted"] == 2


@pytest.mark.anyio
async def test_a_redelivered_message_never_committed_is_stored(line: Line) -> None:
    """DUP says only that the broker sent it before: what the buffer lacks is stored."""
    await line.commit(line.take("fast/d/m", (0, 1.0)))
    again = line.take("fast/d/m", (0, 1.0), (1, 2.0), dup=True)
    assert again.suppressed == 1
    assert [item[0] for item in again.items or []] == ["d"]
    await line.commit(again)
    assert line.buffer.totals().readings == 2


@pytest.mark.anyio
async def test_a_fresh_message_lifts_the_hold_and_a_reading_with_new_values_is_kept(
    line: Line,
) -> None:
    """A reading of the same series and time with other values is not a copy: it is stored."""
    await line.commit(line.take("fast/d/m", (0, 1.0)))
    changed = line.take("fast/d/m", (0, 1.5), dup=True)
    assert changed.suppressed == 0
    await line.commit(changed)
    line.take("fast/d/m", (5, 1.0))  # sent for the first time: the broker is done redelivering
    assert not line.buffer.lift_fence(_redelivery(line))
    assert line.buffer.totals().readings == 2


@pytest.mark.anyio
async def test_a_qos0_message_lifts_the_hold_too(line: Line) -> None:
    """Anything sent for the first time comes after the redeliveries: a QoS 0 message lifts."""
    await line.commit(line.take("fast/d/m", (0, 1.0)))
    line.taker.take(Incoming(b"fast/d/m", b'{"v": 1}', 0, 0, False, 0.0))
    assert not line.buffer.lift_fence(_redelivery(line))


@pytest.mark.anyio
@pytest.mark.parametrize("then_new", [False, True])
async def test_the_first_redelivered_message_not_stored_before_lifts_the_hold(
    line: Line, *, then_new: bool
) -> None:
    """Copies come first, in commit order: a DUP message the buffer lacks ends the hold (a
    redelivered burst bigger than the buffer's room must not keep it held); a copy does not."""
    await line.commit(line.take("fast/d/m", (0, 1.0)))
    _redelivery(line).connection_changed()
    assert line.take("fast/d/m", (0, 1.0), dup=True).suppressed == 1
    if then_new:
        assert line.take("fast/d/m", (1, 2.0), dup=True).suppressed == 0
    assert line.buffer.lift_fence(_redelivery(line)) is not then_new


@pytest.mark.anyio
async def test_a_copy_after_a_message_not_held_is_still_recognised(line: Line) -> None:
    """A message not held releases the limits but not the recognition: a copy that follows it
    (behind a reading stamped at receipt, say) is not stored twice, even once the commits since
    have pushed its record out of the newest."""
    await line.commit(line.take("fast/d/m", (1, 2.0)))
    for i in range(RECENT_RECORDS - 1):
        await line.commit(line.take("fast/d/m", (100 + i, 3.0)))
    _redelivery(line).connection_changed()
    not_held = line.take("fast/d/m", (9, 3.0), dup=True)
    assert not_held.suppressed == 0
    await line.commit(not_held)  # the newest record now: the first one left the newest
    assert line.take("fast/d/m", (1, 2.0), dup=True).suppressed == 1
