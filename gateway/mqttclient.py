"""The MQTT client as ingest needs it: manual acks, paho's messages, persistent sessions.

aiomqtt 2.x lacks a few things the gateway depends on, so these helpers reach into its paho
client (the version is pinned in pyproject.toml for that reason). Each says why.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import aiomqtt
import anyio
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.tlscontext import client_context

if TYPE_CHECKING:
    from gateway.config import MqttSettings

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
