"""The JSON payload format: objects (or arrays of them) whose keys are fields, tags or the time.

A key named like the subscription's `timestamp_key` is the reading's time (a number in
`timestamp_unit`, or ISO 8601 text); the key `tags` holds an object of string tags; every other
key is a field, whose value must be a number, a boolean or a string. Values are told apart by
their exact type: JSON makes no subclasses, and this runs for every field.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from gateway.errors import DecodeError
from gateway.points.model import FieldValue

if TYPE_CHECKING:
    from gateway.config.mqtt import Subscription

NS_PER_UNIT = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}
TAGS_KEY = "tags"


def json_objects(text: str) -> list[Any]:
    """The payload's readings as parsed JSON objects (one object, or an array of them).

    Raises:
        DecodeError: `bad_json`.
    """
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


def json_reading(sub: Subscription, obj: object) -> JsonReading:
    """The tags, fields and timestamp (ns, None when absent) of one JSON object.

    Raises:
        DecodeError: naming what is wrong with it.
    """
    if not isinstance(obj, dict):
        raise DecodeError("bad_json", "array item is not an object")
    tags: dict[str, str] = {}
    fields: list[tuple[str, FieldValue]] = []
    ts_ns = None
    timestamp_key = sub.timestamp_key
    for key, value in obj.items():
        kind = type(value)
        if key == timestamp_key:
            ts_ns = _timestamp_ns(value, sub.timestamp_unit or "ms")
        elif key == TAGS_KEY:
            tags = _json_tags(value)
        # Exact types, not isinstance: JSON makes no subclasses, and this runs per field.
        # Floats (most values) first; their finiteness is checked with the reading.
        elif kind is float or kind is bool or kind is str:
            fields.append((key, value))
        elif kind is int:
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


def _timestamp_ns(value: Any, unit: str) -> int:  # noqa: ANN401
    if type(value) is int:  # the usual case, first
        return value * NS_PER_UNIT[unit]
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
