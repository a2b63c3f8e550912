"""The broker connection against real Mosquitto: what the socket reader takes, and a clean leave.

Messages are published by paho-mqtt's own client; the gateway's `Connection` reads them with its
socket reader and acknowledges them in one write per batch.
"""

from __future__ import annotations

import gc
import time
import weakref
from typing import TYPE_CHECKING

import anyio
import paho.mqtt.client as paho
import pytest

from gateway.config.mqtt import MqttSettings, Subscription
from gateway.ingest.mqtt import Connection

if TYPE_CHECKING:
    from collections.abc import Iterator

    from gateway.ingest.core.packets import Incoming
    from tests.conftest import Endpoint

pytestmark = pytest.mark.anyio


def settings(port: int, client_id: str, protocol: str) -> MqttSettings:
    return MqttSettings(
        host="127.0.0.1",
        port=port,
        client_id=client_id,
        persistent_session=True,
        protocol=protocol,  # type: ignore[arg-type]
        subscriptions=[Subscription(topic="conn/{device}/{measurement}")],
    )


def publish(port: int, payloads: list[bytes]) -> None:
    client = paho.Client(paho.CallbackAPIVersion.VERSION2)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        infos = [client.publish(f"conn/d{i % 7}/m", p, qos=1) for i, p in enumerate(payloads)]
        for info in infos:
            info.wait_for_publish(30)
    finally:
        client.loop_stop()
        client.disconnect()


async def take(s: MqttSettings, count: int, deadline_s: float = 20) -> list[Incoming]:
    """Take up to `count` messages, acknowledge them in one batch and leave."""
    taken: list[Incoming] = []
    async with Connection(s) as connection:
        await connection.client.subscribe("conn/#", qos=1)
        deadline = time.monotonic() + deadline_s
        while len(taken) < count and time.monotonic() < deadline:
            message = connection.take_queued()
            if message is None:
                await anyio.sleep(0.01)
                continue
            taken.append(message)
        connection.ack([(m.mid, m.qos) for m in taken])
        await connection.leave()
    return taken


@pytest.fixture
def no_cycle_collector() -> Iterator[None]:
    """The cycle collector off, as good as the service's rare full passes of it."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.mark.usefixtures("no_cycle_collector")
async def test_a_closed_connection_frees_what_it_read_at_once(
    mosquitto: Endpoint, run_id: str
) -> None:
    """Messages read and not taken are freed when the connection closes, not by the collector.

    Intake leaves the broker at each pause with the burst of messages the broker sent at the
    resume still read and unacknowledged; each pause left one such inbox to the collector.
    """
    s = settings(mosquitto.port, f"conn-{run_id}-free", "3.1.1")
    await take(s, 0)
    publish(mosquitto.port, [b"%d" % i for i in range(500)])
    async with Connection(s) as connection:
        await connection.client.subscribe("conn/#", qos=1)
        for _ in range(2000):  # 20 s at most
            if len(connection.inbox) == 500:
                break
            await anyio.sleep(0.01)
        assert len(connection.inbox) == 500
        inbox = weakref.ref(connection.inbox)
        await connection.leave()
    del connection
    assert inbox() is None
    assert len(await take(s, 500)) == 500, "the broker delivers them again"


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_committed_messages_never_come_again_and_the_rest_all_do(
    mosquitto: Endpoint, protocol: str, run_id: str
) -> None:
    """Leave while the broker is still sending: every PUBACK is read before the socket closes.

    Before the clean leave, the acknowledgements written just before a disconnect could be
    lost to the connection's reset, and their messages were delivered a second time.
    """
    s = settings(mosquitto.port, f"conn-{run_id}-{protocol}", protocol)
    await take(s, 0)  # the session exists while the messages are published
    sizes = [20, 200, 5]
    payloads = [b"%d:" % i + b"x" * sizes[i % len(sizes)] for i in range(5000)]
    payloads[10] += b"y" * 70_000  # spans two reads of the socket
    publish(mosquitto.port, payloads)
    first = await take(s, 3000)
    assert [m.payload for m in first] == payloads[:3000], "in order, whole, none twice"
    rest = await take(s, 10_000, deadline_s=5)
    assert sorted(m.payload for m in rest) == sorted(payloads[3000:])
    assert await take(s, 1, deadline_s=1) == []
