"""The JSON payload format: objects (or arrays of them) whose keys are fields, tags or the time.

A key named like the subscription's `timestamp_key` is the reading's time (a number in
`timestamp_unit`, or ISO 8601 text); the key `tags` holds an object of string tags; every other
key is a field, whose value must be a number, a boolean or a string. Values are told apart by
their exact type: JSON makes no subclasses, and this runs for every field.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

import orjson

from gateway.errors import DecodeError
from gateway.points.model import FieldValue

if TYPE_CHECKING:
    from gateway.config.mqtt import Subscription

NS_PER_UNIT = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}
TAGS_KEY = "tags"
_UNREAD = object()
_ABSENT = object()


def json_objects(text: str, *, exact_integers: bool = False) -> list[Any]:
    """The payload's readings as parsed JSON objects (one object, or an array of them).

    orjson parses what it accepts the way the standard library does, in a fifth of the time,
    except that it reads an integer beyond 64 bits as the nearest float: what `integers =
    "float"` makes of it anyway. With `exact_integers` (`integers = "int"`, where such an
    integer is refused) the standard library reads the payload. What orjson refuses is read
    again by the standard library, which reads more: NaN, Infinity and strings with lone
    surrogates parse there and are then refused per reading (not_finite, not UTF-8), so one
    such value does not cost the message's other readings.

    Raises:
        DecodeError: `bad_json`.
    """
    data: Any = _UNREAD
    if not exact_integers:
        with contextlib.suppress(orjson.JSONDecodeError):
            data = orjson.loads(text)
    if data is _UNREAD:
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise DecodeError("bad_json", str(exc)[:200]) from None
    if isinstance(data, dict):
        return [data]
    if isinstance(data, list) and data:
        return data
    raise DecodeError("bad_json", "payload must be an object or a non-empty array of objects")


JsonReading = tuple[dict[str, str], Sequence[tuple[str, FieldValue]], int | None]


def json_reading(sub: Subscription, obj: object) -> JsonReading:
    """The tags, fields and timestamp (ns, None when absent) of one JSON object.

    Raises:
        DecodeError: naming what is wrong with it.
    """
    if not isinstance(obj, dict):
        raise DecodeError("bad_json", "array item is not an object")
    # The object is the parser's own: the time and the tags are taken out of it, and what is
    # left are the fields, in the sensor's order.
    ts_ns = None
    stamp = obj.pop(sub.timestamp_key, _ABSENT)
    if stamp is not _ABSENT:
        ts_ns = _timestamp_ns(stamp, sub.timestamp_unit or "ms")
    tagged = obj.pop(TAGS_KEY, _ABSENT)
    tags: dict[str, str] = {} if tagged is _ABSENT else _json_tags(tagged)
    # Exact types, not isinstance: JSON makes no subclasses, and this runs per field. Floats,
    # booleans and strings are taken as they are (finiteness is checked with the reading).
    for value in obj.values():
        kind = type(value)
        if kind is not float and kind is not str and kind is not bool:
            return tags, [_field(sub, key, value) for key, value in obj.items()], ts_ns
    # A tuple already: the reading keeps it as it is.
    return tags, tuple(obj.items()), ts_ns


def _field(sub: Subscription, key: str, value: Any) -> tuple[str, FieldValue]:  # noqa: ANN401
    kind = type(value)
    if kind is float or kind is bool or kind is str:
        return key, value
    if kind is int:
        return key, _number(value, sub.integers, key)
    what = "null" if value is None else type(value).__name__
    raise DecodeError("bad_value_type", f"field {key!r} is {what}, not a number, boolean or string")


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
