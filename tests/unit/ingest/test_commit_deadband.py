"""The deadband in the group commit: kept readings stored, suppressed ones acknowledged and counted.

Runs the taker and the committer on a real buffer; the MQTT connection is a recorder of the
acknowledgements sent.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from gateway.buffer.core.admission import Rules
from gateway.buffer.rejects import RejectLog
from gateway.buffer.store import Buffer
from gateway.config.mqtt import Deadband, Subscription
from gateway.config.sections import LimitSettings
from gateway.errors import CapacityError
from gateway.ingest.commit import Committer, IntakePaused
from gateway.ingest.core.deadband import Deadbands
from gateway.ingest.core.decode import Decoder
from gateway.ingest.core.packets import Incoming
from gateway.ingest.taking import Pending, Taker
from gateway.observe.metrics import Metrics
from tests.unit.ingest.recorders import AckRecorder

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from gateway.ingest.redelivery import Redelivery

SLOW = Subscription(
    topic="slow/{device}/{measurement}",
    device_class="slow",
    deadband=Deadband(absolute=0.5, heartbeat_s=60),
)
FAST = Subscription(topic="fast/{device}/{measurement}", device_class="fast")
T0_MS = 1_700_000_000_000


class Line:
    """A taker and a committer sharing one deadband state, on a real buffer."""

    def __init__(
        self, buffer: Buffer, rejects: RejectLog, rules: Rules, redelivery: Redelivery | None = None
    ) -> None:
        subs = [SLOW, FAST]
        self.buffer, self.metrics = buffer, Metrics()
        self.deadbands = Deadbands.of(subs)
        self.taker = Taker(
            decoder=Decoder(subs, LimitSettings(max_age_s=1e10)),
            rules=rules,
            metrics=self.metrics,
            broker_stats=self.metrics.broker,
            rejects=rejects,
            fault=None,
            deadbands=self.deadbands,
            redelivery=redelivery,
        )
        self.committer = Committer(
            buffer=buffer,
            rules=rules,
            metrics=self.metrics,
            rejects=rejects,
            on_commit=lambda _n: None,
            on_drop=lambda _n: None,
            deadbands=self.deadbands,
        )
        self.mid = 0

    def take(self, topic: str, *values: tuple[int, float], dup: bool = False) -> Pending:
        """One message of (seconds after T0, v) readings; `dup`: the broker sends it again."""
        self.mid += 1
        payload = json.dumps([{"ts": T0_MS + 1000 * s, "v": v} for s, v in values]).encode()
        return self.taker.take(Incoming(topic.encode(), payload, self.mid, 1, dup, 0.0))

    async def commit(self, *batch: Pending) -> list[int]:
        """Commit a batch; the message ids acknowledged."""
        connection = AckRecorder()
        await self.committer.commit_and_ack(connection, list(batch))  # type: ignore[arg-type]
        return [mid for mid, _ in connection.acked]


@pytest.fixture
def line(tmp_path: Path) -> Iterator[Line]:
    """A line whose admission refuses readings of a second device (max_devices 1)."""
    with (
        Buffer(tmp_path / "b", 16 << 20, sync="none") as buffer,
        RejectLog(tmp_path / "b") as rejects,
    ):
        yield Line(buffer, rejects, Rules(budget_bytes=buffer.budget_bytes, max_devices=1))


@pytest.mark.anyio
async def test_suppressed_readings_are_acknowledged_counted_and_not_stored(line: Line) -> None:
    """A message all within band is acknowledged; received == suppressed + accepted, by class."""
    batch = [
        line.take("slow/d/m", (0, 20.0), (1, 20.2)),  # kept, suppressed
        line.take("slow/d/m", (2, 20.4)),  # suppressed: every reading of the message
        line.take("slow/d/m", (3, 20.6)),  # kept: 0.6 from 20.0
    ]
    assert [p.suppressed for p in batch] == [1, 1, 0]
    assert await line.commit(*batch) == [1, 2, 3]
    assert await line.commit(line.take("slow/d/m", (4, 20.9))) == [4]  # 0.3 from 20.6
    assert line.buffer.totals().readings == 2
    snapshot = line.metrics.accounting.snapshot()
    assert snapshot.outcomes["received"] == 5
    assert snapshot.outcomes["suppressed"] == 3
    assert snapshot.outcomes["accepted"] == 2
    assert snapshot.suppressed == {"slow": 3}


@pytest.mark.anyio
async def test_a_class_without_a_deadband_stores_every_reading(line: Line) -> None:
    """Repeats of a class without a deadband are all stored."""
    await line.commit(line.take("fast/d/m", (0, 1.0), (1, 1.0), (2, 1.0)))
    assert line.buffer.totals().readings == 3
    assert line.metrics.accounting.snapshot().outcomes["suppressed"] == 0


@pytest.mark.anyio
async def test_a_batch_with_refused_readings_promotes_no_reference(line: Line) -> None:
    """A kept reading admission refused never stands for a later one: the next is kept."""
    await line.commit(line.take("fast/first/m", (0, 1.0)))  # the one device allowed
    batch = [line.take("slow/d/m", (0, 20.0))]  # kept, then refused: a second device
    assert await line.commit(*batch) == [2]
    assert line.metrics.accounting.snapshot().outcomes["refused"] == 1
    again = line.take("slow/d/m", (1, 20.1))
    assert again.suppressed == 0, "judged against a reading that was never stored"


@pytest.mark.anyio
async def test_a_batch_not_committed_forgets_what_it_staged(line: Line) -> None:
    """Nothing acknowledged, nothing promoted: the redelivered readings are judged afresh."""
    batch = [line.take("slow/d/m", (0, 20.0)), line.take("slow/d/m", (1, 20.1))]
    assert batch[1].suppressed == 1

    def full(*_args: object, **_kwargs: object) -> None:
        raise CapacityError("budget reached")

    line.buffer.admit = full  # type: ignore[method-assign]
    with pytest.raises(IntakePaused):
        await line.commit(*batch)
    assert line.take("slow/d/m", (1, 20.1)).suppressed == 0
