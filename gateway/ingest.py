"""Ingest: MQTT messages -> decoded readings -> one LMDB group commit -> PUBACKs.

This is the only module that acknowledges MQTT messages, and it does so only after the readings of
those messages are committed (DESIGN invariant 1). A message that yields no valid reading is
acknowledged with its batch, after being counted as invalid. Acks go out in arrival order, as MQTT
requires. A message received but not committed when the connection or the process dies is never
acknowledged, so the broker delivers it again from the persistent session.
"""

from __future__ import annotations

import bisect
import logging
import random
import shutil
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn

import aiomqtt
import anyio

from gateway import pahofast
from gateway.admission import DEVICE_SHARE, DROPPED_OLDEST, MAX_DEVICES, SHED, Watermarks
from gateway.brokerstats import BROKER_TOPICS, SYS_PREFIX
from gateway.buffer import DISK_FULL_FREE_BYTES
from gateway.decode import Decoded
from gateway.episodes import Episodes
from gateway.errors import CapacityError, DecodeError
from gateway.fifos import Admitted, fifo_name
from gateway.mqttclient import drain_acks, end_session, make_client, send_ack, take_queued
from gateway.record import pack
from gateway.rejects import Reject
from gateway.tlscontext import describe as describe_tls_failure

if TYPE_CHECKING:
    from collections.abc import Callable

    import paho.mqtt.client as mqtt

    from gateway.admission import Lane, Rules
    from gateway.brokerstats import BrokerStats
    from gateway.buffer import Buffer
    from gateway.config import MqttSettings
    from gateway.decode import Decoder
    from gateway.health import Health
    from gateway.metrics import Metrics
    from gateway.rejects import RejectLog

logger = logging.getLogger(__name__)

# First reconnect delay; doubles up to `reconnect_max_s`, with full jitter.
RECONNECT_INITIAL_S = 0.5
# CONNACK reason codes for a bad login: MQTT 3.1.1 (4, 5) and MQTT 5 (134, 135).
REFUSED_CREDENTIALS = frozenset({4, 5, 134, 135})
# A refusal or drop episode is over after this long without one (one log line each way).
EPISODE_QUIET_S = 10.0
# Samples of refused messages for `gateway rejects`: at most this many, this often.
REJECT_SAMPLES_PER_WRITE = 5
REJECT_WRITE_INTERVAL_S = 1.0
# How often a full disk is looked at again while intake waits for free space.
DISK_FULL_RECHECK_S = 2.0
# Log wording of each refusal and drop reason.
WHY = {
    MAX_DEVICES: "the buffer holds [buffer] max_devices devices; readings of new devices refused",
    DEVICE_SHARE: "a device is over its [buffer] device_share",
    SHED: "buffer at its high watermark; lowest-priority readings shed",
    DROPPED_OLDEST: "buffer at its high watermark; oldest readings of the largest device dropped",
}


class IntakePaused(Exception):
    """Raised out of the consume loop to leave the broker while the buffer is too full."""

    def __init__(self, message: str, *, disk_full: bool = False) -> None:
        """`disk_full`: wait for free disk space rather than for the flusher."""
        super().__init__(message)
        self.disk_full = disk_full


@dataclass(frozen=True, slots=True)
class _Paused:
    """Admission paused at the message with this index of a batch."""

    at_message: int
    error: CapacityError


@dataclass(slots=True)
class _Pending:
    mid: int
    qos: int
    decoded: Decoded
    # (topic, payload) of a message with invalid readings, for the reject log.
    raw: tuple[str, bytes] | None = None


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
        on_commit: Callable[[int], None],
        on_drop: Callable[[int], None],
        space_freed: Callable[[], anyio.Event],
        rules: Rules,
        health: Health,
        on_ready: Callable[[], None],
        broker_stats: BrokerStats,
        rejects: RejectLog,
    ) -> None:
        """Wire the ingest loop; `run` starts it. `on_ready` follows each subscription."""
        self._settings = settings
        self._commit_max = commit_max_readings
        self._commit_window_s = commit_window_s
        self._buffer = buffer
        self._decoder = decoder
        self._metrics = metrics
        self._on_commit = on_commit
        self._on_drop = on_drop
        self._space_freed = space_freed
        self._rules = rules
        self._watermarks = Watermarks(rules.high_bytes, rules.low_bytes)
        self._health = health
        self._rejects = rejects
        self._next_reject_write = 0.0
        self._on_ready = on_ready
        self._broker_stats = broker_stats
        self._episodes: Episodes[tuple[str, str, str]] = Episodes(EPISODE_QUIET_S)
        pahofast.install()
        for sub in settings.subscriptions:
            if sub.qos == 2:  # noqa: PLR2004
                logger.info(
                    "subscription %r: QoS 2 is taken as QoS 1 (paho confirms a QoS 2 "
                    "message to the broker before we could persist it)",
                    sub.topic,
                )

    async def run(self, *, retire_quiet_s: float | None = None) -> None:
        """Connect, consume and reconnect until cancelled.

        `retire_quiet_s`: instead, take what the session still holds (unsubscribed, until no
        message came for that long), end the session and return: a retired worker's last job.
        """
        failures = 0
        while True:
            try:
                async with make_client(self._settings) as client:
                    if retire_quiet_s is None:
                        await self._subscribe(client)
                    else:
                        await client.unsubscribe(self._filters())
                    self._set_connected(True)
                    self._metrics.mqtt_connects.inc()
                    self._on_ready()
                    logger.info(
                        "connected to the broker at %s:%d as %s%s",
                        self._settings.host,
                        self._settings.port,
                        self._settings.client_id,
                        f" after {failures} failed attempts" if failures else "",
                    )
                    failures = 0
                    try:
                        if retire_quiet_s is None:
                            await self._consume(client)
                        else:
                            await self._consume_until_quiet(client, retire_quiet_s)
                    finally:
                        with anyio.CancelScope(shield=True):
                            await drain_acks(client)
            except IntakePaused as paused:
                self._set_connected(False)
                await self._pause(paused)
            except aiomqtt.MqttError as exc:
                self._set_connected(False)
                failures += 1
                if failures == 1:
                    _log_connect_failure(exc)
                cap = min(self._settings.reconnect_max_s, RECONNECT_INITIAL_S * 2**failures)
                await anyio.sleep(random.uniform(0, cap))  # noqa: S311 - jitter
            else:
                # Only a retiring session's consumption returns.
                await end_session(self._settings)
                self._set_connected(False)
                return

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        s = self._settings
        for sub in s.subscriptions:
            shared = s.subscribe_filter(sub.template.mqtt_filter)
            await client.subscribe(shared, qos=min(sub.qos, 1))
        if s.broker_stats:
            await client.subscribe([(topic, 0) for topic in BROKER_TOPICS])

    def _filters(self) -> list[str]:
        """Every filter a session of this client id may hold, shared or not."""
        s = self._settings
        plain = [sub.template.mqtt_filter for sub in s.subscriptions]
        shared = [s.subscribe_filter(f) for f in plain] if s.share_group else []
        return [*plain, *shared, *BROKER_TOPICS]

    async def _consume(self, client: aiomqtt.Client) -> NoReturn:
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
            await self._commit_and_ack(client, self._take_batch(client, first))
            self._metrics.ack_delay_seconds.observe(time.monotonic() - started)

    async def _consume_until_quiet(self, client: aiomqtt.Client, quiet_s: float) -> None:
        """Commit what arrives until nothing came for `quiet_s`.

        Polls the queue rather than awaiting the iterator: a wait cancelled there can take a
        message off the queue and lose it, and this session is about to end.
        """
        last = time.monotonic()
        while time.monotonic() - last < quiet_s:
            await anyio.sleep(self._commit_window_s)
            first = take_queued(client)
            if first is not None:
                last = time.monotonic()
                await self._commit_and_ack(client, self._take_batch(client, first))

    def _take_batch(self, client: aiomqtt.Client, first: mqtt.MQTTMessage) -> list[_Pending]:
        """`first` and what is queued behind it, up to a group commit's worth of readings."""
        batch = [self._decode(first)]
        count = len(batch[0].decoded.readings)
        while count < self._commit_max:
            queued = take_queued(client)
            if queued is None:
                break
            batch.append(self._decode(queued))
            count += len(batch[-1].decoded.readings)
        self._metrics.messages.inc(len(batch))
        return batch

    def _decode(self, message: mqtt.MQTTMessage) -> _Pending:
        try:
            topic = message.topic
        except UnicodeDecodeError:
            decoded = Decoded(errors=[DecodeError("not_utf8", "topic is not UTF-8")])
        else:
            if topic.startswith(SYS_PREFIX):
                # The broker's own counters (QoS 0): metrics, not readings.
                self._broker_stats.update(topic, bytes(message.payload))
                return _Pending(message.mid, 0, Decoded())
            payload = bytes(message.payload)
            decoded = self._decoder.decode(topic, payload, time.time_ns())
            if decoded.errors:
                return _Pending(message.mid, message.qos, decoded, (topic, payload))
        return _Pending(message.mid, message.qos, decoded)

    def _count_invalid(self, batch: list[_Pending]) -> int:
        """Count the invalid readings by reason; keep a sample for `gateway rejects`."""
        invalid = 0
        samples: list[Reject] = []
        for pending in batch:
            for error in pending.decoded.errors:
                self._metrics.invalid.labels(error.reason).inc()
                invalid += 1
            if pending.decoded.errors:
                logger.debug("invalid reading: %s", pending.decoded.errors[0])
                if pending.raw is not None and len(samples) < REJECT_SAMPLES_PER_WRITE:
                    error = pending.decoded.errors[0]
                    samples.append(Reject.of(*pending.raw, error.reason, error.detail))
        now = time.monotonic()
        if samples and now >= self._next_reject_write:
            # At most one write a second: a flood of bad messages must not double the fsyncs.
            self._next_reject_write = now + REJECT_WRITE_INTERVAL_S
            self._rejects.add(samples)
        return invalid

    async def _commit_and_ack(self, client: aiomqtt.Client, batch: list[_Pending]) -> None:
        started = time.monotonic()
        try:
            # No await between the commit and its acks: a stop cannot come between them and
            # turn a committed batch into a redelivered one.
            admitted, paused = self._admit(batch)
            committed = len(batch) if paused is None else paused.at_message
            for pending in batch[:committed]:
                if pending.qos:
                    send_ack(client, pending.mid, pending.qos)
        except CapacityError as exc:
            # Nothing of this batch is stored or acknowledged: the broker delivers it again.
            raise IntakePaused(str(exc), disk_full=exc.disk_full) from exc
        if admitted.stored:
            self._metrics.commit_seconds.observe(time.monotonic() - started)
            self._metrics.commit_readings.observe(admitted.stored)
            self._on_commit(admitted.stored)
        dropped = sum(admitted.dropped.values())
        if dropped:
            self._on_drop(dropped)
        if admitted.refused or admitted.dropped:
            self._log_episodes(admitted)
        elif self._episodes.running:
            self._end_episodes()
        if paused is not None:
            # The messages from the one that met the watermark on were not acknowledged: the
            # broker keeps them and delivers them again after the pause.
            raise IntakePaused(str(paused.error))

    def reconfigure(self, rules: Rules) -> None:
        """Take new admission rules (SIGHUP); they apply from the next group commit."""
        self._rules = rules
        self._watermarks.high_bytes = rules.high_bytes
        self._watermarks.low_bytes = rules.low_bytes

    def _set_connected(self, connected: bool) -> None:
        self._metrics.mqtt_connected.set(int(connected))
        self._health.connected = connected

    def _set_paused(self, paused: bool) -> None:
        self._metrics.intake_paused.set(int(paused))
        self._health.paused = paused

    def housekeeping(self) -> None:
        """Log the end of refusal and drop episodes that went quiet while no message came."""
        if self._episodes.running:
            self._end_episodes()

    def _log_episodes(self, admitted: Admitted) -> None:
        now = time.monotonic()
        for kind, counts in (("refusing", admitted.refused), ("dropping", admitted.dropped)):
            for (reason, device_class), n in counts.items():
                if self._episodes.record((kind, reason, device_class), n, now):
                    logger.warning(
                        "started %s readings of device class %r: %s",
                        kind,
                        device_class,
                        WHY.get(reason, reason),
                    )
        self._end_episodes(now)

    def _end_episodes(self, now: float | None = None) -> None:
        for (kind, reason, device_class), episode in self._episodes.ended(
            now if now is not None else time.monotonic()
        ):
            logger.warning(
                "stopped %s readings of device class %r (%s): %d readings in %.0f s",
                kind,
                device_class,
                reason,
                episode.count,
                episode.last - episode.started,
            )

    async def _pause(self, paused: IntakePaused) -> None:
        """Stay away from the broker until the buffer can take readings again."""
        self._set_paused(True)
        cause = "disk_full" if paused.disk_full else "watermark"
        self._metrics.intake_pauses.labels(cause).inc()
        logger.warning(
            "%s (%s): intake paused and disconnected from the broker, which keeps QoS 1 "
            "messages in the session (QoS 0 messages sent meanwhile are lost)",
            "disk full" if paused.disk_full else "buffer at its high watermark",
            paused,
        )
        if paused.disk_full:
            # Free disk space has no event to wait on.
            while shutil.disk_usage(self._buffer.path).free < DISK_FULL_FREE_BYTES:  # noqa: ASYNC110
                await anyio.sleep(DISK_FULL_RECHECK_S)
        else:
            self._watermarks.rejecting = True
            while self._watermarks.update(self._buffer.totals().nbytes) is None:
                with anyio.move_on_after(1.0):
                    await self._space_freed().wait()
        self._set_paused(False)
        totals = self._buffer.totals()
        logger.info(
            "intake resumed: %d of %d budget bytes buffered, %d bytes free on disk",
            totals.nbytes,
            self._rules.budget_bytes,
            shutil.disk_usage(self._buffer.path).free,
        )

    def _admit(self, batch: list[_Pending]) -> tuple[Admitted, _Paused | None]:
        """Store the batch; at a pause, store the messages before the one that paused.

        Acknowledgements go out in order, so the messages before it can be committed and
        acknowledged, and the rest come again from the broker.
        """
        rules = self._rules
        items: list[tuple[str, bytes, Lane]] = []
        ends = []
        for pending in batch:
            decoded = pending.decoded
            if decoded.readings:
                lane = rules.lane(decoded.device_class)
                items.extend(
                    (fifo_name(r.device, lane.device_class), pack(r), lane)
                    for r in decoded.readings
                )
            ends.append(len(items))
        paused = None
        try:
            admitted = self._buffer.admit(items, rules) if items else Admitted()
        except CapacityError as exc:
            if exc.at_item is None:
                raise
            paused = _Paused(bisect.bisect_right(ends, exc.at_item), exc)
            # The same decisions again, up to the paused message: they cannot pause.
            admitted = self._buffer.admit(
                items[: ends[paused.at_message - 1]] if paused.at_message else [], rules
            )
            batch = batch[: paused.at_message]
        # Counted right after the commit, so a scrape sees the readings and the buffer together.
        self._metrics.accounting.committed(
            accepted=admitted.stored,
            invalid=self._count_invalid(batch),
            refused=admitted.refused,
            dropped=admitted.dropped,
        )
        self._metrics.observe_buffer(self._buffer.totals())
        return admitted, paused


def _log_connect_failure(exc: aiomqtt.MqttError) -> None:
    """One line for the first failure of a run of them, saying what the operator can fix."""
    tls_problem = describe_tls_failure(exc)
    if tls_problem is not None:
        logger.error(
            "cannot connect to the broker: %s (check [mqtt.tls] ca_file and that the broker's "
            "certificate names the configured host); retrying",
            tls_problem,
        )
    elif (
        isinstance(exc, aiomqtt.MqttCodeError)
        and getattr(exc.rc, "value", exc.rc) in REFUSED_CREDENTIALS
    ):
        logger.error(
            "the broker refused the gateway's credentials (%s); check [mqtt] username and "
            "password_file; retrying",
            exc,
        )
    else:
        logger.warning("broker connection lost or refused (%s); reconnecting", exc)
