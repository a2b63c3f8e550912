"""The group commit when the buffer fails after its journal commit: stored once, counted stored.

The committer admits message by message only what was not stored: a failure after the journal
commit (a checkpoint meeting a damaged chunk, the latest values) must neither store the batch a
second time nor count its readings as invalid. Runs on a real buffer and reject log; the MQTT
connection is replaced by a recorder of the acknowledgements the committer sends.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from gateway.buffer import checkpoint
from gateway.buffer.core.admission import Rules
from gateway.buffer.rejects import RejectLog
from gateway.buffer.store import Buffer
from gateway.config.mqtt import Subscription
from gateway.config.sections import LimitSettings
from gateway.ingest.commit import Committer
from gateway.ingest.core.decode import Decoder
from gateway.ingest.core.packets import Incoming
from gateway.ingest.taking import Taker
from gateway.observe.metrics import Metrics
from tests.unit.ingest.recorders import AckRecorder

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

SUBSCRIPTION = Subscription(topic="s/{device}/{measurement}", format="json")
MESSAGES = 5


def damaged(*_args: object, **_kwargs: object) -> None:
    """Stands for a seal meeting a damaged chunk."""
    raise ValueError("damaged chunk")


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[tuple[Buffer, Metrics, Committer, Taker, list[int]]]:
    """A committer and a taker on a real buffer and reject log."""
    buffer = Buffer(tmp_path / "buffer", 16 << 20, sync="none")
    with buffer, RejectLog(tmp_path / "buffer") as rejects:
        metrics = Metrics()
        rules = Rules(budget_bytes=buffer.budget_bytes)
        committed: list[int] = []
        committer = Committer(
            buffer=buffer,
            rules=rules,
            metrics=metrics,
            rejects=rejects,
            on_commit=committed.append,
            on_drop=lambda _n: None,
        )
        taker = Taker(
            decoder=Decoder([SUBSCRIPTION], LimitSettings()),
            rules=rules,
            metrics=metrics,
            broker_stats=metrics.broker,
            rejects=rejects,
            fault=None,
        )
        yield buffer, metrics, committer, taker, committed


@pytest.mark.anyio
@pytest.mark.parametrize("where", ["checkpoint", "latest values"])
async def test_a_failure_after_the_journal_commit_stores_each_message_once(
    parts: tuple[Buffer, Metrics, Committer, Taker, list[int]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    where: str,
) -> None:
    """Every message acknowledged once, each reading buffered once and counted accepted."""
    caplog.errors_expected = True  # type: ignore[attr-defined]
    buffer, metrics, committer, taker, committed = parts
    if where == "checkpoint":
        monkeypatch.setattr(checkpoint, "CHECKPOINT_INTERVAL_S", 0.0)
        monkeypatch.setattr(buffer._checkpointer, "write", damaged)
    else:
        assert buffer.latest is not None
        monkeypatch.setattr(buffer.latest, "note", damaged)
    batch = [
        taker.take(
            Incoming(f"s/dev-{mid}/m".encode(), json.dumps({"v": mid}).encode(), mid, 1, False, 0.0)
        )
        for mid in range(1, MESSAGES + 1)
    ]
    connection = AckRecorder()
    await committer.commit_and_ack(connection, batch)  # type: ignore[arg-type]

    assert connection.acked == [(mid, 1) for mid in range(1, MESSAGES + 1)]
    assert buffer.totals().readings == MESSAGES
    assert committed == [MESSAGES]
    outcomes = metrics.accounting.snapshot().outcomes
    assert outcomes["accepted"] == outcomes["received"] == MESSAGES
    assert outcomes["invalid"] == 0
    invalid = metrics.registry.get_sample_value(
        "gateway_readings_invalid_total", {"reason": "internal_error"}
    )
    assert not invalid
    assert buffer.after_commit_failures == 1
