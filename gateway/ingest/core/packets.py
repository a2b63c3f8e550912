"""MQTT packets cut out of the bytes read off the socket; PUBLISH packets parsed here.

paho-mqtt reads a packet with three or more socket reads and builds several objects for it;
under load that was a third of the gateway's CPU. The gateway reads the socket in large chunks
instead and parses the one packet that carries readings, PUBLISH at QoS 0 or 1, into an
`Incoming`; every other packet (CONNACK, SUBACK, PINGRESP, QoS 2, anything malformed) is handed
back whole, for paho to handle as it always did. Only the packet's boundaries and the PUBLISH
fields are read here (MQTT 3.1.1 section 3.3, MQTT 5.0 section 3.3); a packet whose parts do not
fit its length is left to paho, which refuses it as malformed and closes the connection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

PUBLISH = 0x30
# The remaining length is at most four 7-bit groups.
MAX_LENGTH_BYTES = 4


class MalformedPacketError(ValueError):
    """The bytes are no MQTT packet stream."""


class Incoming:
    """One PUBLISH as the gateway takes it: topic bytes, payload, packet id, QoS, receipt."""

    __slots__ = ("dup", "mid", "payload", "qos", "raw_topic", "received_at")

    def __init__(  # noqa: PLR0917 - the packet's fields, positional: one call per message
        self,
        raw_topic: bytes,
        payload: bytes,
        mid: int,
        qos: int,
        dup: bool,
        received_at: float,
    ) -> None:
        """`received_at`: `time.monotonic()` when the bytes were read off the socket."""
        self.raw_topic = raw_topic
        self.payload = payload
        self.mid = mid
        self.qos = qos
        self.dup = dup
        self.received_at = received_at

    @property
    def topic(self) -> str:
        """The topic as text.

        Raises:
            UnicodeDecodeError: the sender's topic is not UTF-8 (the broker should have refused
                it; the gateway counts it invalid).
        """
        return self.raw_topic.decode()


def cut_packets(
    data: bytes,
    *,
    v5: bool,
    received_at: float,
    take: Callable[[Incoming], object],
    hand_over: Callable[[bytes], int],
) -> int:
    """Cut the complete packets at the start of `data`; how many bytes they took.

    Each PUBLISH at QoS 0 or 1 goes to `take`; every other packet, whole, to `hand_over`, which
    returns paho's result code: a non-zero one (the connection is being closed) stops the cut
    there. The bytes after the last complete packet are the start of the next one.
    """
    pos, size = 0, len(data)
    while size - pos >= 2:  # noqa: PLR2004 - the shortest packet: a type and a length byte
        header = data[pos]
        length, shift, i = 0, 0, pos + 1
        while True:
            if i == size:
                return pos
            byte = data[i]
            i += 1
            length |= (byte & 0x7F) << shift
            if byte < 0x80:  # noqa: PLR2004 - the continuation bit
                break
            if i - pos > MAX_LENGTH_BYTES:
                raise MalformedPacketError("a remaining length of more than four bytes")
            shift += 7
        end = i + length
        if end > size:
            return pos
        message = _publish(data, header, i, end, v5, received_at) if header >> 4 == 3 else None  # noqa: PLR2004
        if message is not None:
            take(message)
        elif hand_over(data[pos:end]):
            return size
        pos = end
    return pos


def _publish(  # noqa: PLR0917 - once per message, plain arguments
    data: bytes, header: int, start: int, end: int, v5: bool, received_at: float
) -> Incoming | None:
    """The PUBLISH in `data[start:end]` (after its fixed header), or None to leave it to paho."""
    qos = (header >> 1) & 3
    if qos > 1 or end - start < 2:  # noqa: PLR2004 - QoS 2's handshake is paho's
        return None
    topic_end = start + 2 + (data[start] << 8 | data[start + 1])
    if topic_end == start + 2 or topic_end > end:
        # An empty topic is a topic alias, which the gateway never allows (MQTT 5); a longer
        # one than the packet is malformed.
        return None
    mid = 0
    pos = topic_end
    if qos:
        pos += 2
        if pos > end:
            return None
        mid = data[topic_end] << 8 | data[topic_end + 1]
    if v5:
        # Properties: their length (a variable byte integer), then skipped; none is used.
        length, shift = 0, 0
        while True:
            if pos >= end or shift > 21:  # noqa: PLR2004
                return None
            byte = data[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            if byte < 0x80:  # noqa: PLR2004
                break
            shift += 7
        pos += length
    if pos > end:
        return None
    return Incoming(
        data[start + 2 : topic_end], data[pos:end], mid, qos, bool(header & 8), received_at
    )
