"""Cutting packets out of the socket's bytes: PUBLISH parsed as paho parses it, the rest handed on.

The packets are built here from the MQTT specification's layout and decoded by paho-mqtt as
well, so the gateway's parser is held to paho's reading of the same bytes, however the bytes
are split into reads.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt import _packet
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.ingest.core.packets import Incoming, MalformedPacketError, cut_packets

PINGRESP = b"\xd0\x00"
SUBACK = b"\x90\x03\x00\x01\x01"


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def publish(
    topic: bytes,
    payload: bytes,
    qos: int,
    mid: int,
    *,
    v5: bool,
    dup: bool = False,
    properties: Properties | None = None,
) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic
    if qos:
        body += mid.to_bytes(2, "big")
    if v5:
        body += properties.pack() if properties is not None else b"\x00"
    body += payload
    header = 0x30 | qos << 1 | (0x08 if dup else 0)
    return bytes([header]) + varint(len(body)) + body


def cut_all(chunks: list[bytes], *, v5: bool) -> tuple[list[Incoming], list[bytes]]:
    """Feed the chunks as reads; the messages taken and the packets handed over."""
    taken: list[Incoming] = []
    handed: list[bytes] = []

    def hand_over(packet: bytes) -> int:
        handed.append(packet)
        return 0

    rest = b""
    for chunk in chunks:
        data = rest + chunk
        used = cut_packets(data, v5=v5, received_at=1.0, take=taken.append, hand_over=hand_over)
        rest = data[used:]
    assert rest == b"", "every complete packet is cut"
    return taken, handed


def paho_reading(packet: bytes, *, v5: bool) -> tuple[bytes, bytes, int, int, bool]:
    length_end = 1
    while packet[length_end] & 0x80:
        length_end += 1
    version = MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311
    p = _packet.decode_publish(packet[0], packet[length_end + 1 :], version)
    return (p.topic, p.payload, p.mid, p.qos, p.dup)


def fields(m: Incoming) -> tuple[bytes, bytes, int, int, bool]:
    return (m.raw_topic, m.payload, m.mid, m.qos, m.dup)


messages = st.lists(
    st.tuples(
        st.binary(min_size=1, max_size=40),
        st.binary(max_size=300),
        st.integers(0, 1),
        st.integers(1, 65535),
        st.booleans(),
        st.booleans(),  # with properties (MQTT 5)
    ),
    min_size=1,
    max_size=30,
)


@given(messages, st.booleans(), st.data())
def test_publish_packets_read_as_paho_reads_them_however_split(
    specs: list[tuple[bytes, bytes, int, int, bool, bool]], v5: bool, data: st.DataObject
) -> None:
    rich = Properties(PacketTypes.PUBLISH)
    rich.ContentType = "application/json"
    rich.UserProperty = [("site", "a")]
    packets = [
        publish(t, p, q, m, v5=v5, dup=d, properties=rich if props and v5 else None)
        for t, p, q, m, d, props in specs
    ]
    stream = PINGRESP + b"".join(packets) + SUBACK
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    taken, handed = cut_all(chunks, v5=v5)
    assert handed == [PINGRESP, SUBACK]
    expected = [paho_reading(p, v5=v5) for p in packets]
    # paho reports QoS 0's packet id as 0, as the gateway does.
    assert [fields(m) for m in taken] == expected


def test_a_long_payload_spans_reads_and_its_length_takes_several_bytes() -> None:
    packet = publish(b"s/d/m", b"x" * 300_000, 1, 9, v5=False)
    taken, handed = cut_all([packet[i : i + 65536] for i in range(0, len(packet), 65536)], v5=False)
    assert handed == []
    assert [len(m.payload) for m in taken] == [300_000]


def test_what_paho_must_handle_is_handed_over_whole() -> None:
    """QoS 2, a topic alias (empty topic), and a packet whose parts overrun it."""
    qos2 = publish(b"s/d/m", b"{}", 2, 5, v5=False)
    alias = publish(b"", b"{}", 1, 6, v5=True)
    overrun = b"\x32\x04\x00\x09ab"  # topic length 9 in a body of 4 bytes
    taken, handed = cut_all([qos2 + alias + overrun], v5=True)
    assert taken == []
    assert handed == [qos2, alias, overrun]


def test_a_refused_packet_stops_the_cut() -> None:
    """paho closing the connection on a packet: nothing after it is taken."""
    taken: list[Incoming] = []
    stream = b"\xe0\x00" + publish(b"s/d/m", b"{}", 1, 1, v5=False)
    used = cut_packets(stream, v5=False, received_at=0.0, take=taken.append, hand_over=lambda _: 7)
    assert used == len(stream)
    assert taken == []


def test_a_length_of_five_bytes_is_no_packet_stream() -> None:
    stream = b"\x30\xff\xff\xff\xff\x01" + b"x" * 10
    with pytest.raises(MalformedPacketError):
        cut_packets(stream, v5=False, received_at=0.0, take=print, hand_over=lambda _: 0)
