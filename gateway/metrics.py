"""Every Prometheus metric of the gateway, defined in one place; no per-device labels.

`gateway_readings_total{outcome}` mirrors DESIGN invariant 5:
received == invalid + accepted, and accepted == delivered + buffered + dead_lettered.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

if TYPE_CHECKING:
    from gateway.buffer import Totals

OUTCOMES = ("received", "invalid", "accepted", "delivered", "dead_lettered")
WRITE_RESULTS = ("ok", "retry", "rejected", "auth")


class Metrics:
    """The gateway's metrics on a registry of their own (tests pass a fresh one)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        """Create every metric, with every label value present from the start."""
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.readings = Counter(
            "gateway_readings_total", "Readings by outcome", ["outcome"], registry=r
        )
        self.invalid = Counter(
            "gateway_invalid_readings_total",
            "Readings refused as invalid, by reason",
            ["reason"],
            registry=r,
        )
        self.messages = Counter("gateway_mqtt_messages_total", "MQTT messages received", registry=r)
        self.buffer_readings = Gauge(
            "gateway_buffer_readings", "Readings in the buffer", registry=r
        )
        self.buffer_bytes = Gauge("gateway_buffer_bytes", "Bytes of buffered readings", registry=r)
        self.buffer_devices = Gauge(
            "gateway_buffer_devices", "Devices with buffered readings", registry=r
        )
        self.buffer_capacity = Gauge(
            "gateway_buffer_capacity_bytes", "Buffer byte budget", registry=r
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
            buckets=(0.001, 0.002, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 1),
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
        self.mqtt_connected = Gauge(
            "gateway_mqtt_connected", "1 while connected to the broker", registry=r
        )
        self.mqtt_connects = Counter(
            "gateway_mqtt_connects_total", "Successful broker connects", registry=r
        )
        for outcome in OUTCOMES:
            self.readings.labels(outcome)
        for result in WRITE_RESULTS:
            self.writes.labels(result)

    def observe_buffer(self, totals: Totals) -> None:
        """Update the buffer gauges from its accounting."""
        self.buffer_readings.set(totals.readings)
        self.buffer_bytes.set(totals.nbytes)
        self.buffer_devices.set(totals.devices)

    def serve(self, host: str, port: int) -> None:
        """Serve /metrics on a daemon thread."""
        start_http_server(port, addr=host, registry=self.registry)
