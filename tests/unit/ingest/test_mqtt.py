"""The adapter around aiomqtt and paho: the internals it relies on, and its speed-ups.

If an upgrade of aiomqtt or paho-mqtt removes or renames what gateway/ingest/mqtt.py reaches
into, these fail here, by name, instead of the gateway failing at run time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from importlib.metadata import version

import aiomqtt
import pytest
from paho.mqtt import _packet
from paho.mqtt import client as paho_client
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.config.mqtt import MqttSettings, Subscription
from gateway.ingest import mqtt


def publish_body(properties: Properties | None) -> bytes:
    topic = b"sensors/dev-1/telemetry"
    props = properties.pack() if properties is not None else b"\x00"
    return len(topic).to_bytes(2, "big") + topic + (7).to_bytes(2, "big") + props + b'{"v": 1}'


def decoded(body: bytes) -> tuple[object, ...]:
    packet = _packet.decode_publish(0x32, body, MQTTProtocolVersion.MQTTv5)
    props = packet.properties
    assert props is not None
    return (packet.topic, packet.mid, packet.payload, str(props), props.json())


@pytest.mark.anyio
async def test_every_private_hop_of_the_adapter_exists() -> None:
    """aiomqtt's paho client and its future, and paho's own hooks, as the adapter uses them."""
    settings = MqttSettings(subscriptions=[Subscription(topic="s/{device}/{measurement}")])
    connection = mqtt.Connection(settings)
    paho = connection.client._client
    for name in ("manual_ack_set", "ack", "want_write", "on_message"):
        assert hasattr(paho, name), f"paho's client has no {name}"
    assert paho._manual_ack, "manual acknowledgement is on before connecting"
    assert mqtt._READER_FITS, "paho's client lacks what the socket reader calls or sets"
    assert isinstance(paho.loop_read.__self__, mqtt.SocketReader), "the reader is in place"
    assert isinstance(connection.client._disconnected, asyncio.Future)
    assert connection.take_queued() is None
    assert hasattr(_packet, "Properties"), "paho's packet module builds no Properties"
    # paho's own message class, as read before the speed-up replaced it.
    assert "info" in mqtt._MESSAGE_SLOTS, "paho's MQTTMessage keeps no info slot"


def test_same_decoding_with_and_without_properties() -> None:
    """Packets with no, single and repeated properties decode identically both ways."""
    rich = Properties(PacketTypes.PUBLISH)
    rich.ContentType = "application/json"
    rich.MessageExpiryInterval = 30
    rich.UserProperty = [("site", "a"), ("site", "b")]
    bodies = [publish_body(None), publish_body(rich)]
    original = _packet.Properties
    try:
        _packet.Properties = Properties
        expected = [decoded(b) for b in bodies]
        assert mqtt.install_speedups() == {
            "properties": True,
            "message_info": True,
            "socket_reader": True,
        }
        assert _packet.Properties is not Properties
        assert [decoded(b) for b in bodies] == expected
        assert all(mqtt.install_speedups().values()), "installing twice is harmless"
    finally:
        _packet.Properties = original
    assert expected[1][3] != expected[0][3], "the rich packet really carried properties"


def test_lazy_info_messages_behave_like_paho_messages() -> None:
    """Incoming messages carry the same fields; `info` appears on first use, as before."""
    assert mqtt.install_speedups()["message_info"]
    message = paho_client.MQTTMessage(7, b"sensors/d/m")
    assert type(message).__name__ == "_LazyInfoMessage"
    assert (message.mid, message.topic, message.payload, message.qos) == (7, "sensors/d/m", b"", 0)
    assert message.info.mid == 7
    assert message.info is message.info
    message.info.rc = 0
    assert not message.info.is_published()
    message.info._set_as_published()
    assert message.info.is_published()


def test_a_changed_paho_falls_back_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Where paho's internals differ, its own classes stay and the operator is told."""

    class Changed:
        pass

    monkeypatch.setattr(_packet, "Properties", Changed)
    with caplog.at_level(logging.WARNING):
        active = mqtt.install_speedups()
    assert active["properties"] is False
    assert _packet.Properties is Changed
    assert "properties speed-up" in caplog.text


def test_the_pinned_versions_are_the_ones_installed() -> None:
    """The adapter was written against these; pyproject.toml pins the same ranges."""
    assert mqtt.paho_version.startswith("2.")
    assert version("aiomqtt").startswith("2.")


def test_a_message_paho_parsed_keeps_its_receipt_time_and_raw_topic() -> None:
    """The commit window and the PUBACK delay count from receipt, not from when intake got to it."""
    message = paho_client.MQTTMessage(mid=1, topic=b"s/\xff/m")
    message.qos, message.payload = 1, b"{}"
    before = time.monotonic()
    incoming = mqtt.from_paho(message)
    assert incoming.received_at >= before  # paho leaves 0.0 on a message it did not read
    message.timestamp = before - 5.0
    assert mqtt.from_paho(message).received_at == before - 5.0
    assert (incoming.raw_topic, incoming.mid, incoming.qos) == (b"s/\xff/m", 1, 1)
    with pytest.raises(UnicodeDecodeError):
        _ = incoming.topic


@pytest.mark.anyio
async def test_a_wait_for_a_message_ends_when_the_connection_is_lost() -> None:
    """As aiomqtt's iterator: a lost connection raises MqttError instead of waiting forever."""
    inbox = mqtt.Inbox()
    disconnected: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(disconnected.set_exception, ConnectionError("gone"))
    with pytest.raises(aiomqtt.MqttError) as raised:
        await inbox.wait(disconnected)
    assert isinstance(raised.value.__cause__, ConnectionError)
    asyncio.get_running_loop().call_soon(inbox.put, mqtt.from_paho(paho_client.MQTTMessage(3)))
    await inbox.wait(asyncio.get_running_loop().create_future())
    taken = inbox.take()
    assert taken is not None
    assert taken.mid == 3
    assert inbox.take() is None
