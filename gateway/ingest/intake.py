"""Intake: the broker connection and the consume loop that forms group commits.

Connects (and reconnects forever, with backoff), subscribes, waits for a message, lets the
queue fill until it holds a commit's target or the commit window is over, and hands the batch to
the committer (gateway/ingest/commit.py),
which stores and then acknowledges it. A message received but not committed when the connection
or the process dies is never acknowledged, so the broker delivers it again from the persistent
session. After an unclean stop, redelivered messages are taken one at a time (gateway/ingest/
breaker.py). When the buffer is too full, intake leaves the broker until it can take readings:
until the cause of the refusal is gone, as gateway/ingest/core/pausing.py decides.
"""

from __future__ import annotations

import logging
import random
import shutil
import time
from typing import TYPE_CHECKING, NoReturn

import aiomqtt
import anyio

from gateway import backoff
from gateway.buffer.capacity import DISK_FULL_FREE_BYTES
from gateway.errors import CapacityError
from gateway.ingest.commit import Committer, IntakePaused
from gateway.ingest.core.deadband import Deadbands
from gateway.ingest.core.pausing import Cause, Pauses
from gateway.ingest.mqtt import Connection, end_session
from gateway.ingest.redelivery import Redelivery
from gateway.ingest.taking import Taker
from gateway.observe.brokerstats import BROKER_TOPICS
from gateway.sparkplug.core.host import HostState, state_topic
from gateway.tls import describe as describe_tls_failure

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway.buffer.core.admission import Rules
    from gateway.buffer.rejects import RejectLog
    from gateway.buffer.store import Buffer
    from gateway.config.mqtt import MqttSettings
    from gateway.ingest.breaker import Breaker
    from gateway.ingest.core.decode import Decoder
    from gateway.ingest.core.packets import Incoming
    from gateway.ingest.taking import Pending
    from gateway.observe.brokerstats import BrokerStats
    from gateway.observe.health import Health
    from gateway.observe.metrics import Metrics
    from gateway.replication.gate import AckGate

logger = logging.getLogger(__name__)

# First reconnect delay; doubles up to `reconnect_max_s`, with full jitter.
RECONNECT_INITIAL_S = 0.5
# CONNACK reason codes for a bad login: MQTT 3.1.1 (4, 5) and MQTT 5 (134, 135).
REFUSED_CREDENTIALS = frozenset({4, 5, 134, 135})
# What each cause of a pause is, in its log line.
PAUSED_BY = {
    Cause.WATERMARK: "buffer at its high watermark",
    Cause.DISK_BUDGET: "buffer at its disk budget (page guard)",
    Cause.DISK_FULL: "disk full",
}
# How often a filling commit window looks at the queue.
WINDOW_POLL_S = 0.005


class Ingest:
    """Subscribes, decodes, group-commits and acknowledges; reconnects forever."""

    def __init__(
        self,
        *,
        settings: MqttSettings,
        commit_max_readings: int,
        commit_window_s: float,
        buffer: Buffer,
        commit_target_readings: int | None = None,
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
        sparkplug_host_id: str | None = None,
        gate: AckGate | None = None,
    ) -> None:
        """Wire the ingest loop; `run` starts it. `on_ready` follows each subscription.

        `breaker`: consulted after an unclean stop (gateway/ingest/breaker.py). `fault`: a hook
        called with each payload while it is taken, for the fault tests (ingest/faults.py).
        `sparkplug_host_id`: announce the gateway as that Sparkplug B host application.
        `gate`: a replicating primary's acks wait there for the standby (gateway/replication).
        """
        self._host_id = sparkplug_host_id
        self._settings = settings
        self._commit_max = commit_max_readings
        self._commit_target = min(
            commit_target_readings or commit_max_readings, commit_max_readings
        )
        self._commit_window_s = commit_window_s
        self._buffer = buffer
        self._metrics = metrics
        self._space_freed = space_freed
        self._rules = rules
        self._pauses = Pauses()
        self._health = health
        self._on_ready = on_ready
        self._breaker = breaker
        deadbands = Deadbands.of(settings.subscriptions)
        # Only when a class has one: the others take no detour.
        self.deadbands = deadbands if any(s.deadband for s in settings.subscriptions) else None
        self.taker = Taker(
            decoder=decoder,
            rules=rules,
            metrics=metrics,
            broker_stats=broker_stats,
            rejects=rejects,
            fault=fault,
            host_topic=state_topic(sparkplug_host_id) if sparkplug_host_id else None,
            deadbands=self.deadbands,
            redelivery=Redelivery(buffer),
        )
        self.committer = Committer(
            buffer=buffer,
            rules=rules,
            metrics=metrics,
            rejects=rejects,
            on_commit=on_commit,
            on_drop=on_drop,
            deadbands=self.deadbands,
            gate=gate,
        )
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
                host_state = None
                if self._host_id is not None and retire_quiet_s is None:
                    host_state = HostState.of(self._host_id, time.time_ns() // 1_000_000)
                async with Connection(self._settings, host_state) as connection:
                    self.taker.new_connection()
                    if retire_quiet_s is None:
                        await self._subscribe(connection.client)
                        connection.announce()
                    else:
                        await connection.client.unsubscribe(self._filters())
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
                            await self._consume(connection)
                        else:
                            await self._consume_until_quiet(connection, retire_quiet_s)
                    finally:
                        with anyio.CancelScope(shield=True):
                            await connection.leave()
                        self.taker.connection_ended()
                        self.committer.connection_ended()
            except IntakePaused as paused:
                self._set_connected(False)
                await self._pause(paused)
            except aiomqtt.MqttError as exc:
                self._set_connected(False)
                failures += 1
                if failures == 1:
                    _log_connect_failure(exc, f"{self._settings.host}:{self._settings.port}")
                await anyio.sleep(
                    backoff.delay_s(
                        failures,
                        RECONNECT_INITIAL_S,
                        self._settings.reconnect_max_s,
                        random.uniform,
                    )
                )
            else:
                # Only a retiring session's consumption returns.
                await end_session(self._settings)
                self._set_connected(False)
                return

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        s = self._settings
        for sub in s.subscriptions:
            shared = s.subscribe_filter(sub.mqtt_filter)
            await client.subscribe(shared, qos=min(sub.qos, 1))
        if s.broker_stats:
            await client.subscribe([(topic, 0) for topic in BROKER_TOPICS])
        if self._host_id is not None:
            # Its own STATE, to answer an offline message while up (gateway/sparkplug/core/host.py).
            await client.subscribe(state_topic(self._host_id), qos=1)

    def _filters(self) -> list[str]:
        """Every filter a session of this client id may hold, shared or not."""
        s = self._settings
        plain = [sub.mqtt_filter for sub in s.subscriptions]
        shared = [s.subscribe_filter(f) for f in plain] if s.share_group else []
        host = [state_topic(self._host_id)] if self._host_id is not None else []
        return [*plain, *shared, *BROKER_TOPICS, *host]

    async def _consume(self, connection: Connection) -> NoReturn:
        """Group commits: wait for a message, let the window fill the inbox, drain, commit, ack.

        Sleeping through the window (instead of committing whenever the inbox is empty) is
        what makes batches large.
        """
        while True:
            first = await connection.next_message()
            # From its receipt: one that waited behind the last commit closes its window sooner.
            started = first.received_at
            breaker = self._breaker
            if (
                breaker is not None
                and breaker.careful
                and (not first.qos or breaker.end_careful_if(redelivered=first.dup))
            ):
                try:
                    alone = self.taker.take_alone(first, breaker)
                except CapacityError as exc:
                    raise IntakePaused.of(exc) from exc
                await self.committer.commit_and_ack(connection, [alone])
                self._committed()
                continue
            await self._let_queue_fill(connection, started)
            await self.committer.commit_and_ack(connection, self._take_batch(connection, first))
            self._committed()
            # A turn of the loop even when the next message is waiting: a backlog the broker
            # hands over at once is taken a group commit at a time, and PUBACKs, writes and
            # health answers go out between them rather than after the whole backlog. Not in
            # careful mode above: there a turn per message stretched the redelivered burst
            # under load until kill -9 after kill -9 landed in it, each setting aside a sound
            # message as poison.
            self._metrics.ack_delay_seconds.observe(time.monotonic() - started)
            await anyio.lowlevel.checkpoint()

    async def _let_queue_fill(self, connection: Connection, started: float) -> None:
        """Wait until a commit's target is read behind the first message or the window ends.

        Polled, with the socket read at each poll rather than as bytes arrive: every commit
        costs the disk the same pages whatever it holds, so at a high rate the target closes
        commits early and at a low rate the window bounds the PUBACK delay.
        """
        inbox = connection.inbox
        deadline = started + self._commit_window_s
        want = self._commit_target - 1  # behind the first
        connection.hold_reads()
        try:
            while len(inbox) < want:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                await anyio.sleep(min(left, WINDOW_POLL_S))
                # Only up to the target: what is read waits unacknowledged until its commit.
                connection.read_held(want)
        finally:
            connection.release_reads()

    async def _consume_until_quiet(self, connection: Connection, quiet_s: float) -> None:
        """Commit what arrives until nothing came for `quiet_s`."""
        last = time.monotonic()
        while time.monotonic() - last < quiet_s:
            await anyio.sleep(self._commit_window_s)
            first = connection.take_queued()
            if first is not None:
                last = time.monotonic()
                await self.committer.commit_and_ack(connection, self._take_batch(connection, first))
                self._committed()

    def _take_batch(self, connection: Connection, first: Incoming) -> list[Pending]:
        """`first` and what is queued behind it, up to a group commit's worth of readings.

        A message without readings (invalid, the broker's counters) counts as one: taking it
        costs the loop as much, and a backlog of 20,000 invalid messages was otherwise one
        batch that held the loop for 1.3 s.
        """
        take = self.taker.take
        batch = [take(first)]
        count = max(1, len(batch[0].decoded.readings))
        while count < self._commit_max:
            queued = connection.take_queued()
            if queued is None:
                break
            batch.append(take(queued))
            count += max(1, len(batch[-1].decoded.readings))
        self._metrics.messages.inc(len(batch))
        return batch

    def reconfigure(self, rules: Rules) -> None:
        """Take new admission rules (SIGHUP); they apply from the next group commit."""
        self._rules = self.taker.rules = self.committer.rules = rules

    def _set_connected(self, connected: bool) -> None:
        self._metrics.mqtt_connected.set(int(connected))
        self._health.connected = connected

    def _set_paused(self, paused: bool) -> None:
        self._metrics.intake_paused.set(int(paused))
        self._health.paused = paused

    def housekeeping(self) -> None:
        """Log the end of refusal and drop episodes that went quiet while no message came."""
        self.committer.housekeeping()

    async def _pause(self, paused: IntakePaused) -> None:
        """Stay away from the broker until the cause of the refusal is gone.

        Woken by each delivery (a delivery frees room) and by a timer for what no event
        tells (the disk's free space); gateway/ingest/core/pausing.py decides when to go back.
        One WARNING per episode: a refusal right after resuming extends the episode.
        """
        buffer = self._buffer
        pause = self._pauses.begin(paused.cause, buffer.totals().nbytes, time.monotonic())
        self._set_paused(True)
        self._metrics.intake_pauses.labels(pause.cause.value).inc()
        if pause.is_first:
            logger.warning(
                "%s (%s): intake paused and disconnected from the broker, which keeps QoS 1 "
                "messages in the session (QoS 0 messages sent meanwhile are lost)",
                PAUSED_BY[pause.cause],
                paused,
            )
        else:
            logger.debug(
                "refused again (%s); intake paused for at least %.0f s", paused, pause.min_s
            )
        while True:
            free = shutil.disk_usage(buffer.path).free if pause.cause is Cause.DISK_FULL else 0
            wait_s = pause.wait_s(
                fill_bytes=buffer.totals().nbytes,
                low_bytes=self._rules.low_bytes,
                free_disk_bytes=free,
                min_free_bytes=DISK_FULL_FREE_BYTES,
                now=time.monotonic(),
            )
            if not wait_s:
                break
            with anyio.move_on_after(wait_s):
                await self._space_freed().wait()
        self._set_paused(False)

    def _committed(self) -> None:
        """A group commit went through: a pause episode, if one ran, is over."""
        if not self._pauses.running:
            return
        episode = self._pauses.committed(time.monotonic())
        if episode is None:
            return
        totals = self._buffer.totals()
        logger.info(
            "intake resumed after %d pauses in %.0f s (%s): %d of %d budget bytes buffered, "
            "%d bytes free on disk",
            len(episode.causes),
            episode.ended - episode.started,
            ", ".join(sorted({cause.value for cause in episode.causes})),
            totals.nbytes,
            self._rules.budget_bytes,
            shutil.disk_usage(self._buffer.path).free,
        )


def _log_connect_failure(exc: aiomqtt.MqttError, where: str) -> None:
    """One line for the first failure of a run of them, saying what the operator can fix.

    `where`: the broker's host:port, which every line names.
    """
    tls_problem = describe_tls_failure(exc)
    facts = {"broker": where, "error": str(exc)}
    if tls_problem is not None:
        logger.error(
            "cannot connect to the broker at %s: %s (check [mqtt.tls] ca_file and that the "
            "broker's certificate names the configured host); retrying",
            where,
            tls_problem,
            extra=facts,
        )
    elif (
        isinstance(exc, aiomqtt.MqttCodeError)
        and getattr(exc.rc, "value", exc.rc) in REFUSED_CREDENTIALS
    ):
        logger.error(
            "the broker at %s refused the gateway's credentials (%s); check [mqtt] username "
            "and password_file; retrying",
            where,
            exc,
            extra=facts,
        )
    else:
        logger.warning(
            "broker connection to %s lost or refused (%s); reconnecting", where, exc, extra=facts
        )
