"""Payload + topic -> readings: the formats `json`, `line` and `value`.

Nothing a sensor sends may raise out of `Decoder.decode`: every problem becomes a `DecodeError`
in the result, counted as invalid, and the valid readings of the same message still go through.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from gateway.errors import DecodeError
from gateway.lineparse import parse_lines
from gateway.lineproto import check_reading
from gateway.model import DEVICE_TAG, FieldValue, Reading

if TYPE_CHECKING:
    from collections.abc import Sequence

    from gateway.config import Subscription

NS_PER_UNIT = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}
TAGS_KEY = "tags"
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


@dataclass(slots=True)
class Decoded:
    """What one message yielded: the valid readings and one error per invalid reading."""

    readings: list[Reading] = field(default_factory=list)
    errors: list[DecodeError] = field(default_factory=list)


class Decoder:
    """Maps a message to readings by the first subscription whose template fits its topic."""

    def __init__(self, subscriptions: Sequence[Subscription]) -> None:
        """Keep the subscriptions in configuration order: the first match wins."""
        self._subscriptions = tuple(subscriptions)

    def decode(self, topic: str, payload: bytes, received_ns: int) -> Decoded:
        """Decode one message; `received_ns` stamps readings that carry no timestamp."""
        result = Decoded()
        try:
            for sub in self._subscriptions:
                values = sub.template.match(topic)
                if values is not None:
                    _decode_for(sub, values, payload, received_ns, result)
                    return result
        except DecodeError as exc:
            result.errors.append(exc)
            return result
        result.errors.append(
            DecodeError("no_subscription", f"topic {topic[:200]!r} fits no subscription")
        )
        return result


def _decode_for(
    sub: Subscription, values: dict[str, str], payload: bytes, received_ns: int, result: Decoded
) -> None:
    device = values[DEVICE_TAG]
    measurement = values.get("measurement", sub.measurement or "")
    topic_tags = dict(sub.tags)
    topic_tags.update((k, v) for k, v in values.items() if k != "measurement")
    try:
        text = payload.decode()
    except UnicodeDecodeError:
        raise DecodeError("not_utf8", "payload is not UTF-8 text") from None

    def add(
        measurement: str,
        tags: dict[str, str],
        fields: list[tuple[str, FieldValue]],
        ts_ns: int | None,
    ) -> None:
        clash = topic_tags.keys() & tags.keys()
        if clash:
            raise DecodeError("tag_conflict", f"payload tag {min(clash)!r} is set by the topic")
        tags.update(topic_tags)
        reading = Reading(
            device,
            measurement,
            tuple(sorted(tags.items())),
            tuple(fields),
            received_ns if ts_ns is None else ts_ns,
        )
        check_reading(reading)
        result.readings.append(reading)

    if sub.format == "value":
        add(measurement, {}, [(sub.value_field, _plain_number(text, sub.integers))], None)
        return
    unit = NS_PER_UNIT[sub.timestamp_unit or "ns"]
    items: list[Any] = parse_lines(text) if sub.format == "line" else _json_objects(text)
    for item in items:
        # One bad reading must not cost the message's other readings.
        try:
            if sub.format == "line":
                line_measurement, tags, fields, ts = item
                add(line_measurement, dict(tags), fields, None if ts is None else ts * unit)
            else:
                add(measurement, *_json_reading(sub, item))
        except DecodeError as exc:
            result.errors.append(exc)


def _json_objects(text: str) -> list[Any]:
    try:
        data = json.loads(text)  # NaN and Infinity parse; check_reading refuses them per reading
    except (ValueError, RecursionError) as exc:
        raise DecodeError("bad_json", str(exc)[:200]) from None
    if isinstance(data, dict):
        return [data]
    if isinstance(data, list) and data:
        return data
    raise DecodeError("bad_json", "payload must be an object or a non-empty array of objects")


JsonReading = tuple[dict[str, str], list[tuple[str, FieldValue]], int | None]


def _json_reading(sub: Subscription, obj: object) -> JsonReading:
    if not isinstance(obj, dict):
        raise DecodeError("bad_json", "array item is not an object")
    tags: dict[str, str] = {}
    fields: list[tuple[str, FieldValue]] = []
    ts_ns = None
    for key, value in obj.items():
        if key == sub.timestamp_key:
            ts_ns = _timestamp_ns(value, sub.timestamp_unit or "ms")
        elif key == TAGS_KEY:
            tags = _json_tags(value)
        elif isinstance(value, bool | str):
            fields.append((key, value))
        elif isinstance(value, int | float):
            fields.append((key, _number(value, sub.integers, key)))
        else:
            what = "null" if value is None else type(value).__name__
            raise DecodeError(
                "bad_value_type", f"field {key!r} is {what}, not a number, boolean or string"
            )
    return tags, fields, ts_ns


def _json_tags(value: Any) -> dict[str, str]:  # noqa: ANN401
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise DecodeError("bad_tags", f"{TAGS_KEY!r} must be an object of strings")
    return value


def _number(value: float, integers: str, key: str) -> FieldValue:
    if integers == "int" and isinstance(value, int):
        return value
    try:
        return float(value)
    except OverflowError:
        raise DecodeError("not_finite", f"field {key!r} is too large for a float") from None


def _plain_number(text: str, integers: str) -> FieldValue:
    token = text.strip()
    if not _NUMBER.fullmatch(token):
        raise DecodeError("bad_value", f"payload {token[:40]!r} is not a number")
    if integers == "int" and re.fullmatch(r"[+-]?\d+", token):
        return int(token)
    value = float(token)
    if not math.isfinite(value):
        raise DecodeError("not_finite", "payload is too large for a float")
    return value


def _timestamp_ns(value: Any, unit: str) -> int:  # noqa: ANN401
    if isinstance(value, str):
        try:
            stamp = datetime.fromisoformat(value)
        except ValueError:
            raise DecodeError("bad_timestamp", f"{value[:40]!r} is not ISO 8601") from None
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=UTC)
        delta = stamp - datetime(1970, 1, 1, tzinfo=UTC)
        return (delta.days * 86400 + delta.seconds) * 10**9 + delta.microseconds * 1000
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DecodeError("bad_timestamp", "timestamp must be a number or an ISO 8601 string")
    if isinstance(value, int):
        return value * NS_PER_UNIT[unit]
    try:
        # Through Decimal so that 1700000000.123 s is exactly ...123000000 ns, not a float error.
        return int(Decimal(repr(value)) * NS_PER_UNIT[unit])
    except (InvalidOperation, ValueError, OverflowError):
        raise DecodeError("bad_timestamp", "timestamp is not finite") from None
