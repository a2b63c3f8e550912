"""The broker's own counters ($SYS topics), exported as metrics.

Losses can happen before the gateway: a broker drops QoS 1 messages to a subscriber that falls
behind once its queue limit is reached. Mosquitto publishes its counters under `$SYS/broker/`
(retained, every `sys_interval` seconds); the gateway subscribes to the few that show such
losses and exposes them, so that an operator sees them beside the gateway's own counts.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from collections.abc import Iterator

    from prometheus_client.metrics_core import Metric

logger = logging.getLogger(__name__)

SYS_PREFIX = "$SYS/"
# topic -> (metric name, help, is a counter)
BROKER_TOPICS = {
    "$SYS/broker/clients/connected": (
        "gateway_broker_clients_connected",
        "Clients connected to the broker",
        False,
    ),
    "$SYS/broker/publish/messages/dropped": (
        "gateway_broker_publish_messages_dropped",
        "Messages the broker dropped (queue limits, clients gone): lost before the gateway",
        True,
    ),
    "$SYS/broker/publish/messages/received": (
        "gateway_broker_publish_messages_received",
        "PUBLISH messages the broker received",
        True,
    ),
    "$SYS/broker/store/messages/count": (
        "gateway_broker_stored_messages",
        "Messages the broker holds (retained and queued for sessions)",
        False,
    ),
    "$SYS/broker/store/messages/bytes": (
        "gateway_broker_stored_messages_bytes",
        "Bytes of the messages the broker holds",
        False,
    ),
}


class BrokerStats(Collector):
    """The last value of each broker counter; a Prometheus collector of them."""

    def __init__(self) -> None:
        """No value is known until the broker publishes one."""
        self._values: dict[str, float] = {}

    def update(self, topic: str, payload: bytes) -> None:
        """Take one $SYS message; unknown topics and unreadable values are ignored."""
        if topic not in BROKER_TOPICS:
            return
        try:
            value = float(payload.split()[0])
        except (ValueError, IndexError):
            logger.debug("broker statistic %s is not a number: %.50r", topic, payload)
            return
        if math.isfinite(value):
            self._values[topic] = value

    def collect(self) -> Iterator[Metric]:
        """One family per known broker counter."""
        for topic, value in self._values.items():
            name, help_text, is_counter = BROKER_TOPICS[topic]
            family = CounterMetricFamily if is_counter else GaugeMetricFamily
            yield family(name, help_text, value=value)
