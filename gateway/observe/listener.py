"""The HTTP listener's connections as metrics, read from its guard at each scrape.

A crowd at the listener shows here before it shows anywhere else: connections held near
`[metrics] max_connections` and a growing count of those the guard closed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from collections.abc import Iterator

    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric


class ListenerCounts(Protocol):
    """What the metrics read of the listener's connection guard."""

    max_connections: int
    evicted: int
    timed_out: int
    refused: int

    @property
    def open_connections(self) -> int:
        """Connections held now."""
        ...


class ListenerCollector(Collector):
    """`gateway_http_connections`, its cap and the connections closed by the guard."""

    def __init__(self, guard: ListenerCounts) -> None:
        """Read `guard` at each scrape."""
        self._guard = guard

    def collect(self) -> Iterator[Metric]:
        """The gauges and the counter, as the guard has them now."""
        yield GaugeMetricFamily(
            "gateway_http_connections",
            "HTTP connections the listener holds",
            value=self._guard.open_connections,
        )
        yield GaugeMetricFamily(
            "gateway_http_max_connections",
            "HTTP connections the listener holds at most ([metrics] max_connections, or less "
            "when the open-file limit leaves no room)",
            value=self._guard.max_connections,
        )
        closed = CounterMetricFamily(
            "gateway_http_connections_closed",
            "HTTP connections the listener closed unanswered: evicted (at the cap, the oldest "
            "that sent no request), header_timeout (no request headers in time), refused (at "
            "the cap with every connection answering)",
            labels=["reason"],
        )
        closed.add_metric(["evicted"], self._guard.evicted)
        closed.add_metric(["header_timeout"], self._guard.timed_out)
        closed.add_metric(["refused"], self._guard.refused)
        yield closed


def watch_listener(registry: CollectorRegistry, guard: ListenerCounts) -> ListenerCollector:
    """Export `guard`'s counts on `registry`; unregister the returned collector when done."""
    collector = ListenerCollector(guard)
    registry.register(collector)
    return collector
