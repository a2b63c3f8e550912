"""Ingest: MQTT messages -> decoded readings -> one LMDB group commit -> PUBACKs.

This is the only module that acknowledges MQTT messages, and it does so only after the readings of
those messages are committed (DESIGN invariant 1). A message that yields no valid reading is
acknowledged with its batch, after being counted as invalid. Acks go out in arrival order, as MQTT
requires. A message received but not committed when the connection or the process dies is never
acknowledged, so the broker delivers it again from the persistent session.

No message stops intake (DESIGN invariant 8): an unexpected exception while one message is
decoded, mapped, encoded or admitted makes that message invalid (`internal_error`), sampled and
acknowledged, and the rest of its group commit goes through. Failures of the buffer itself keep
their own handling (nothing is acknowledged). What no handler sees, a crash of the process,
is for the breaker (gateway/breaker.py), which ingest consults after an unclean stop.
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
from gateway.errors import CapacityError, DecodeError, GatewayError
from gateway.fifos import Admitted, fifo_name
from gateway.mqttclient import drain_acks, end_session, make_client, send_ack, take_queued
from gateway.record import pack
from gateway.rejects import Reject
from gateway.tlscontext import describe as describe_tls_failure

if TYPE_CHECKING:
    from collections.abc import Callable

    import paho.mqtt.client as mqtt

    from gateway.admission import Lane, Rules
    from gateway.breaker import Breaker
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
    # (FIFO, packed record, lane) of each valid reading, ready for the buffer.
    items: list[tuple[str, bytes, Lane]] | None = None


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
        breaker: Breaker | None = None,
        fault: Callable[[bytes], None] | None = None,
    ) -> None:
        """Wire the ingest loop; `run` starts it. `on_ready` follows each subscription.

        `breaker`: consulted after an unclean stop (gateway/breaker.py). `fault`: a hook called
        with each payload while it is taken, for the fault tests (gateway/faults.py).
        """
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
        self._breaker = breaker
        self._fault = fault
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
            breaker = self._breaker
            if (
                breaker is not None
                and breaker.careful
                and (not first.qos or breaker.end_careful_if(redelivered=first.dup))
            ):
                await self._commit_and_ack(client, [self._take_alone(first, breaker)])
                continue
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
        batch = [self._take(first)]
        count = len(batch[0].decoded.readings)
        while count < self._commit_max:
            queued = take_queued(client)
            if queued is None:
                break
            batch.append(self._take(queued))
            count += len(batch[-1].decoded.readings)
        self._metrics.messages.inc(len(batch))
        return batch

    def _take_alone(self, message: mqtt.MQTTMessage, breaker: Breaker) -> _Pending:
        """A message redelivered after an unclean stop: recorded first, or set aside as poison."""
        self._metrics.messages.inc()
        topic, payload = _raw(message)
        if not message.qos or breaker.take_alone(topic, payload):
            return self._take(message)
        self._metrics.poison_messages.inc()
        logger.error(
            "a message on topic %r was being taken both times the gateway died; set aside as "
            "poison in `gateway rejects` and acknowledged (%d bytes)",
            topic[:200],
            len(payload),
        )
        error = DecodeError("poison", "the gateway died twice while taking this message")
        # Written now, not with the rate-limited samples: this is the message's only record.
        self._rejects.add([Reject.of(topic, payload, error.reason, error.detail)])
        return _Pending(message.mid, message.qos, Decoded(errors=[error]))

    def _take(self, message: mqtt.MQTTMessage) -> _Pending:
        """Decode, map and encode one message; whatever it raises stays with it."""
        try:
            return self._take_unguarded(message)
        except Exception as exc:  # noqa: BLE001 - contained to this message (invariant 8)
            return _Pending(message.mid, message.qos, self._internal_error(exc), _raw(message))

    def _take_unguarded(self, message: mqtt.MQTTMessage) -> _Pending:
        try:
            topic = message.topic
        except UnicodeDecodeError:
            decoded = Decoded(errors=[DecodeError("not_utf8", "topic is not UTF-8")])
            return _Pending(message.mid, message.qos, decoded)
        if topic.startswith(SYS_PREFIX):
            # The broker's own counters (QoS 0): metrics, not readings.
            self._broker_stats.update(topic, bytes(message.payload))
            return _Pending(message.mid, 0, Decoded())
        payload = bytes(message.payload)
        if self._fault is not None:
            self._fault(payload)
        decoded = self._decoder.decode(topic, payload, time.time_ns())
        pending = _Pending(message.mid, message.qos, decoded, (topic, payload))
        if decoded.readings:
            lane = self._rules.lane(decoded.device_class)
            name = lane.device_class
            pending.items = [(fifo_name(r.device, name), pack(r), lane) for r in decoded.readings]
        return pending

    def _internal_error(self, exc: Exception, readings: int = 1) -> Decoded:
        """What a message that raised `exc` counts as: `readings` invalid readings."""
        # One line per exception type and repeat window ([log] repeat_window_s), with the
        # traceback: a bug to report, and the message's readings are lost to it.
        logger.error(
            "unexpected %s while taking a message; counted invalid (internal_error) and "
            "acknowledged, sample in `gateway rejects`",
            type(exc).__name__,
            exc_info=exc,
        )
        error = DecodeError("internal_error", f"{type(exc).__name__}: {exc}")
        return Decoded(errors=[error] * max(readings, 1))

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

    def _admit_one_by_one(
        self, batch: list[_Pending], exc: Exception
    ) -> tuple[Admitted, _Paused | None]:
        """Admit each message in its own transaction; one that raises again is invalid.

        A failed transaction leaves nothing behind (LMDB aborts it and the buffer adopts its
        accounting only after a commit), so the messages can be tried again one by one.
        """
        logger.warning(
            "unexpected %s while admitting a group commit; admitting its messages one by one",
            type(exc).__name__,
        )
        total = Admitted()
        for index, pending in enumerate(batch):
            if not pending.items:
                continue
            try:
                one = self._buffer.admit(pending.items, self._rules)
            except CapacityError as capacity:
                if capacity.at_item is None:
                    raise
                return total, _Paused(index, capacity)
            except GatewayError:
                raise
            except Exception as again:  # noqa: BLE001 - contained to this message
                # Its readings are counted invalid, each, as they are not stored.
                pending.decoded = self._internal_error(again, len(pending.decoded.readings))
                pending.items = None
                continue
            total.stored += one.stored
            total.refused.update(one.refused)
            total.dropped.update(one.dropped)
            total.placed.extend(one.placed)
        return total, None

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
            if pending.items:
                items.extend(pending.items)
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
        except GatewayError:
            raise  # the buffer failed: nothing is acknowledged
        except Exception as exc:  # noqa: BLE001 - a bug in admission: find the message
            admitted, paused = self._admit_one_by_one(batch, exc)
            if paused is not None:
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


def _raw(message: mqtt.MQTTMessage) -> tuple[str, bytes]:
    """Topic and payload for the reject log and the breaker, whatever the topic's bytes."""
    try:
        topic = message.topic
    except UnicodeDecodeError:
        topic = "(topic not UTF-8)"
    return topic, bytes(message.payload)


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
