"""The one adapter around aiomqtt 2.x and paho-mqtt 2.x: every private hop the gateway makes.

aiomqtt 2.x lacks a few things the gateway depends on, so these helpers reach into its paho
client, and two per-message costs of paho are removed by replacing two of its classes. Both
versions are pinned in pyproject.toml for that reason, and tests/unit/ingest/test_mqtt.py fails
loudly when an internal used here is missing. Each hop says why it is needed:

- manual acknowledgement (`_client.manual_ack_set`, `_client.ack`): aiomqtt 2.x has no public
  switch (empicano/aiomqtt#345); acks must wait for the commit (DESIGN invariant 1);
- paho's own messages on aiomqtt's queue (`_client.on_message`, `_queue`): aiomqtt's wrapper
  objects cost a sixth of the CPU under load, and a topic that is not UTF-8 raised inside a paho
  callback, leaving the message unacknowledged forever;
- draining the queue without awaiting (`_queue.get_nowait`) and waiting for queued PUBACKs to be
  written before a disconnect (`_client.want_write`);
- speed-ups (`install_speedups`): paho builds its property lookup tables anew for every PUBLISH
  (`Properties.__init__`, a third of the CPU under load), and every `MQTTMessage` makes an
  `MQTTMessageInfo` with a `threading.Condition` that only outgoing messages use (7 %). Both are
  replaced process-wide, once, by the service; where paho changed, they fall back with a
  WARNING and the `gateway_mqtt_speedup_active` metric says so. tests/unit/ingest/test_mqtt.py
  checks both against paho's own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, ClassVar

import aiomqtt
import anyio
import paho.mqtt.client as mqtt
from paho.mqtt import __version__ as paho_version
from paho.mqtt import _packet
from paho.mqtt import client as paho_client
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.tls import client_context

if TYPE_CHECKING:
    from gateway.config.mqtt import MqttSettings

logger = logging.getLogger(__name__)

# With manual acks the broker stops sending once this many QoS 1 messages await our PUBACK
# (MQTT 5 Receive Maximum), which bounds the memory held while a commit is slow or paused.
RECEIVE_MAXIMUM = 20_000
# Leaving a connection waits this long at most for queued PUBACKs to be written.
ACK_DRAIN_TIMEOUT_S = 1.0
ACK_DRAIN_POLL_S = 0.001


def make_client(s: MqttSettings) -> aiomqtt.Client:
    """A client for the configured broker, with manual acks and paho's messages queued."""
    v5 = s.protocol == "5"
    properties = None
    if v5:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.ReceiveMaximum = RECEIVE_MAXIMUM
        if s.persistent_session:
            properties.SessionExpiryInterval = s.session_expiry_s
    client = aiomqtt.Client(
        s.host,
        s.port,
        identifier=s.client_id,
        username=s.username,
        password=s.password.get_secret_value() if s.password else None,
        keepalive=s.keepalive_s,
        protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
        clean_session=None if v5 else not s.persistent_session,
        # paho refuses any clean_start but its default outside MQTT 5.
        clean_start=not s.persistent_session if v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
        properties=properties,
        tls_context=client_context(s.tls) if s.tls is not None else None,
        # paho checks the host name itself unless told not to; the context says what we want.
        tls_insecure=None if s.tls is None else not s.tls.verify_hostname,
    )
    enable_manual_ack(client)
    deliver_paho_messages(client)
    return client


async def end_session(s: MqttSettings) -> None:
    """End the broker's session of `s.client_id`, with whatever it still queues.

    A clean connect discards the old session (MQTT 3.1.1 clean session, MQTT 5 clean start),
    and without a session expiry the new one ends at disconnect.
    """
    async with make_client(s.model_copy(update={"persistent_session": False})):
        pass


def enable_manual_ack(client: aiomqtt.Client) -> None:
    """Switch paho to manual acknowledgement before connecting.

    aiomqtt 2.x has no public switch for it (empicano/aiomqtt#345); paho 2.x does. It must be on
    before CONNECT: a persistent session delivers queued messages right after CONNACK.
    """
    client._client.manual_ack_set(True)  # noqa: SLF001


def deliver_paho_messages(client: aiomqtt.Client) -> None:
    """Queue paho's own messages, skipping aiomqtt's per-message wrapper objects.

    aiomqtt 2.x converts each paho message into its `Message` and `Topic` on the network path;
    that cost a sixth of the gateway's CPU under load. The gateway needs only the topic,
    payload, mid and QoS, which paho's message already has. A topic that is not UTF-8 is then
    counted as invalid here instead of raising inside a paho callback, which would have left the
    message unacknowledged forever.
    """
    queue = client._queue  # noqa: SLF001

    def on_message(_client: object, _userdata: object, message: mqtt.MQTTMessage) -> None:
        queue.put_nowait(message)  # type: ignore[arg-type]

    client._client.on_message = on_message  # noqa: SLF001


async def next_message(client: aiomqtt.Client) -> mqtt.MQTTMessage:
    """Wait for the next message (paho's own object: see `deliver_paho_messages`).

    aiomqtt's iterator also ends the wait when the connection is lost (raising MqttError),
    which a bare wait on its queue would not.
    """
    message: mqtt.MQTTMessage = await anext(client.messages)  # type: ignore[arg-type]
    return message


def received_at(message: mqtt.MQTTMessage) -> float:
    """When paho read the message off the socket (`time.monotonic`), or now if it did not say."""
    stamped: float = message.timestamp
    return stamped if stamped > 0 else time.monotonic()


def take_queued(client: aiomqtt.Client) -> mqtt.MQTTMessage | None:
    """The next message aiomqtt has queued, without awaiting; None when there is none.

    Its iterator costs a task and an `asyncio.wait` per message; draining the queue it reads
    from directly is several times cheaper once a group commit is under way.
    """
    try:
        message: mqtt.MQTTMessage = client._queue.get_nowait()  # type: ignore[assignment]  # noqa: SLF001
    except asyncio.QueueEmpty:
        return None
    return message


async def drain_acks(client: aiomqtt.Client, timeout_s: float = ACK_DRAIN_TIMEOUT_S) -> None:
    """Give the event loop time to write queued PUBACKs before the connection closes.

    aiomqtt closes the socket on leaving its context without flushing paho's outgoing queue;
    an acknowledgement lost there makes the broker deliver a committed message again.
    """
    with anyio.move_on_after(timeout_s):
        # paho offers no event for an empty outgoing queue, so it is polled.
        while client._client.want_write():  # noqa: SLF001, ASYNC110
            await anyio.sleep(ACK_DRAIN_POLL_S)


def send_ack(client: aiomqtt.Client, mid: int, qos: int) -> None:
    """Send the PUBACK (QoS 1) for a committed message."""
    client._client.ack(mid, qos)  # noqa: SLF001


# Private attributes paho's Properties keeps besides the property values themselves.
_TABLES = ("packetType", "types", "names", "properties")
_NO_PROPERTIES = b"\x00"


class _TemplateProperties(Properties):
    _templates: ClassVar[dict[int, dict[str, Any]]] = {}

    def __init__(self, packetType: int) -> None:  # noqa: N803 - paho's parameter name
        template = self._templates.get(packetType)
        if template is None:
            built = Properties(packetType)  # type: ignore[no-untyped-call]
            template = self._templates[packetType] = {k: built.__dict__[k] for k in _TABLES}
        # Straight into __dict__: paho's __setattr__ only admits these four names anyway.
        self.__dict__.update(template)

    def unpack(self, buffer: bytes) -> tuple[Properties, int]:
        if buffer[:1] == _NO_PROPERTIES:
            return self, 1
        result: tuple[Properties, int] = super().unpack(buffer)  # type: ignore[no-untyped-call]
        return result


# The slot's descriptor, which the property below shadows and stores through.
_INFO_SLOT: Any = vars(paho_client.MQTTMessage)["info"]
_MESSAGE_SLOTS = frozenset(paho_client.MQTTMessage.__slots__)


class _LazyInfoMessage(paho_client.MQTTMessage):
    __slots__ = ()

    def __init__(self, mid: int = 0, topic: bytes = b"") -> None:
        self.timestamp = 0.0
        self.state = paho_client.mqtt_ms_invalid
        self.dup = False
        self.mid = mid
        self._topic = topic
        self.payload = b""
        self.qos = 0
        self.retain = False
        self.properties = None

    @property
    def info(self) -> paho_client.MQTTMessageInfo:
        try:
            info: paho_client.MQTTMessageInfo = _INFO_SLOT.__get__(self)
        except AttributeError:
            info = paho_client.MQTTMessageInfo(self.mid)
            _INFO_SLOT.__set__(self, info)
        return info

    @info.setter
    def info(self, value: paho_client.MQTTMessageInfo) -> None:
        _INFO_SLOT.__set__(self, value)


_LAZY_SETS = frozenset(
    {"timestamp", "state", "dup", "mid", "_topic", "payload", "qos", "retain", "properties"}
)


def install_speedups() -> dict[str, bool]:
    """Put both speed-ups in place, for the whole process; which are active.

    Called once by the service before it connects. Where paho has changed, its own classes
    stay and a WARNING says which speed-up is lost: the gateway then works, slower (about a
    third more CPU per message for the first, 7 % for the second, as measured when written).
    """
    active = {"properties": True, "message_info": True}
    current = getattr(_packet, "Properties", None)
    if current is not _TemplateProperties:
        if current is Properties:
            setattr(_packet, "Properties", _TemplateProperties)  # noqa: B010 - not public
        else:
            active["properties"] = False
    message = paho_client.MQTTMessage
    # The copy of __init__ above must set every slot paho's sets but `info`.
    if message is not _LazyInfoMessage:
        if {*_LAZY_SETS, "info"} == _MESSAGE_SLOTS:
            paho_client.MQTTMessage = _LazyInfoMessage  # type: ignore[misc]
        else:
            active["message_info"] = False
    for name, on in active.items():
        if not on:
            logger.warning(
                "paho-mqtt %s changed what the %s speed-up relies on; running without it "
                "(more CPU per message)",
                paho_version,
                name,
            )
    return active
