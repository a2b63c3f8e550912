"""The metrics of each sink, labelled `sink`: one box may feed several databases at their own pace.

The unlabelled flush metrics (gateway/observe/metrics.py) add every sink's writes together and
take the worst sink's lag; these tell which sink is behind, failing or giving readings up.
A gateway with one `[influx]` has one sink, named "influx".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry


class SinkMetrics:
    """The `gateway_sink_*{sink}` families."""

    def __init__(self, registry: CollectorRegistry) -> None:
        """Register the families on `registry`."""
        r = registry
        self.written = Counter(
            "gateway_sink_points_written",
            "Points a sink's database confirmed",
            ["sink"],
            registry=r,
        )
        self.writes = Counter(
            "gateway_sink_writes",
            "Writes to a sink's database by result",
            ["sink", "result"],
            registry=r,
        )
        self.batch_size = Gauge(
            "gateway_sink_batch_size", "Batch size a sink's writes use now", ["sink"], registry=r
        )
        self.lag_seconds = Gauge(
            "gateway_sink_lag_seconds",
            "How long the oldest reading a sink has still to have has been buffered",
            ["sink"],
            registry=r,
        )
        self.failing_writes = Gauge(
            "gateway_sink_failing_writes",
            "Writes to a sink that failed in a row (0: its database takes them)",
            ["sink"],
            registry=r,
        )
        self.skipped = Counter(
            "gateway_sink_skipped",
            "Readings a sink gave up past its max_lag_s or max_share (the others still had them)",
            ["sink"],
            registry=r,
        )
        self.backlog = Gauge(
            "gateway_sink_backlog_readings",
            "Buffered readings a sink has still to have",
            ["sink"],
            registry=r,
        )
