"""Intake refused by the buffer's page guard stays paused until a delivery frees room.

Readings that compress poorly meet the page guard while the readings budget is far below its
watermarks. Runs `Ingest` on a real 1 MiB buffer; the MQTT connection is replaced by a recorder
of the acknowledgements the committer sends, and the flusher by a test that delivers.
"""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING

import anyio
import pytest

from gateway.buffer.core.admission import Lane, Rules
from gateway.buffer.rejects import RejectLog
from gateway.buffer.store import Buffer
from gateway.config.mqtt import MqttSettings, Subscription
from gateway.config.sections import LimitSettings
from gateway.errors import CapacityError
from gateway.ingest.commit import IntakePaused
from gateway.ingest.core.decode import Decoder
from gateway.ingest.core.packets import Incoming
from gateway.ingest.intake import Ingest
from gateway.observe.health import Health
from gateway.observe.metrics import Metrics
from gateway.points.model import Reading
from gateway.points.record import pack
from tests.unit.ingest.recorders import AckRecorder

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

SUBSCRIPTION = Subscription(topic="s/{device}/{measurement}", format="json")
# Still paused this long after the refusal, with nothing delivered: not a 0 s pause.
STILL_PAUSED_S = 0.5


def incompressible(device: str, ts: int) -> Reading:
    return Reading(device, "m", (("device", device),), (("s", os.urandom(60).hex()),), ts)


@pytest.fixture
def full(tmp_path: Path) -> Iterator[tuple[Ingest, Buffer, Metrics, list[anyio.Event]]]:
    """Ingest on a 1 MiB buffer filled with incompressible readings up to its page guard."""
    buffer = Buffer(tmp_path / "buffer", 1 << 20, sync="none")
    with buffer, RejectLog(tmp_path / "buffer") as rejects:
        rules = Rules(budget_bytes=buffer.budget_bytes, high=0.9, low=0.8)
        freed = [anyio.Event()]
        metrics = Metrics()
        ingest = Ingest(
            settings=MqttSettings(subscriptions=[SUBSCRIPTION]),
            commit_max_readings=100,
            commit_window_s=0.005,
            buffer=buffer,
            decoder=Decoder([SUBSCRIPTION], LimitSettings()),
            metrics=metrics,
            on_commit=lambda _n: None,
            on_drop=lambda _n: None,
            space_freed=lambda: freed[0],
            rules=rules,
            health=Health(started=0.0),
            on_ready=lambda: None,
            broker_stats=metrics.broker,
            rejects=rejects,
        )
        fill_to_the_guard(buffer, rules)
        # Far below the watermarks: the fill says nothing of the pages.
        assert buffer.totals().nbytes < rules.low_bytes
        yield ingest, buffer, metrics, freed


def fill_to_the_guard(buffer: Buffer, rules: Rules) -> None:
    """Admit incompressible readings until the page guard refuses (not the watermark)."""
    refused = None
    for first in range(0, 1_000_000, 100):
        batch = [("old", pack(incompressible("old", first + k)), Lane()) for k in range(100)]
        try:
            buffer.admit(batch, rules)
        except CapacityError as exc:
            refused = exc
            break
    assert refused is not None
    assert refused.at_item is None


def message(mid: int) -> Incoming:
    payload = json.dumps({"s": os.urandom(400).hex()}).encode()
    return Incoming(b"s/new/m", payload, mid, 1, False, 0.0)


@pytest.mark.anyio
async def test_a_page_guard_refusal_pauses_intake_until_a_delivery_frees_room(
    full: tuple[Ingest, Buffer, Metrics, list[anyio.Event]],
) -> None:
    """Not resumed at once (the reconnect loop), resumed after a delivery, then admitted."""
    ingest, buffer, metrics, freed = full
    connection = AckRecorder()
    batch = [ingest.taker.take(message(mid)) for mid in range(1, 41)]
    with pytest.raises(IntakePaused) as raised:
        await ingest.committer.commit_and_ack(connection, batch)  # type: ignore[arg-type]
    # What fits in parts is committed and acknowledged; intake pauses at the rest.
    committed = len(connection.acked)
    assert connection.acked == [(mid, 1) for mid in range(1, committed + 1)]
    assert committed < len(batch)
    paused_at = time.monotonic()
    resumed: list[float] = []
    resuming = anyio.Event()

    async def pause() -> None:
        await ingest._pause(raised.value)
        resumed.append(time.monotonic())
        resuming.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(pause)
        # A negative, so waited for: intake must still be away after this long.
        await anyio.sleep(STILL_PAUSED_S)
        assert not resumed
        assert metrics.registry.get_sample_value("gateway_intake_paused") == 1
        assert (
            metrics.registry.get_sample_value(
                "gateway_intake_pauses_total", {"cause": "disk_budget"}
            )
            == 1
        )

        (span,) = buffer.read([("old", 10_000)])
        buffer.delete([(span.device, span.first_seq, len(span.values))])
        left = buffer.totals().readings
        freed[0].set()
        freed[0] = anyio.Event()
        with anyio.fail_after(10):
            await resuming.wait()
    assert resumed[0] - paused_at >= 1.0  # the shortest pause
    assert metrics.registry.get_sample_value("gateway_intake_paused") == 0

    # The broker delivers the rest again.
    batch = [ingest.taker.take(message(mid)) for mid in range(committed + 1, 41)]
    await ingest.committer.commit_and_ack(connection, batch)  # type: ignore[arg-type]
    assert connection.acked == [(mid, 1) for mid in range(1, 41)]
    assert buffer.totals().readings == left + 40 - committed


@pytest.mark.anyio
async def test_a_batch_too_large_for_an_empty_buffer_is_committed_in_parts(
    tmp_path: Path,
) -> None:
    """A flood of redelivered messages the page guard refuses whole, into an empty buffer:
    committed and acknowledged in parts instead of refused forever."""
    with (
        Buffer(tmp_path / "buffer", 1 << 20, sync="none") as buffer,
        RejectLog(tmp_path / "buffer") as rejects,
    ):
        metrics = Metrics()
        ingest = Ingest(
            settings=MqttSettings(subscriptions=[SUBSCRIPTION]),
            commit_max_readings=2000,
            commit_window_s=0.005,
            buffer=buffer,
            decoder=Decoder([SUBSCRIPTION], LimitSettings()),
            metrics=metrics,
            on_commit=lambda _n: None,
            on_drop=lambda _n: None,
            space_freed=anyio.Event,
            rules=Rules(budget_bytes=buffer.budget_bytes, high=0.9, low=0.8),
            health=Health(started=0.0),
            on_ready=lambda: None,
            broker_stats=metrics.broker,
            rejects=rejects,
        )
        count = 1200
        batch = [ingest.taker.take(message(mid)) for mid in range(1, count + 1)]
        items = [item for pending in batch for item in pending.items or ()]
        with pytest.raises(CapacityError):  # whole, it does not fit
            buffer.admit(items, ingest.committer.rules)
        assert buffer.totals().readings == 0
        connection = AckRecorder()
        await ingest.committer.commit_and_ack(connection, batch)  # type: ignore[arg-type]
        assert connection.acked == [(mid, 1) for mid in range(1, count + 1)]
        assert buffer.totals().readings == count
        outcomes = metrics.accounting.snapshot().outcomes
        assert outcomes["accepted"] == outcomes["received"] == count
