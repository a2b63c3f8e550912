"""Payload + topic -> readings: the formats `json`, `line` and `value`.

Nothing a sensor sends may raise out of `Decoder.decode`: every problem becomes a `DecodeError`
in the result, counted as invalid, and the valid readings of the same message still go through.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

from gateway.buffer.core.summary import LEVEL_BITS
from gateway.config.sparkplug import SparkplugSettings
from gateway.errors import DecodeError
from gateway.ingest.core.jsonread import NS_PER_UNIT, json_objects, json_reading
from gateway.ingest.core.readings import Bounds, Decoded, Route, add
from gateway.ingest.core.sparkplugread import SparkplugReader
from gateway.points.lineparse import bounded_int, parse_lines
from gateway.points.model import DEVICE_TAG, FieldValue
from gateway.points.names import Names

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from gateway.config.mqtt import Subscription
    from gateway.config.sections import LimitSettings

UTF8_BOM = b"\xef\xbb\xbf"
# One way to match each number: `\d+\.?\d*` could split a run of digits in many ways, and a
# long run followed by a stray character backtracked quadratically (a 60 kB payload, 50 s).
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


# Topics repeat for every reading of a device, so their meaning is cached; bounded, because a
# sensor bug can put random ids in topics.
ROUTE_CACHE_SIZE = 20_000


class Decoder:
    """Maps a message to readings by the first subscription whose template fits its topic."""

    def __init__(
        self,
        subscriptions: Sequence[Subscription],
        limits: LimitSettings,
        sparkplug: SparkplugSettings | None = None,
        on_online: Callable[[str, str, str | None, bool], None] | None = None,
    ) -> None:
        """Keep the subscriptions in configuration order: the first match wins.

        `sparkplug` and `on_online` serve subscriptions of format "sparkplug_b"; the reader
        of those (`self.sparkplug`) keeps the state of their edge nodes.
        """
        self._templates = tuple(
            (sub, None if sub.format == "sparkplug_b" else sub.template) for sub in subscriptions
        )
        self._routes: dict[str, Route | DecodeError] = {}
        self._limits = limits
        self._names = Names(limits.max_identifier_len)
        self.sparkplug = (
            SparkplugReader(sparkplug or SparkplugSettings(), self._names, on_online)
            if any(template is None for _, template in self._templates)
            else None
        )
        self._max_age_ns = int(limits.max_age_s * 1e9)
        self._max_future_ns = int(limits.max_future_s * 1e9)

    def decode(self, topic: str, payload: bytes, received_ns: int, *, dup: bool = False) -> Decoded:
        """Decode one message; `received_ns` stamps readings that carry no timestamp.

        `dup`: the broker delivers the message again (Sparkplug B sequence numbers repeat).
        """
        # Whole multiples of 8 ns, like every timestamp in s, ms or us: summaries carry their
        # level in the low bits of theirs (gateway/buffer/core/summary.py), so none can take
        # the place of a reading the gateway stamped. Here, as every format's stamp comes here.
        received_ns -= received_ns % LEVEL_BITS
        result = Decoded()
        limits = self._limits
        if len(payload) > limits.max_payload_bytes:
            result.errors.append(
                DecodeError(
                    "payload_too_large",
                    f"{len(payload)} bytes, more than {limits.max_payload_bytes}",
                )
            )
            return result
        route = self._routes.get(topic)
        if route is None:
            if len(self._routes) >= ROUTE_CACHE_SIZE:
                self._routes.clear()
            route = self._routes[topic] = self._route(topic)
        if isinstance(route, DecodeError):
            result.errors.append(route)
            return result
        result.device_class = route.sub.device_class
        bounds = Bounds(
            limits=limits,
            names=self._names,
            oldest_ns=received_ns - self._max_age_ns,
            newest_ns=received_ns + self._max_future_ns,
        )
        try:
            if route.sub.format == "sparkplug_b" and self.sparkplug is not None:
                self.sparkplug.read(route.sub, topic, payload, received_ns, result, bounds, dup)
            else:
                _decode_for(route, payload, received_ns, result, bounds)
        except DecodeError as exc:
            result.errors.append(exc)
        return result

    def _route(self, topic: str) -> Route | DecodeError:
        try:
            for sub, template in self._templates:
                if template is None:
                    if topic.startswith(sub.topic[:-1]):  # "spBv1.0/#" takes "spBv1.0/..."
                        return Route(sub, "", "", {}, (), frozenset())
                    continue
                values = template.match(topic)
                if values is not None:
                    return _make_route(sub, values, self._names)
        except DecodeError as exc:
            return exc
        return DecodeError("no_subscription", f"topic {topic[:200]!r} fits no subscription")


def _make_route(sub: Subscription, values: dict[str, str], names: Names) -> Route:
    topic_tags = dict(sub.tags)
    topic_tags.update((k, v) for k, v in values.items() if k != "measurement")
    measurement = values.get("measurement", sub.measurement or "")
    sorted_tags = tuple(sorted(topic_tags.items()))
    if measurement:
        names.check_series(measurement, sorted_tags)
    else:  # format "line": each line names its measurement
        names.check_tags(sorted_tags)
    return Route(
        sub,
        values[DEVICE_TAG],
        measurement,
        topic_tags,
        sorted_tags,
        frozenset(key for key, _ in sorted_tags),
    )


def _decode_for(
    route: Route, payload: bytes, received_ns: int, result: Decoded, bounds: Bounds
) -> None:
    sub, measurement = route.sub, route.measurement
    if payload[:3] == UTF8_BOM:
        # Some firmware writes one; RFC 8259 lets a parser ignore it, and in line protocol it
        # would become part of the measurement's name.
        payload = payload[3:]
    try:
        text = payload.decode()
    except UnicodeDecodeError:
        raise DecodeError("not_utf8", "payload is not UTF-8 text") from None

    if sub.format == "value":
        fields = [(sub.value_field, _plain_number(text, sub.integers))]
        add(
            route,
            result,
            measurement=measurement,
            tags={},
            fields=fields,
            ts_ns=received_ns,
            bounds=bounds,
        )
        return
    unit = NS_PER_UNIT[sub.timestamp_unit or "ns"]
    items: list[Any] = (
        parse_lines(text)
        if sub.format == "line"
        else json_objects(text, exact_integers=sub.integers == "int")
    )
    if not items:  # blank lines and comments only: nothing to store, but counted
        raise DecodeError("no_readings", "the payload holds no line")
    most = bounds.limits.max_readings_per_message
    if len(items) > most:
        raise DecodeError("too_many_readings", f"{len(items)} readings, more than {most}")
    for item in items:
        # One bad reading must not cost the message's other readings.
        try:
            if sub.format == "line":
                line_measurement, tags, line_fields, ts = item
                stamp = received_ns if ts is None else ts * unit
                add(
                    route,
                    result,
                    measurement=line_measurement,
                    tags=dict(tags),
                    fields=line_fields,
                    ts_ns=stamp,
                    bounds=bounds,
                )
            else:
                tags, json_fields, ts = json_reading(sub, item)
                stamp = received_ns if ts is None else ts
                add(
                    route,
                    result,
                    measurement=measurement,
                    tags=tags,
                    fields=json_fields,
                    ts_ns=stamp,
                    bounds=bounds,
                )
        except DecodeError as exc:
            result.errors.append(exc)


def _plain_number(text: str, integers: str) -> FieldValue:
    token = text.strip()
    if not _NUMBER.fullmatch(token):
        raise DecodeError("bad_value", f"payload {token[:40]!r} is not a number")
    if integers == "int" and re.fullmatch(r"[+-]?\d+", token):
        return bounded_int(token)
    value = float(token)
    if not math.isfinite(value):
        raise DecodeError("not_finite", "payload is too large for a float")
    return value
