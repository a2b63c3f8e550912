"""Every Prometheus metric of the gateway, defined in one place; no per-device labels.

`gateway_readings_total{outcome}`, `gateway_buffer_readings` (raw readings only), the refusals
and drops by reason and device class, the suppressed and summarised readings by device class and
the summaries by outcome and step come from one `Accounting` snapshot per scrape, so they
satisfy its identities exactly (see gateway/observe/accounting.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway import __version__
from gateway.observe.accounting import SUMMARY_OUTCOMES, Accounting, step_label
from gateway.observe.brokerstats import BrokerStats
from gateway.observe.diskwear import DiskWear, DiskWearCollector
from gateway.observe.replicationmetrics import ReplicationMetrics
from gateway.observe.sinkmetrics import SinkMetrics

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from prometheus_client.metrics_core import Metric

    from gateway.observe.accounting import Snapshot


# `*_created` series double the exposition and no dashboard or alert uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]

WRITE_RESULTS = ("ok", "retry", "rejected", "partial", "auth")
PAUSE_CAUSES = ("watermark", "disk_budget", "disk_full")
# From a timer's resolution (1 ms) to past the systemd watchdog (30 s); 0.1 s is the most any
# seal or scan may hold the loop, 5 s the default limit of /healthz.
LOOP_LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 30, 60)


class BufferTotals(Protocol):
    """What the metrics read of the buffer's totals (the buffer's `Totals` has them)."""

    @property
    def readings(self) -> int:
        """Buffered readings."""

    @property
    def nbytes(self) -> int:
        """Their bytes."""

    @property
    def devices(self) -> int:
        """Devices with buffered readings."""


class SparkplugCounts(Protocol):
    """What the metrics read of the Sparkplug B state (its `Sessions` has them)."""

    @property
    def refused(self) -> Mapping[str, int]:
        """Messages refused, by reason."""

    @property
    def alias_changes(self) -> int:
        """Metric definitions a BIRTH changed while its scope was online."""


class Metrics:
    """The gateway's metrics on a registry of their own (tests pass a fresh one)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        """Create every metric, with every label value present from the start."""
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.accounting = Accounting()
        # The compact policy's steps in seconds, finest first: they name the summary levels.
        self.summary_steps_s: tuple[int, ...] = ()
        self._budget_bytes = 0
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.broker = BrokerStats()
        r.register(self.broker)
        r.register(_AccountingCollector(self))
        self.disk = DiskWear()
        r.register(DiskWearCollector(self.disk, self.accepted))
        # Which version runs, for dashboards and upgrades: gateway_build_info{version} 1.
        Info("gateway_build", "The gateway's version", registry=r).info({"version": __version__})
        self.invalid = Counter(
            "gateway_readings_invalid_total",
            "Readings refused as invalid, by reason",
            ["reason"],
            registry=r,
        )
        # Present at 0 from the start, so that their alerts see the first increase.
        for reason in ("internal_error", "poison"):
            self.invalid.labels(reason)
        self.messages = Counter("gateway_mqtt_messages_total", "MQTT messages received", registry=r)
        self.mqtt_speedup = Gauge(
            "gateway_mqtt_speedup_active",
            "1 while a speed-up of the MQTT client is in place; 0 after paho changed",
            ["speedup"],
            registry=r,
        )
        self.poison_messages = Counter(
            "gateway_poison_messages_total",
            "Messages set aside after the gateway died twice while taking them",
            registry=r,
        )
        self.buffer_bytes = Gauge("gateway_buffer_bytes", "Bytes of buffered readings", registry=r)
        self.damaged_chunks = Counter(
            "gateway_buffer_damaged_chunks",
            "Buffer chunks that failed their checksum and were set aside (their readings are "
            "counted dropped, reason damaged)",
            registry=r,
        )
        self.sparkplug_online = Gauge(
            "gateway_sparkplug_online",
            "Sparkplug B edge nodes and devices: 1 online (BIRTH seen), 0 offline (DEATH)",
            ["group", "edge_node", "device"],
            registry=r,
        )
        self.sparkplug_rebirths = Counter(
            "gateway_sparkplug_rebirth_requests_total",
            "Rebirth requests (NCMD) sent to Sparkplug B edge nodes",
            registry=r,
        )
        self.dead_letters = Gauge(
            "gateway_dead_letters",
            "Points the database refused, held in the dead-letter store",
            registry=r,
        )
        self.buffer_devices = Gauge(
            "gateway_buffer_devices", "Devices with buffered readings", registry=r
        )
        self.buffer_capacity = Gauge(
            "gateway_buffer_capacity_bytes",
            "Disk budget of the buffer: its LMDB file never grows past it",
            registry=r,
        )
        self.buffer_budget = Gauge(
            "gateway_buffer_budget_bytes",
            "Bytes of readings the buffer may hold (the fill ratio's denominator)",
            registry=r,
        )
        self.buffer_fill = Gauge(
            "gateway_buffer_fill_ratio", "Buffered bytes over the readings budget", registry=r
        )
        self.commit_readings = Histogram(
            "gateway_commit_readings",
            "Readings per group commit",
            registry=r,
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000),
        )
        self.commit_seconds = Histogram(
            "gateway_commit_duration_seconds",
            "LMDB group commit latency",
            registry=r,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5),
        )
        self.ack_delay_seconds = Histogram(
            "gateway_ack_delay_seconds",
            "Receipt to PUBACK of the oldest message of each group commit (an upper bound "
            "for every message of it)",
            registry=r,
            buckets=(
                0.001,
                0.002,
                0.005,
                0.0075,
                0.01,
                0.015,
                0.02,
                0.03,
                0.035,
                0.04,
                0.045,
                0.05,
                0.06,
                0.075,
                0.1,
                0.25,
                1,
            ),
        )
        self.write_seconds = Histogram(
            "gateway_write_duration_seconds",
            "Database write latency",
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.writes = Counter(
            "gateway_writes_total", "Database writes by result", ["result"], registry=r
        )
        self.batch_points = Histogram(
            "gateway_write_points",
            "Points per database write",
            registry=r,
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
        )
        self.batch_size = Gauge("gateway_batch_size", "Batch size in use", registry=r)
        self.sent_bytes = Counter(
            "gateway_sink_sent_bytes",
            "Bytes of write request bodies sent to the database, after compression",
            registry=r,
        )
        self.probes = Counter(
            "gateway_sink_probes",
            "Readiness pings of an unreachable database, by result",
            ["result"],
            registry=r,
        )
        self.sinks, self.replication = SinkMetrics(r), ReplicationMetrics(r)
        self.writes_in_flight = Gauge(
            "gateway_writes_in_flight", "Database writes under way", registry=r
        )
        self.lag_seconds = Gauge(
            "gateway_buffer_lag_seconds",
            "How long the oldest undelivered reading has been buffered (the write-behind lag)",
            registry=r,
        )
        self.live_lag_seconds = Gauge(
            "gateway_buffer_live_lag_seconds",
            "The lag of the readings accepted since a live-first drain began (all, without one)",
            registry=r,
        )
        self.backlog_lag_seconds = Gauge(
            "gateway_buffer_backlog_lag_seconds",
            "The lag of the backlog a live-first drain sends behind the live readings",
            registry=r,
        )
        self.intake_paused = Gauge(
            "gateway_intake_paused", "1 while intake is paused at the high watermark", registry=r
        )
        self.intake_pauses = Counter(
            "gateway_intake_pauses_total",
            "Times intake paused: at the high watermark (policy reject), at the disk budget "
            "(page guard, full map) or with the disk full",
            ["cause"],
            registry=r,
        )
        self.loop_lag = Histogram(
            "gateway_event_loop_lag_seconds",
            "How late a task sleeping a short interval woke: the time the event loop was held "
            "by something else (no PUBACK, write or health answer went out meanwhile)",
            registry=r,
            buckets=LOOP_LAG_BUCKETS,
        )
        self.loop_lag_max = Gauge(
            "gateway_event_loop_lag_max_seconds",
            "The largest event-loop lag of the last minute (what /healthz judges)",
            registry=r,
        )
        self.mqtt_connected = Gauge(
            "gateway_mqtt_connected", "1 while connected to the broker", registry=r
        )
        self.mqtt_connects = Counter(
            "gateway_mqtt_connects_total", "Successful broker connects", registry=r
        )
        for result in WRITE_RESULTS:
            self.writes.labels(result)
        for cause in PAUSE_CAUSES:
            self.intake_pauses.labels(cause)

    def accepted(self) -> int:
        """Readings accepted into the buffer since start."""
        return self.accounting.snapshot().outcomes["accepted"]

    def sparkplug_state(self, group: str, edge_node: str, device: str | None, online: bool) -> None:
        """Show a Sparkplug B edge node or device as online or offline."""
        self.sparkplug_online.labels(group, edge_node, device or "").set(int(online))

    def watch_sparkplug(self, sessions: SparkplugCounts) -> None:
        """Export the refusals and redefinitions the Sparkplug B state counts, at each scrape."""
        self.registry.register(_SparkplugCollector(sessions))

    def observe_buffer(self, totals: BufferTotals) -> None:
        """Update the buffer gauges from its accounting."""
        self.buffer_bytes.set(totals.nbytes)
        self.buffer_devices.set(totals.devices)
        if self._budget_bytes:
            self.buffer_fill.set(totals.nbytes / self._budget_bytes)

    def buffer_damaged(
        self,
        chunks: int,
        lost: Mapping[tuple[str, str], int],
        summaries_lost: Mapping[int, int] | None = None,
    ) -> None:
        """Damaged chunks were set aside, with the readings they held by (reason, class).

        `summaries_lost`: the summaries they held, by level.
        """
        self.damaged_chunks.inc(chunks)
        self.accounting.damaged(lost, summaries_lost)

    def summaries_damaged(self, lost: Mapping[int, int]) -> None:
        """Summaries were lost with a damaged chunk (counted with `buffer_damaged`), by level."""
        self.accounting.damaged({}, lost)

    def set_buffer_limits(self, capacity_bytes: int, budget_bytes: int) -> None:
        """Record the buffer's disk budget and readings budget."""
        self.buffer_capacity.set(capacity_bytes)
        self.buffer_budget.set(budget_bytes)
        self._budget_bytes = budget_bytes


class _AccountingCollector(Collector):
    """Exports one consistent snapshot of the accounting per scrape."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        snapshot = self._metrics.accounting.snapshot()
        readings = CounterMetricFamily(
            "gateway_readings", "Readings by outcome", labels=["outcome"]
        )
        for outcome, count in snapshot.outcomes.items():
            readings.add_metric([outcome], count)
        yield readings
        yield GaugeMetricFamily(
            "gateway_buffer_readings",
            "Readings in the buffer (raw readings; summaries are gateway_buffer_summaries)",
            value=snapshot.buffered,
        )
        for kind, counts, help_text in (
            ("refused", snapshot.refused, "Valid readings acknowledged but not stored"),
            ("dropped", snapshot.dropped, "Buffered readings dropped before delivery"),
        ):
            family = CounterMetricFamily(
                f"gateway_readings_{kind}",
                f"{help_text}, by admission reason and device class",
                labels=["reason", "device_class"],
            )
            for (reason, device_class), count in sorted(counts.items()):
                family.add_metric([reason, device_class], count)
            yield family
        for kind, by_class, help_text in (
            (
                "suppressed",
                snapshot.suppressed,
                "Readings within their deadband, acknowledged and not stored",
            ),
            (
                "summarised",
                snapshot.summarised,
                "Buffered readings replaced by summaries under the compact policy",
            ),
        ):
            family = CounterMetricFamily(
                f"gateway_readings_{kind}", f"{help_text}, by device class", labels=["device_class"]
            )
            for device_class, count in sorted(by_class.items()):
                family.add_metric([device_class], count)
            yield family
        yield from self._summaries(snapshot)

    def _summaries(self, snapshot: Snapshot) -> Iterator[Metric]:
        steps_s = self._metrics.summary_steps_s
        levels = range(1, len(steps_s) + 1)
        made = CounterMetricFamily(
            "gateway_summaries",
            "Summaries made by the compact policy, by step (each stands for a series' readings "
            "or finer summaries over one window)",
            labels=["step"],
        )
        # Every configured step present from the start, so that rate() sees the first ones.
        for level in sorted({*levels, *snapshot.summaries["made"]}):
            made.add_metric([step_label(level, steps_s)], snapshot.summaries["made"].get(level, 0))
        yield made
        points = CounterMetricFamily(
            "gateway_summary_points",
            "Summaries by outcome, all steps together: made, recovered at start, delivered, "
            "dead-lettered, summarised again at the next step, or dropped",
            labels=["outcome"],
        )
        for outcome in SUMMARY_OUTCOMES:
            points.add_metric([outcome], sum(snapshot.summaries[outcome].values()))
        yield points
        buffered = GaugeMetricFamily(
            "gateway_buffer_summaries", "Summaries in the buffer, by step", labels=["step"]
        )
        for level in sorted({*levels, *snapshot.summaries_buffered}):
            buffered.add_metric(
                [step_label(level, steps_s)], snapshot.summaries_buffered.get(level, 0)
            )
        yield buffered


class _SparkplugCollector(Collector):
    """Reads the Sparkplug B state's counters at each scrape (the state is pure: no metrics)."""

    def __init__(self, sessions: SparkplugCounts) -> None:
        self._sessions = sessions

    def collect(self) -> Iterator[Metric]:
        refused = CounterMetricFamily(
            "gateway_sparkplug_refused",
            "Sparkplug B messages refused as not the edge node's own: an NDEATH without the "
            "bdSeq of the node's NBIRTH (the node stays online)",
            labels=["reason"],
        )
        for reason, count in sorted(self._sessions.refused.items()):
            refused.add_metric([reason], count)
        yield refused
        yield CounterMetricFamily(
            "gateway_sparkplug_alias_changes",
            "Metric definitions (alias or name -> name, data type) a BIRTH changed while its "
            "edge node or device was online; taken, as the specification says",
            value=self._sessions.alias_changes,
        )
