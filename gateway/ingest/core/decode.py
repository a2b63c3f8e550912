"""Payload + topic -> readings: the formats `json`, `line` and `value`.

Nothing a sensor sends may raise out of `Decoder.decode`: every problem becomes a `DecodeError`
in the result, counted as invalid, and the valid readings of the same message still go through.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from gateway.config.mqtt import DEFAULT_DEVICE_CLASS
from gateway.errors import DecodeError
from gateway.ingest.core.jsonread import NS_PER_UNIT, json_objects, json_reading
from gateway.points.lineparse import bounded_int, parse_lines
from gateway.points.model import DEVICE_TAG, FieldValue, Reading
from gateway.points.names import Names

if TYPE_CHECKING:
    from collections.abc import Sequence

    from gateway.config.mqtt import Subscription
    from gateway.config.sections import LimitSettings

# [limits] field_named_like_tag = "rename": a field named like a tag of its reading gets this.
RENAMED_FIELD_SUFFIX = "_field"
UTF8_BOM = b"\xef\xbb\xbf"
# One way to match each number: `\d+\.?\d*` could split a run of digits in many ways, and a
# long run followed by a stray character backtracked quadratically (a 60 kB payload, 50 s).
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


@dataclass(slots=True)
class Decoded:
    """What one message yielded: the valid readings and one error per invalid reading."""

    readings: list[Reading] = field(default_factory=list)
    errors: list[DecodeError] = field(default_factory=list)
    # The device class of the subscription the topic matched: the readings' admission lane.
    device_class: str = DEFAULT_DEVICE_CLASS


@dataclass(frozen=True, slots=True)
class _Route:
    """What a topic means: its subscription, device, measurement and the tags it sets."""

    sub: Subscription
    device: str
    measurement: str
    topic_tags: dict[str, str]
    sorted_tags: tuple[tuple[str, str], ...]
    tag_keys: frozenset[str]


# Topics repeat for every reading of a device, so their meaning is cached; bounded, because a
# sensor bug can put random ids in topics.
ROUTE_CACHE_SIZE = 20_000


class Decoder:
    """Maps a message to readings by the first subscription whose template fits its topic."""

    def __init__(self, subscriptions: Sequence[Subscription], limits: LimitSettings) -> None:
        """Keep the subscriptions in configuration order: the first match wins."""
        self._templates = tuple((sub, sub.template) for sub in subscriptions)
        self._routes: dict[str, _Route | DecodeError] = {}
        self._limits = limits
        self._names = Names(limits.max_identifier_len)
        self._max_age_ns = int(limits.max_age_s * 1e9)
        self._max_future_ns = int(limits.max_future_s * 1e9)

    def decode(self, topic: str, payload: bytes, received_ns: int) -> Decoded:
        """Decode one message; `received_ns` stamps readings that carry no timestamp."""
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
        bounds = _Bounds(
            limits=limits,
            names=self._names,
            oldest_ns=received_ns - self._max_age_ns,
            newest_ns=received_ns + self._max_future_ns,
        )
        try:
            _decode_for(route, payload, received_ns, result, bounds)
        except DecodeError as exc:
            result.errors.append(exc)
        return result

    def _route(self, topic: str) -> _Route | DecodeError:
        try:
            for sub, template in self._templates:
                values = template.match(topic)
                if values is not None:
                    return _make_route(sub, values, self._names)
        except DecodeError as exc:
            return exc
        return DecodeError("no_subscription", f"topic {topic[:200]!r} fits no subscription")


def _make_route(sub: Subscription, values: dict[str, str], names: Names) -> _Route:
    topic_tags = dict(sub.tags)
    topic_tags.update((k, v) for k, v in values.items() if k != "measurement")
    measurement = values.get("measurement", sub.measurement or "")
    sorted_tags = tuple(sorted(topic_tags.items()))
    if measurement:
        names.check_series(measurement, sorted_tags)
    else:  # format "line": each line names its measurement
        names.check_tags(sorted_tags)
    return _Route(
        sub,
        values[DEVICE_TAG],
        measurement,
        topic_tags,
        sorted_tags,
        frozenset(key for key, _ in sorted_tags),
    )


class _Bounds(NamedTuple):
    """The limits a message's readings are held to; timestamps relative to its receipt.

    A named tuple, made per message: a frozen dataclass costs three times as much to make.
    """

    limits: LimitSettings
    names: Names
    oldest_ns: int
    newest_ns: int


def _add(
    route: _Route,
    result: Decoded,
    *,
    measurement: str,
    tags: dict[str, str],
    fields: Sequence[tuple[str, FieldValue]],
    ts_ns: int,
    bounds: _Bounds,
) -> None:
    limits = bounds.limits
    if len(fields) > limits.max_fields_per_reading:
        raise DecodeError(
            "too_many_fields", f"{len(fields)} fields, more than {limits.max_fields_per_reading}"
        )
    if not bounds.oldest_ns <= ts_ns <= bounds.newest_ns:
        which = "future" if ts_ns > bounds.newest_ns else "past"
        raise DecodeError(
            f"timestamp_too_far_in_{which}", f"timestamp {ts_ns} ns is out of [limits] range"
        )
    if tags:
        clash = route.topic_tags.keys() & tags.keys()
        if clash:
            raise DecodeError("tag_conflict", f"payload tag {min(clash)!r} is set by the topic")
        tags.update(route.topic_tags)
        sorted_tags = tuple(sorted(tags.items()))
        bounds.names.check_series(measurement, sorted_tags)
        tag_keys = frozenset(tags)
    elif measurement is route.measurement:
        sorted_tags, tag_keys = route.sorted_tags, route.tag_keys  # checked with the route
    else:
        sorted_tags, tag_keys = route.sorted_tags, route.tag_keys
        bounds.names.check_series(measurement, sorted_tags)
    if len(sorted_tags) > limits.max_tags:
        raise DecodeError("too_many_tags", f"{len(sorted_tags)} tags, more than {limits.max_tags}")
    if limits.field_named_like_tag == "rename":
        fields = _rename_tag_named_fields(fields, tag_keys)
    reading = Reading(route.device, measurement, sorted_tags, tuple(fields), ts_ns)
    bounds.names.check_fields(reading, tag_keys, limits.max_string_len)
    result.readings.append(reading)


def _rename_tag_named_fields(
    fields: Sequence[tuple[str, FieldValue]], tag_keys: frozenset[str]
) -> Sequence[tuple[str, FieldValue]]:
    for key, _ in fields:
        if key in tag_keys:
            break
    else:
        return fields
    renamed = [(f"{key}{RENAMED_FIELD_SUFFIX}" if key in tag_keys else key, v) for key, v in fields]
    if len({key for key, _ in renamed}) < len(renamed):
        raise DecodeError("duplicate_field", "a renamed field has the name of another field")
    return renamed


def _decode_for(
    route: _Route, payload: bytes, received_ns: int, result: Decoded, bounds: _Bounds
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
        _add(
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
                _add(
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
                _add(
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
