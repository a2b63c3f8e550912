"""The primary's shipper driven without a broker: catch-up, following, confirmations.

A fake client records what the shipper publishes; a real buffer is shipped; confirmations are
fed to it as the standby would send them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import pytest

from gateway.buffer.core.admission import Rules
from gateway.buffer.store import DEFAULT_LANE, Buffer
from gateway.config import loader as config
from gateway.observe.metrics import Metrics
from gateway.replication import roles
from gateway.replication.gate import AckGate
from gateway.replication.primary import Shipper
from gateway.replication.protocol import Message, decode
from tests.unit.buffer.checks import reading
from tests.unit.config.test_config import MINIMAL

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Published:
    rc = 0

    def is_published(self) -> bool:
        return True


class Paho:
    """paho's client as the shipper uses it: `publish` queues and returns."""

    def __init__(self, sent: list[Message]) -> None:
        self.sent = sent

    def publish(self, _topic: str, payload: bytes, qos: int = 0, **_: Any) -> Published:
        assert qos == 1
        self.sent.append(decode(payload))
        return Published()


class FakeClient:
    """aiomqtt's client as the shipper uses it: paho's publish and the awaited one."""

    def __init__(self) -> None:
        self.sent: list[Message] = []
        self._client = Paho(self.sent)

    async def publish(self, topic: str, payload: bytes, qos: int = 0, **kw: Any) -> None:
        self._client.publish(topic, payload, qos, **kw)

    def take(self) -> list[Message]:
        sent = list(self.sent)
        self.sent.clear()
        return sent


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Shipper, Buffer, FakeClient, Clock]]:
    path = tmp_path / "gateway.toml"
    path.write_text(
        MINIMAL.replace("/var/lib/gateway", str(tmp_path / "buffer"))
        + '\n[replication]\nrole = "primary"\nnode = "a"\n'
    )
    settings = config.load(path, {})
    buffer = Buffer(settings.buffer.path, int(settings.buffer.capacity))
    clock = Clock()
    gate = AckGate("sync", "local", 2.0, clock)
    shipper = Shipper(
        settings, buffer, gate, Metrics(), roles.primary_term(buffer, took_over=False, node="a")
    )
    client = FakeClient()
    shipper._client = client  # type: ignore[assignment]
    yield shipper, buffer, client, clock
    buffer.close()


def admit(buffer: Buffer, ts: int) -> int:
    buffer.admit([("d", reading("d", ts), DEFAULT_LANE)], Rules(budget_bytes=buffer.budget_bytes))
    return buffer.last_record()


async def follow(shipper: Shipper, buffer: Buffer, client: FakeClient) -> None:
    """A standby at the buffer's newest record says hello and confirms."""
    shipper._heard(Message("hello", shipper.term, buffer.last_record() + 1).encode())
    await shipper._answer_hello()
    assert shipper.following
    shipper._heard(Message("confirm", shipper.term, buffer.last_record()).encode())
    assert shipper.gate.following
    client.take()


def test_a_catch_up_sends_the_journal_then_every_state_then_follows(pair: Any) -> None:
    shipper, buffer, client, _ = pair
    for ts in range(3):
        admit(buffer, ts)
    shipper._heard(Message("hello", shipper.term, 1).encode())
    anyio.run(shipper._answer_hello)
    sent = client.take()
    assert [(m.kind, m.number) for m in sent[:-1]] == [("record", 1), ("record", 2), ("record", 3)]
    assert sent[-1].kind == "every"
    assert shipper.following
    record = admit(buffer, 9)  # shipped as committed now
    assert [(m.kind, m.number) for m in client.take()] == [("record", record)]


def test_a_confirmation_beyond_what_was_sent_is_not_believed(pair: Any) -> None:
    shipper, buffer, client, _ = pair
    anyio.run(follow, shipper, buffer, client)
    shipper._heard(Message("confirm", shipper.term, 10**6).encode())
    acks: list[int] = []
    record = admit(buffer, 1)
    shipper.gate.submit(record, lambda: acks.append(record))
    assert acks == []  # waits for a confirmation of what was really sent
    shipper._heard(Message("confirm", shipper.term, record).encode())
    assert acks == [record]


def test_a_standby_overdue_once_is_caught_up_when_it_confirms_again(pair: Any) -> None:
    shipper, buffer, client, clock = pair
    anyio.run(follow, shipper, buffer, client)
    late = admit(buffer, 1)
    acks: list[int] = []
    shipper.gate.submit(late, lambda: acks.append(late))
    clock.now += 3.0  # past confirm_timeout_s
    assert shipper.gate.overdue()
    shipper._stop_following("no confirmation for 2 s")
    assert acks == [late]  # standby_away = "local": out after the local commit
    missed = admit(buffer, 2)  # not shipped: the standby does not follow
    assert [m.number for m in client.take()] == [late]
    # The late record reaches the standby, which confirms it: that starts the catch-up.
    shipper._heard(Message("confirm", shipper.term, late).encode())
    assert shipper._wake.is_set()
    assert shipper._hello == late + 1
    anyio.run(shipper._answer_hello)
    assert next((m.kind, m.number) for m in client.take()) == ("record", missed)
    assert shipper.following
    shipper._heard(Message("confirm", shipper.term, missed).encode())
    assert shipper.gate.durability == "sync"


def test_confirmations_of_another_term_are_ignored(pair: Any) -> None:
    shipper, buffer, client, _ = pair
    anyio.run(follow, shipper, buffer, client)
    record = admit(buffer, 1)
    acks: list[int] = []
    shipper.gate.submit(record, lambda: acks.append(record))
    shipper._heard(Message("confirm", bytes(16), record).encode())
    assert acks == []
