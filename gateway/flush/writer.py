"""One sink's writes: the body compressed, the uplink's byte budget kept, the batch size learned.

Each write's latency sizes the next batch (gateway/flush/core/controller.py); a database that
says it is overloaded halves it. Each sink has a writer of its own, so that a slow far database
does not shrink the batches of a near one.
"""

from __future__ import annotations

import time
import zlib
from typing import TYPE_CHECKING

import anyio

from gateway.errors import SinkError
from gateway.flush.core.controller import BatchSizer
from gateway.flush.core.uplink import UplinkBudget

if TYPE_CHECKING:
    from gateway.config.sections import FlushSettings
    from gateway.flush.sink import Sink
    from gateway.observe.metrics import Metrics

# Line protocol of one device's readings at level 1: 6.2 bytes a point in batches of a few
# thousand (level 6: 4.6, at half again the CPU; plain: 63), measured by `gateway bench
# --scenario drain`.
GZIP_LEVEL = 1
# zlib's wbits for a gzip container (RFC 1952), which Content-Encoding: gzip names.
GZIP_WBITS = 31


class Writer:
    """Writes line-protocol bodies to one sink; `batch_size` is what the next batch should hold."""

    def __init__(
        self, sink: Sink, settings: FlushSettings, metrics: Metrics, name: str = "influx"
    ) -> None:
        """Start at `batch_initial`, within the settings' floor and ceiling; `name`: the sink's."""
        self.sink = sink
        self.name = name
        self._settings = settings
        self._metrics = metrics
        self._sizer = BatchSizer(
            floor=settings.batch_floor,
            ceiling=settings.batch_ceiling,
            size=settings.batch_initial,
            target_latency_s=settings.target_latency_s,
        )
        self.batch_size = self._sizer.size
        # The duration of the last write the database accepted, for the status page.
        self.last_write_s = 0.0
        self._uplink = UplinkBudget(settings.max_bytes_per_s)
        self._resize(self.batch_size)

    def reconfigure(self, settings: FlushSettings) -> None:
        """Take new tuning (SIGHUP); the batch size in use is kept within the new bounds."""
        self._settings = settings
        self._sizer = BatchSizer(
            floor=settings.batch_floor,
            ceiling=settings.batch_ceiling,
            size=min(max(self.batch_size, settings.batch_floor), settings.batch_ceiling),
            target_latency_s=settings.target_latency_s,
        )
        self._resize(self._sizer.size)
        self._uplink.bytes_per_s = settings.max_bytes_per_s

    async def write(self, body: bytes, points: int) -> None:
        """Write one body of `points` points; raises the sink's `SinkError` as it came."""
        encoding = None
        if self._settings.gzip:
            body, encoding = zlib.compress(body, GZIP_LEVEL, GZIP_WBITS), "gzip"
        wait_s = self._uplink.reserve(len(body), time.monotonic())
        if wait_s:
            await anyio.sleep(wait_s)
        started = time.monotonic()
        try:
            with self._metrics.writes_in_flight.track_inprogress():
                self._metrics.sent_bytes.inc(len(body))
                await self.sink.write(body, encoding=encoding)
        except SinkError as exc:
            self._metrics.writes.labels(exc.result).inc()
            self._metrics.sinks.writes.labels(self.name, exc.result).inc()
            if exc.overloaded:
                self._resize(self._sizer.on_overload(time.monotonic()))
            raise
        now = time.monotonic()
        self.last_write_s = now - started
        self._metrics.writes.labels("ok").inc()
        self._metrics.sinks.writes.labels(self.name, "ok").inc()
        self._metrics.sinks.written.labels(self.name).inc(points)
        self._metrics.write_seconds.observe(now - started)
        self._metrics.batch_points.observe(points)
        self._resize(self._sizer.on_success(now - started, points, now))

    def _resize(self, size: int) -> None:
        self.batch_size = size
        self._metrics.batch_size.set(size)
        self._metrics.sinks.batch_size.labels(self.name).set(size)
