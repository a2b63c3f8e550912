"""The standby's follower driven without a broker: what it does with what comes on the log."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import pytest

from gateway.config import loader as config
from gateway.observe.metrics import Metrics
from gateway.replication.protocol import NO_TERM, Message, decode
from gateway.replication.standby import Follower
from tests.unit.config.test_config import MINIMAL

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


class Paho:
    def __init__(self) -> None:
        self.sent: list[Message] = []

    def publish(self, _topic: str, payload: bytes, **_: Any) -> None:
        self.sent.append(decode(payload))


class FakeClient:
    def __init__(self) -> None:
        self._client = Paho()


@pytest.fixture
def follower(tmp_path: Path) -> Iterator[tuple[Follower, Paho]]:
    path = tmp_path / "gateway.toml"
    path.write_text(
        MINIMAL.replace("/var/lib/gateway", str(tmp_path / "buffer"))
        + '\n[replication]\nrole = "standby"\nnode = "b"\n'
    )
    made = Follower(config.load(path, {}), Metrics())
    made.buffer = made._open()
    client = FakeClient()
    made._client = client  # type: ignore[assignment]
    yield made, client._client
    if made.buffer is not None:
        made.buffer.close()


@pytest.mark.parametrize("payload", [b"", b"X" * 40, Message("record", NO_TERM, 0, b"\0").encode()])
def test_what_is_no_record_is_dropped_and_following_goes_on(
    follower: tuple[Follower, Paho], payload: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.errors_expected = True  # type: ignore[attr-defined]
    made, _ = follower
    anyio.run(made._log, payload)
    assert made.buffer is not None
    assert made.buffer.last_record() == -1


def test_a_snapshot_that_is_no_buffer_leaves_an_empty_replica_that_asks_again(
    follower: tuple[Follower, Paho], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.errors_expected = True  # type: ignore[attr-defined]
    made, sent = follower
    garbage = b"not an LMDB file" * 512

    async def receive() -> None:
        begin = Message("begin", bytes(range(16)), 7, sizes=(len(garbage), len(garbage)))
        await made._log(begin.encode())
        for file in (0, 1):
            await made._log(Message("part", begin.term, 7, garbage, file, 0).encode())
        await made._log(Message("end", begin.term, 7).encode())

    anyio.run(receive)
    assert made.buffer is not None  # open, not crashed
    assert made.buffer.totals().readings == 0
    assert sent.sent[-1].kind == "hello"
    assert sent.sent[-1].term == NO_TERM  # asks for a snapshot again
