"""The read API on the gateway's HTTP server: what it holds, and the latest value of a device.

`GET /api/v1/devices`, `GET /api/v1/devices/{device}/latest`, `GET /api/v1/status`,
`GET /api/v1/dead-letters` and `GET /api/v1/rejects` (newest first), `GET /api/v1/sparkplug`
(edge nodes and devices), and the OpenAPI document at `GET /api/v1/openapi.json`
(gateway/api/apispec.py). Read-only: nothing here stores, deletes or acknowledges a reading.
The one write is a cache fill: on a miss the latest values are read from the database and kept
in the last-value table (gateway/buffer/latest.py), which is what a read-through cache does.
The status page (gateway/api/statuspage.py) draws these answers.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway import __version__
from gateway.api import apispec
from gateway.api.core import pages
from gateway.api.core.misses import NegativeCache
from gateway.api.dbread import DatabaseReadError, latest_lines
from gateway.api.devicelist import DeviceList, iso_time
from gateway.buffer import view as buffer_view
from gateway.config.mqtt import DEFAULT_DEVICE_CLASS
from gateway.errors import DecodeError, StorageError
from gateway.flush.fanout import sink_states
from gateway.points.names import Names

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway.buffer.latest import Latest
    from gateway.buffer.rejects import RejectLog
    from gateway.buffer.store import Buffer
    from gateway.config.settings import Settings
    from gateway.flush.fanout import Fanout
    from gateway.flush.flusher import Flusher
    from gateway.observe.health import Health
    from gateway.observe.metrics import Metrics
    from gateway.sparkplug.core.session import Sessions

logger = logging.getLogger(__name__)

DEFAULT_TOP = 20
# Dead letters and rejects a list answer holds unless asked for fewer; and at most.
DEFAULT_LIMIT, MAX_LIMIT = 20, 1000
# Seconds a client is asked to wait when every database read for misses is taken.
BUSY_RETRY_AFTER_S = 1


class ReadApi:
    """The handlers, over the running gateway's buffer, flusher, metrics and health."""

    def __init__(
        self,
        settings: Settings,
        *,
        buffer: Buffer,
        flusher: Flusher | Fanout,
        metrics: Metrics,
        health: Health,
        rejects: RejectLog,
        sparkplug: Sessions | None = None,
        replication: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        """Serve what these hold; `settings` names the database a miss reads.

        `sparkplug`: the state of Sparkplug B edge nodes, when a subscription reads them.
        `replication`: the pair as this gateway sees it (gateway/replication), if it has one.
        """
        self._replication = replication
        self._sparkplug = sparkplug
        self._settings = settings
        # A device name the gateway could never have accepted is a 404 without a query.
        self._names = Names(settings.limits.max_identifier_len)
        self._buffer = buffer
        self._flusher = flusher
        self._metrics = metrics
        self._health = health
        self._rejects = rejects
        api = settings.api
        self._device_list = DeviceList(buffer)
        self._missing = NegativeCache(api.miss_cache_s, api.miss_cache_entries)
        self._classes = {DEFAULT_DEVICE_CLASS} | {
            sub.device_class for sub in settings.mqtt.subscriptions
        }
        # Misses reading the database now; past the bound a miss is refused, not queued, so
        # that a flood of names neither piles up requests nor loads the database.
        self._reads_in_flight = 0

    def routes(self) -> list[web.RouteDef]:
        """The API's routes, for the HTTP server."""
        return [
            web.get("/api/v1/openapi.json", self._openapi),
            web.get("/api/v1/devices", self._devices),
            web.get("/api/v1/devices/{device}/latest", self._latest),
            web.get("/api/v1/status", self._status),
            web.get("/api/v1/dead-letters", self._dead_letters),
            web.get("/api/v1/rejects", self._rejects_page),
            web.get("/api/v1/sparkplug", self._sparkplug_nodes),
        ]

    async def _sparkplug_nodes(self, _request: web.Request) -> web.Response:
        nodes = self._sparkplug.snapshot() if self._sparkplug is not None else []
        return web.json_response({"nodes": nodes})

    async def _dead_letters(self, request: web.Request) -> web.Response:
        limit = _limit(request)
        if isinstance(limit, web.Response):
            return limit
        found = self._buffer.newest_dead_letters(limit)
        return web.json_response(
            {
                "count": self._buffer.dead_letter_count(),
                "dead_letters": [
                    {"id": d.id, "device": d.device, "reason": d.reason, "line": d.line}
                    for d in found
                ],
            }
        )

    async def _rejects_page(self, request: web.Request) -> web.Response:
        limit = _limit(request)
        if isinstance(limit, web.Response):
            return limit
        kept = self._rejects.newest_first()[:limit]  # at most rejects.KEPT are kept
        return web.json_response({"rejects": [asdict(r) for r in kept]})

    async def _openapi(self, _request: web.Request) -> web.Response:
        return web.json_response(apispec.DOCUMENT)

    async def _devices(self, request: web.Request) -> web.Response:
        limit = _limit(request, pages.DEFAULT_PAGE, pages.MAX_PAGE, least=1)
        if isinstance(limit, web.Response):
            return limit
        after, name = request.query.get("after", ""), request.query.get("name")
        try:
            found = await self._device_list.page(after=after, limit=limit, name=name)
        except StorageError as exc:  # the buffer closed under the request: the gateway stops
            return _error(503, str(exc))
        return web.json_response(found)

    async def _latest(self, request: web.Request) -> web.Response:
        device = request.match_info["device"]
        try:
            self._names.check("device", device)
        except DecodeError as exc:
            # No reading of it can have been accepted, so none is in the database either.
            return _error(404, f"no device is named so: {exc.detail}")
        found = self._buffer.latest_of(device)
        source = "cache"
        if not found:
            read = await self._read_miss(device)
            if isinstance(read, web.Response):
                return read
            found, source = read, "database"
        if not found:
            return _not_found(device)
        return web.json_response(
            {
                "device": device,
                "source": source,
                "measurements": [_measurement(latest) for latest in found],
            }
        )

    async def _read_miss(self, device: str) -> list[Latest] | web.Response:
        """What the database holds of `device`, kept in the last-value table; or the refusal."""
        if self._missing.is_missing(device, time.monotonic()):
            return _not_found(device)
        if self._reads_in_flight >= self._settings.api.max_database_reads:
            busy = _error(503, "too many database reads for misses at once; retry later")
            busy.headers["Retry-After"] = str(BUSY_RETRY_AFTER_S)
            return busy
        self._reads_in_flight += 1
        try:
            lines = await latest_lines(self._settings.primary_influx, self._settings.api, device)
        except DatabaseReadError as exc:
            logger.warning("latest values of %r: %s", device[:200], exc)
            return _error(502, f"not in the cache, and the database read failed: {exc}")
        finally:
            self._reads_in_flight -= 1
        if not lines:
            # Not when the gateway holds readings of it that the database has yet to get (its
            # series gone from the last-value table, which keeps `latest_series`): they are
            # found by the next miss once delivered, not hidden behind a cached 404.
            if not self._buffer.holds(device, self._classes):
                self._missing.remember(device, time.monotonic())
            return []
        try:
            self._buffer.remember(device, lines)
        except StorageError as exc:
            logger.warning("%s", exc)
        return self._buffer.latest_of(device)

    async def _status(self, request: web.Request) -> web.Response:
        try:
            top = int(request.query.get("top", DEFAULT_TOP))
        except ValueError:
            return _error(400, "top must be an integer")
        if top < 0:
            return _error(400, "top must be 0 or more")
        b = self._settings.buffer
        view = buffer_view.snapshot(
            self._buffer, time.time_ns(), top=top, steps_s=b.compact_steps_s
        )
        snapshot = self._metrics.accounting.snapshot()
        view["runtime"] = {
            "version": __version__,
            "readings": snapshot.outcomes,
            "lag_s": self._flusher.lag_s(now := time.monotonic()),
            "live_lag_s": self._flusher.live_lag_s(now),
            "backlog_lag_s": self._flusher.backlog_lag_s(now),
            "batch_size": self._flusher.batch_size,
            "last_write_s": self._flusher.last_write_s,
            "sink": {
                "state": "failing" if self._flusher.failing_writes else "ok",
                "failed_writes_in_a_row": self._flusher.failing_writes,
            },
            # Each database on its own (one, "influx", for an [influx] configuration).
            "sinks": sink_states(self._flusher, self._buffer, now),
            "admission": {
                "policy": b.policy,
                "paused": self._health.paused,
                "high_watermark": b.high_watermark,
                "low_watermark": b.low_watermark,
            },
            "mqtt_connected": self._health.connected,
            # The event loop's lag over the last minute (gateway/observe/looplag.py).
            "loop_lag_max_s": self._health.loop_lag.recent_max(now),
            "loop_lag_p99_s": self._health.loop_lag.quantile(0.99, now),
            "loop_lag_limit_s": self._health.max_loop_lag_s,
        }
        disk = self._metrics.disk.figures(snapshot.outcomes["accepted"])
        if disk is not None:
            view["runtime"]["disk"] = disk
        if self._replication is not None:
            view["runtime"]["replication"] = self._replication()
        return web.json_response(view)


def _measurement(latest: Latest) -> dict[str, Any]:
    state = "buffered" if latest.buffered else "delivered"
    return {
        "measurement": latest.measurement,
        "tags": latest.tags,
        "time": iso_time(latest.ts_ns),
        "time_ns": latest.ts_ns,
        "state": state,
        "fields": {name: {"value": value, "state": state} for name, value in latest.fields.items()},
    }


def _limit(
    request: web.Request, default: int = DEFAULT_LIMIT, most: int = MAX_LIMIT, least: int = 0
) -> int | web.Response:
    """The `limit` query parameter, or the 400 answer to a bad one."""
    try:
        limit = int(request.query.get("limit", default))
    except ValueError:
        return _error(400, "limit must be an integer")
    if not least <= limit <= most:
        return _error(400, f"limit must be from {least} to {most}")
    return limit


def _not_found(device: str) -> web.Response:
    return _error(404, f"no reading of device {device!r} in the cache or the database")


def _error(code: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=code)
