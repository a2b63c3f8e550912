"""Ingest: MQTT messages -> decoded readings -> one LMDB group commit -> PUBACKs.

This is the only module that acknowledges MQTT messages, and it does so only after the readings of
those messages are committed (DESIGN invariant 1). A message that yields no valid reading is
acknowledged with its batch, after being counted as invalid. Acks go out in arrival order, as MQTT
requires. A message received but not committed when the connection or the process dies is never
acknowledged, so the broker delivers it again from the persistent session.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiomqtt
import anyio
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway import pahofast
from gateway.admission import Transition, Watermarks
from gateway.decode import Decoded
from gateway.errors import CapacityError, DecodeError
from gateway.record import pack

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway.buffer import Buffer
    from gateway.config import MqttSettings
    from gateway.decode import Decoder
    from gateway.metrics import Metrics

logger = logging.getLogger(__name__)

# With manual acks the broker stops sending once this many QoS 1 messages await our PUBACK
# (MQTT 5 Receive Maximum), which bounds the memory held while a commit is slow or paused.
RECEIVE_MAXIMUM = 20_000
# Leaving a connection waits this long at most for queued PUBACKs to be written.
ACK_DRAIN_TIMEOUT_S = 1.0
ACK_DRAIN_POLL_S = 0.001
# First reconnect delay; doubles up to `reconnect_max_s`, with full jitter.
RECONNECT_INITIAL_S = 0.5


class IntakePaused(Exception):
    """Raised out of the consume loop to leave the broker while the buffer is too full."""


@dataclass(slots=True)
class _Pending:
    mid: int
    qos: int
    decoded: Decoded


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


class Ingest:
    """Subscribes, decodes, group-commits and acknowledges; reconnects forever."""

    def __init__(
        self,
        *,
        settings: MqttSettings,
        commit_max_readings: int,
        commit_window_s: float,
        buffer: Buffer,
        decoder: Decoder,
        metrics: Metrics,
        limiter: anyio.CapacityLimiter,
        on_commit: Callable[[int], None],
        space_freed: Callable[[], anyio.Event],
        watermarks: Watermarks,
    ) -> None:
        """Wire the ingest loop; `run` starts it."""
        self._settings = settings
        self._commit_max = commit_max_readings
        self._commit_window_s = commit_window_s
        self._buffer = buffer
        self._decoder = decoder
        self._metrics = metrics
        self._limiter = limiter
        self._on_commit = on_commit
        self._space_freed = space_freed
        self._watermarks = watermarks
        pahofast.install()
        for sub in settings.subscriptions:
            if sub.qos == 2:  # noqa: PLR2004
                logger.info(
                    "subscription %r: QoS 2 is taken as QoS 1 (paho confirms a QoS 2 "
                    "message to the broker before we could persist it)",
                    sub.topic,
                )

    def _client(self) -> aiomqtt.Client:
        s = self._settings
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
        )
        enable_manual_ack(client)
        deliver_paho_messages(client)
        return client

    async def run(self) -> None:
        """Connect, consume and reconnect until cancelled."""
        failures = 0
        while True:
            used = self._buffer.totals().nbytes
            self._watermarks.update(used)
            if self._watermarks.rejecting:  # a restart with a full buffer
                await self._wait_for_room(f"{used} bytes used")
            try:
                async with self._client() as client:
                    for sub in self._settings.subscriptions:
                        await client.subscribe(sub.template.mqtt_filter, qos=min(sub.qos, 1))
                    self._metrics.mqtt_connected.set(1)
                    self._metrics.mqtt_connects.inc()
                    logger.info(
                        "connected to the broker at %s:%d%s",
                        self._settings.host,
                        self._settings.port,
                        f" after {failures} failed attempts" if failures else "",
                    )
                    failures = 0
                    try:
                        await self._consume(client)
                    finally:
                        with anyio.CancelScope(shield=True):
                            await drain_acks(client)
            except IntakePaused as paused:
                self._metrics.mqtt_connected.set(0)
                await self._wait_for_room(str(paused))
            except aiomqtt.MqttError as exc:
                self._metrics.mqtt_connected.set(0)
                failures += 1
                if failures == 1:
                    logger.warning("broker connection lost or refused (%s); reconnecting", exc)
                cap = min(self._settings.reconnect_max_s, RECONNECT_INITIAL_S * 2**failures)
                await anyio.sleep(random.uniform(0, cap))  # noqa: S311 - jitter

    async def _consume(self, client: aiomqtt.Client) -> None:
        """Group commits: wait for a message, let the window fill the queue, drain, commit, ack.

        Sleeping through the window (instead of committing whenever the queue is empty) is
        what makes batches large: aiomqtt hands over one packet per loop iteration.
        """
        messages = client.messages
        while True:
            first: mqtt.MQTTMessage = await anext(messages)  # type: ignore[arg-type]
            started = time.monotonic()
            if len(messages) < self._commit_max:
                await anyio.sleep(self._commit_window_s)
            batch = [self._decode(first)]
            count = len(batch[0].decoded.readings)
            while count < self._commit_max:
                queued = take_queued(client)
                if queued is None:
                    break
                batch.append(self._decode(queued))
                count += len(batch[-1].decoded.readings)
            self._metrics.messages.inc(len(batch))
            await self._commit_and_ack(client, batch, count)
            self._metrics.ack_delay_seconds.observe(time.monotonic() - started)

    def _decode(self, message: mqtt.MQTTMessage) -> _Pending:
        try:
            topic = message.topic
        except UnicodeDecodeError:
            decoded = Decoded(errors=[DecodeError("not_utf8", "topic is not UTF-8")])
        else:
            decoded = self._decoder.decode(topic, bytes(message.payload), time.time_ns())
        return _Pending(message.mid, message.qos, decoded)

    def _count_invalid(self, batch: list[_Pending]) -> int:
        invalid = 0
        for pending in batch:
            for error in pending.decoded.errors:
                self._metrics.invalid.labels(error.reason).inc()
                invalid += 1
            if pending.decoded.errors:
                logger.debug("invalid reading: %s", pending.decoded.errors[0])
        return invalid

    async def _commit_and_ack(
        self, client: aiomqtt.Client, batch: list[_Pending], count: int
    ) -> None:
        items = [r for pending in batch for r in pending.decoded.readings]
        started = time.monotonic()
        try:
            # Once the append starts, finish it and send its acks even if we are being
            # stopped: stopping must not turn a committed batch into a redelivered one.
            with anyio.CancelScope(shield=True):
                if items:
                    await anyio.to_thread.run_sync(self._append, items, limiter=self._limiter)
                for pending in batch:
                    if pending.qos:
                        send_ack(client, pending.mid, pending.qos)
        except CapacityError as exc:
            # Nothing of this batch is stored or acknowledged: the broker delivers it again.
            self._watermarks.rejecting = True
            raise IntakePaused(str(exc)) from exc
        # Counted only once committed: a batch the buffer could not take went back to the broker
        # unacknowledged and will be received again.
        self._metrics.accounting.committed(accepted=count, invalid=self._count_invalid(batch))
        if items:
            self._metrics.commit_seconds.observe(time.monotonic() - started)
            self._metrics.commit_readings.observe(count)
            self._on_commit(count)
        used = self._buffer.totals().nbytes
        if self._watermarks.update(used) is Transition.START_REJECTING:
            raise IntakePaused(f"{used} of {self._watermarks.capacity_bytes} bytes used")

    async def _wait_for_room(self, reason: str) -> None:
        """Stay away from the broker until the buffer is below the low watermark."""
        self._metrics.intake_paused.set(1)
        self._metrics.intake_pauses.inc()
        logger.warning(
            "buffer at its high watermark (%s): intake paused and disconnected from the broker, "
            "which keeps QoS 1 messages in the session (QoS 0 messages sent meanwhile are lost)",
            reason,
        )
        while self._watermarks.update(self._buffer.totals().nbytes) is None:
            if not self._watermarks.rejecting:
                break
            with anyio.move_on_after(1.0):
                await self._space_freed().wait()
        self._metrics.intake_paused.set(0)
        totals = self._buffer.totals()
        logger.info(
            "buffer below its low watermark (%d of %d bytes): intake resumed",
            totals.nbytes,
            self._watermarks.capacity_bytes,
        )

    def _append(self, items: list) -> None:  # type: ignore[type-arg]
        self._buffer.append([(r.device, pack(r)) for r in items])
        self._metrics.observe_buffer(self._buffer.totals())
