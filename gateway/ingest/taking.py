"""Taking one MQTT message: decode, map and encode it, with whatever it raises contained.

The result is a `Pending` message: its packet id, its valid readings ready for the buffer, and
one error per invalid reading. Nothing a message holds, and no bug it meets here, escapes: an
unexpected exception makes the message invalid (`internal_error`), so it is counted, sampled
and acknowledged like any other invalid input (DESIGN invariant 8). After an unclean stop a
redelivered message is recorded by the breaker before it is taken (gateway/ingest/breaker.py).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.buffer.core.ledger import fifo_name
from gateway.buffer.rejects import Reject
from gateway.errors import DecodeError
from gateway.ingest.core.readings import Decoded
from gateway.observe.brokerstats import SYS_PREFIX
from gateway.points.record import pack
from gateway.sparkplug.core.host import says_offline

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway.buffer.core.admission import Lane, Rules
    from gateway.buffer.rejects import RejectLog
    from gateway.ingest.breaker import Breaker
    from gateway.ingest.core.deadband import Deadbands, Mark
    from gateway.ingest.core.decode import Decoder
    from gateway.ingest.core.packets import Incoming
    from gateway.ingest.redelivery import Redelivery
    from gateway.observe.brokerstats import BrokerStats
    from gateway.observe.metrics import Metrics
    from gateway.points.model import Reading
    from gateway.sparkplug.core.session import Sessions

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Pending:
    """A message taken and not yet committed."""

    mid: int
    qos: int
    decoded: Decoded
    # (topic, payload), for the reject log.
    raw: tuple[str, bytes] | None = None
    # (FIFO, packed record, lane) of each valid reading, ready for the buffer.
    items: list[tuple[str, bytes, Lane]] | None = None
    # Our own Sparkplug host STATE said offline while we are connected: say online again.
    announce: bool = False
    # Readings within their deadband: acknowledged with the message, counted, not stored; and
    # the kept readings' marks, which become references once they are committed.
    suppressed: int = 0
    marks: list[Mark] | None = None


class Taker:
    """Takes messages under the current admission rules; see the module docstring."""

    def __init__(
        self,
        *,
        decoder: Decoder,
        rules: Rules,
        metrics: Metrics,
        broker_stats: BrokerStats,
        rejects: RejectLog,
        fault: Callable[[bytes], None] | None,
        host_topic: str | None = None,
        deadbands: Deadbands | None = None,
        redelivery: Redelivery | None = None,
    ) -> None:
        """`fault`: a hook called with each payload, for the fault tests (ingest/faults.py).

        `host_topic`: the gateway's own Sparkplug B STATE topic, when it is a host application.
        `deadbands`: report by exception (gateway/ingest/core/deadband.py), settled by the
        committer. `redelivery`: recognises redelivered readings the buffer holds
        (gateway/ingest/redelivery.py).
        """
        self.redelivery = redelivery
        self._host_topic = host_topic
        self.deadbands = deadbands
        self.rules = rules
        self._decoder = decoder
        self._metrics = metrics
        self._broker_stats = broker_stats
        self._rejects = rejects
        self._fault = fault

    @property
    def sparkplug_state(self) -> Sessions | None:
        """The state of Sparkplug B edge nodes, when a subscription reads them."""
        reader = self._decoder.sparkplug
        return reader.sessions if reader is not None else None

    def new_connection(self) -> None:
        """A new broker connection: Sparkplug B sequence numbers start over.

        And what the connection before it committed last may come again.
        """
        if self._decoder.sparkplug is not None:
            self._decoder.sparkplug.sessions.forget_sequences()
        if self.redelivery is not None:
            self.redelivery.connection_changed()

    def connection_ended(self) -> None:
        """The broker connection ended: what it committed last may come again."""
        if self.redelivery is not None:
            self.redelivery.connection_changed()

    def take(self, message: Incoming) -> Pending:
        """Decode, map and encode one message; whatever it raises stays with it."""
        try:
            return self._take_unguarded(message)
        except Exception as exc:  # noqa: BLE001 - contained to this message (invariant 8)
            return Pending(message.mid, message.qos, internal_error(exc), raw_message(message))

    def _take_unguarded(self, message: Incoming) -> Pending:
        redelivery = self.redelivery
        if redelivery is not None and not message.dup:
            redelivery.fresh()
        try:
            topic = message.topic
        except UnicodeDecodeError:
            decoded = Decoded(errors=[DecodeError("not_utf8", "topic is not UTF-8")])
            return Pending(message.mid, message.qos, decoded)
        if topic.startswith(SYS_PREFIX):
            # The broker's own counters (QoS 0): metrics, not readings.
            self._broker_stats.update(topic, bytes(message.payload))
            return Pending(message.mid, 0, Decoded())
        if topic == self._host_topic:
            offline = says_offline(bytes(message.payload))
            return Pending(message.mid, message.qos, Decoded(), announce=offline)
        payload = bytes(message.payload)
        if self._fault is not None:
            self._fault(payload)
        decoded = self._decoder.decode(topic, payload, time.time_ns(), dup=message.dup)
        pending = Pending(message.mid, message.qos, decoded, (topic, payload))
        readings = decoded.readings
        if readings:
            lane = self.rules.lane(decoded.device_class)
            # One topic, one device: every reading of a message goes to the same FIFO.
            fifo = fifo_name(readings[0].device, lane.device_class)
            records = None
            if redelivery is not None and message.dup and message.qos:
                readings, records = _without_copies(redelivery, readings)
                pending.suppressed = len(decoded.readings) - len(readings)
            deadbands = self.deadbands
            if deadbands is None or deadbands.rule_for(decoded.device_class) is None:
                packed = records if records is not None else map(pack, readings)
                pending.items = [(fifo, p, lane) for p in packed]
                return pending
            judged = deadbands.judge(decoded.device_class, readings)
            # Packed only when kept, unless packed already to be compared.
            pending.items = [
                (fifo, records[i] if records is not None else pack(r), lane)
                for i, (r, j) in enumerate(zip(readings, judged, strict=True))
                if j.keep
            ]
            pending.suppressed += len(readings) - len(pending.items)
            pending.marks = [j.mark for j in judged if j.mark is not None]
            # Last: a message that raised before here is invalid and must stand for nothing.
            deadbands.stage(pending.marks)
        return pending

    def take_alone(self, message: Incoming, breaker: Breaker) -> Pending:
        """A message redelivered after an unclean stop: recorded first, or set aside as poison."""
        self._metrics.messages.inc()
        topic, payload = raw_message(message)
        if not message.qos or breaker.take_alone(topic, payload):
            return self.take(message)
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
        return Pending(message.mid, message.qos, Decoded(errors=[error]))


def _without_copies(
    redelivery: Redelivery, readings: list[Reading]
) -> tuple[list[Reading], list[bytes]]:
    """A redelivered message's readings that the buffer does not hold yet, and their records."""
    records = [pack(r) for r in readings]
    known = redelivery.known(records)
    if not all(known):
        # The broker sends again in its order, which was the order of our commits: the
        # copies before this one came (gateway/ingest/redelivery.py).
        redelivery.not_held()
    if not any(known):
        return readings, records
    return (
        [r for r, k in zip(readings, known, strict=True) if not k],
        [p for p, k in zip(records, known, strict=True) if not k],
    )


def internal_error(exc: Exception, readings: int = 1) -> Decoded:
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


def raw_message(message: Incoming) -> tuple[str, bytes]:
    """Topic and payload for the reject log and the breaker, whatever the topic's bytes."""
    try:
        topic = message.topic
    except UnicodeDecodeError:
        topic = "(topic not UTF-8)"
    return topic, bytes(message.payload)
