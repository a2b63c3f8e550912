"""The template Properties decode MQTT 5 packets exactly as paho's own do."""

from __future__ import annotations

from paho.mqtt import _packet
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway import pahofast


def publish_body(properties: Properties | None) -> bytes:
    topic = b"sensors/dev-1/telemetry"
    props = properties.pack() if properties is not None else b"\x00"
    return len(topic).to_bytes(2, "big") + topic + (7).to_bytes(2, "big") + props + b'{"v": 1}'


def decoded(body: bytes) -> tuple[object, ...]:
    packet = _packet.decode_publish(0x32, body, MQTTProtocolVersion.MQTTv5)
    props = packet.properties
    assert props is not None
    return (packet.topic, packet.mid, packet.payload, str(props), props.json())


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
        assert pahofast.install()
        assert _packet.Properties is not Properties
        assert [decoded(b) for b in bodies] == expected
        assert pahofast.install(), "installing twice is harmless"
    finally:
        _packet.Properties = original
    assert expected[1][3] != expected[0][3], "the rich packet really carried properties"


def test_lazy_info_messages_behave_like_paho_messages() -> None:
    """Incoming messages carry the same fields; `info` appears on first use, as before."""
    from paho.mqtt import client as paho_client  # noqa: PLC0415

    assert pahofast.install()
    message = paho_client.MQTTMessage(7, b"sensors/d/m")
    assert type(message).__name__ == "_LazyInfoMessage"
    assert (message.mid, message.topic, message.payload, message.qos) == (7, "sensors/d/m", b"", 0)
    assert message.info.mid == 7
    assert message.info is message.info
    message.info.rc = 0
    assert not message.info.is_published()
    message.info._set_as_published()
    assert message.info.is_published()
