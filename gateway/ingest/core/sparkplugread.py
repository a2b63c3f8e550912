"""Format "sparkplug_b": a Sparkplug B message -> readings, state notes and rebirth requests.

Pure. The state of edge nodes and devices is gateway/sparkplug/core/session.py; this module
names what it resolves (measurement, field, tags, time) and holds each reading to [limits] like
every other format. A metric's measurement is its name ("Sensors/Temperature") unless
[sparkplug] measurements maps it; its tags are `group`, `edge_node` and, for a device's
metrics, `device`; its time is its own timestamp, else the payload's, else the receipt's.
Each edge node and each device is a device of the buffer (its own FIFO, in order).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from gateway.errors import DecodeError
from gateway.ingest.core.readings import Route, add
from gateway.sparkplug.core.payload import parse, rebirth_request, value_of
from gateway.sparkplug.core.session import Limits, Sessions
from gateway.sparkplug.core.topic import NOT_READINGS, command_topic, parse_topic

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway.config.mqtt import Subscription
    from gateway.config.sparkplug import SparkplugSettings
    from gateway.ingest.core.readings import Bounds, Decoded
    from gateway.points.names import Names

NS_PER_MS = 1_000_000
# Metric names and scopes repeat with every message; bounded against names that never do.
CACHE_SIZE = 20_000


class SparkplugReader:
    """Reads Sparkplug B messages against the kept state of their edge nodes."""

    def __init__(
        self,
        settings: SparkplugSettings,
        names: Names,
        on_online: Callable[[str, str, str | None, bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """No state until `sessions.load`; `clock` paces rebirth requests."""
        self.sessions = Sessions(
            Limits(settings.max_aliases, settings.max_nodes, settings.rebirth_interval_s),
            on_online,
        )
        self._field = settings.field
        self._exact = {k: v for k, v in settings.measurements.items() if not k.endswith("/*")}
        # Longest folder first, so that the deepest mapping wins.
        self._folders = sorted(
            ((k[:-1], v) for k, v in settings.measurements.items() if k.endswith("/*")),
            key=lambda item: -len(item[0]),
        )
        self._names = names
        self._clock = clock
        self._routes: dict[tuple[str, str, str | None], Route] = {}
        self._naming: dict[str, tuple[str, str]] = {}

    def read(  # noqa: PLR0917 - one message's parts
        self,
        sub: Subscription,
        topic: str,
        payload: bytes,
        received_ns: int,
        result: Decoded,
        bounds: Bounds,
        dup: bool,
    ) -> None:
        """Decode one message into `result`.

        Raises:
            DecodeError: the whole message is refused (topic, protobuf, too many metrics).
        """
        parts = parse_topic(topic)
        if parts.kind in NOT_READINGS:
            return  # commands and host states, ours among them: no readings
        message = parse(payload, bounds.limits.max_payload_bytes)
        most = bounds.limits.max_readings_per_message
        if len(message.metrics) > most:
            raise DecodeError(
                "too_many_readings", f"{len(message.metrics)} metrics, more than {most}"
            )
        # Before the state changes: a node whose names cannot be tags leaves no state behind.
        route = self._route(sub, parts.group, parts.node, parts.device)
        change = self.sessions.take(parts, message, received_ns, self._clock(), dup)
        result.errors.extend(change.errors)
        result.notes.update(change.notes)
        if change.rebirth is not None:
            result.commands.append(
                (command_topic(*change.rebirth), rebirth_request(received_ns // NS_PER_MS))
            )
        if not change.metrics:
            return
        default_ns = message.timestamp * NS_PER_MS if message.HasField("timestamp") else received_ns
        for resolved in change.metrics:
            metric = resolved.metric
            stamp = metric.timestamp * NS_PER_MS if metric.HasField("timestamp") else default_ns
            try:
                value = value_of(metric, resolved.datatype)
                measurement, field = self._name(resolved.name)
                add(
                    route,
                    result,
                    measurement=measurement,
                    tags={},
                    fields=[(field, value)],
                    ts_ns=stamp,
                    bounds=bounds,
                    measurement_checked=True,
                )
            except DecodeError as exc:
                result.errors.append(exc)

    def _name(self, metric: str) -> tuple[str, str]:
        """(measurement, field) of a metric, the measurement's name checked.

        Raises:
            DecodeError: the measurement cannot be written exactly (not cached, so it costs
                every time: a refused name is the node's to fix).
        """
        named = self._naming.get(metric)
        if named is None:
            named = self._map(metric)
            self._names.check_series(named[0], ())
            if len(self._naming) >= CACHE_SIZE:
                self._naming.clear()
            self._naming[metric] = named
        return named

    def _map(self, metric: str) -> tuple[str, str]:
        measurement = self._exact.get(metric)
        if measurement is not None:
            return measurement, self._field
        for folder, measurement in self._folders:
            if metric.startswith(folder) and len(metric) > len(folder):
                # The metrics of a folder share the measurement, each its own field.
                return measurement, metric[len(folder) :]
        return metric, self._field

    def _route(self, sub: Subscription, group: str, node: str, device: str | None) -> Route:
        key = (group, node, device)
        route = self._routes.get(key)
        if route is None:
            if len(self._routes) >= CACHE_SIZE:
                self._routes.clear()
            tags = {"group": group, "edge_node": node}
            if device is not None:
                tags["device"] = device
            sorted_tags = tuple(sorted(tags.items()))
            self._names.check_tags(sorted_tags)
            fifo = f"{group}/{node}" if device is None else f"{group}/{node}/{device}"
            route = self._routes[key] = Route(sub, fifo, "", tags, sorted_tags, frozenset(tags))
        return route
