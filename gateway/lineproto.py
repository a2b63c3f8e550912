r"""InfluxDB line protocol: exact, injection-proof encoding of points (DESIGN invariant 7).

Identifiers (measurement, tag keys and values, field keys) escape the characters that delimit
them. Control characters are refused, as is a backslash that the database would read as an escape
(before a delimiter, another backslash, or at the end): InfluxDB 1.x does not unescape `\\` in
identifiers, so such names cannot be stored exactly and are refused instead of altered.
String field values escape `\\` and `"`, which every InfluxDB version unescapes.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

from gateway.errors import DecodeError

if TYPE_CHECKING:
    from collections.abc import Iterable

    from gateway.model import FieldValue, Reading

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Longest identifier accepted ([limits] max_identifier_len); the database's own limit (64 KiB) is
# far too generous for sensors.
_max_identifier_len = 256

# Names the databases reserve: InfluxDB 1.x refuses a "time" key, 2.x the underscore names of Flux.
RESERVED_KEYS = frozenset({"time", "_measurement", "_field", "_value", "_time", "_start", "_stop"})

# Names repeat in every reading (field keys, tag values such as device ids), so those found valid
# are remembered; bounded, because hostile input can invent names without end.
VALID_NAME_CACHE_SIZE = 50_000
_valid_names: set[str] = set()

# A series and a field key are escaped once per distinct value, not once per reading (they
# repeat in every reading of a device); bounded like the valid-name cache.
ENCODED_CACHE_SIZE = 50_000
_series: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}
_field_keys: dict[str, str] = {}

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_AMBIGUOUS_BACKSLASH = re.compile(r"\\(?=[\\, =\"]|$)")
_MEASUREMENT_ESCAPES = str.maketrans({",": r"\,", " ": r"\ "})
_KEY_ESCAPES = str.maketrans({",": r"\,", " ": r"\ ", "=": r"\="})
_STRING_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"'})


def set_max_identifier_len(length: int) -> None:
    """Set the longest identifier accepted, for the process (the cache of valid names is too)."""
    global _max_identifier_len  # noqa: PLW0603 - one setting for the process-wide name cache
    _max_identifier_len = length
    _valid_names.clear()


def check_identifier(kind: str, name: str) -> None:
    """Refuse a name that cannot be written exactly.

    Raises:
        DecodeError: naming what is wrong with it.
    """
    if name in _valid_names:
        return
    if not name:
        raise DecodeError("empty_name", f"{kind} is empty")
    if len(name) > _max_identifier_len:
        raise DecodeError("name_too_long", f"{kind} is longer than {_max_identifier_len}")
    if _CONTROL.search(name):
        raise DecodeError("control_character", f"{kind} {name!r} holds a control character")
    check_text(kind, name)
    if _AMBIGUOUS_BACKSLASH.search(name):
        raise DecodeError(
            "ambiguous_backslash",
            f"{kind} {name!r} holds a backslash the database would read as an escape",
        )
    if len(_valid_names) >= VALID_NAME_CACHE_SIZE:
        _valid_names.clear()
    _valid_names.add(name)


def check_text(kind: str, text: str) -> None:
    r"""Refuse text that has no UTF-8 form: a lone surrogate, which a JSON `\ud800` escape makes.

    Python's `str` holds such code points, but a write body is UTF-8 bytes: unchecked, one
    would fail the encoding at the buffer, after the message was taken.

    Raises:
        DecodeError: naming where the text came from.
    """
    if text.isascii():
        return
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        raise DecodeError(
            "not_unicode", f"{kind} holds U+{ord(text[exc.start]):04X}, which UTF-8 cannot carry"
        ) from None


def check_field_value(key: str, value: FieldValue) -> None:
    """Refuse a value the database cannot store.

    Raises:
        DecodeError: naming the field.
    """
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise DecodeError("integer_out_of_range", f"field {key!r} does not fit in 64 bits")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise DecodeError("not_finite", f"field {key!r} is NaN or infinite")
    elif isinstance(value, str):
        if "\n" in value or "\r" in value:
            raise DecodeError("control_character", f"field {key!r} holds a line break")
        check_text(f"field {key!r}", value)
    else:
        raise DecodeError("bad_value_type", f"field {key!r} is a {type(value).__name__}")


def check_series(measurement: str, tags: tuple[tuple[str, str], ...]) -> None:
    """Refuse a measurement and tag set that cannot be written exactly.

    Raises:
        DecodeError: naming the offending part.
    """
    check_identifier("measurement", measurement)
    if measurement.startswith("#"):
        raise DecodeError("comment_measurement", "a measurement starting with '#' is a comment")
    check_tags(tags)


def check_tags(tags: tuple[tuple[str, str], ...]) -> None:
    """Refuse tag keys and values that cannot be written exactly.

    Raises:
        DecodeError: naming the offending tag.
    """
    for key, value in tags:
        check_identifier("tag key", key)
        if key in RESERVED_KEYS:
            raise DecodeError("reserved_name", f"tag key {key!r} is reserved by the database")
        check_identifier(f"tag {key!r} value", value)


def check_fields(
    reading: Reading, tag_keys: frozenset[str] | None = None, max_string_len: int | None = None
) -> None:
    """Refuse fields that cannot be written exactly (the series is checked by `check_series`).

    `tag_keys` are the reading's tag keys, when the caller knows them already; strings longer
    than `max_string_len` are refused (in this loop: it runs for every reading).

    Raises:
        DecodeError: naming the offending field.
    """
    if not reading.fields:
        raise DecodeError("no_fields", "the reading has no field")
    if tag_keys is None:
        tag_keys = frozenset(key for key, _ in reading.tags)
    for key, field_value in reading.fields:
        if key not in _valid_names:
            check_identifier("field key", key)
        if key in RESERVED_KEYS:
            raise DecodeError("reserved_name", f"field key {key!r} is reserved by the database")
        if key in tag_keys:
            raise DecodeError("field_is_tag", f"field {key!r} has the name of a tag")
        # A finite float (most values) is fine as it is: x - x is 0.0 only when x is finite.
        if type(field_value) is not float or field_value - field_value != 0.0:
            check_field_value(key, field_value)
            if (
                max_string_len is not None
                and type(field_value) is str
                and len(field_value) > max_string_len
            ):
                raise DecodeError(
                    "string_too_long", f"field {key!r} is longer than {max_string_len}"
                )
    if not INT64_MIN <= reading.ts_ns <= INT64_MAX:
        raise DecodeError("timestamp_out_of_range", "timestamp does not fit in 64-bit ns")


def check_reading(reading: Reading) -> None:
    """Refuse a reading that cannot be encoded exactly; see the module docstring.

    Raises:
        DecodeError: naming the offending part.
    """
    check_series(reading.measurement, reading.tags)
    check_fields(reading)


def encode_value(value: FieldValue) -> str:
    """One field value in line-protocol syntax; assumes `check_field_value` passed."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        return repr(value)  # shortest text that reads back as the same double
    return f'"{value.translate(_STRING_ESCAPES)}"'


def encode_series(measurement: str, tags: tuple[tuple[str, str], ...]) -> str:
    """`measurement,tag=value,...` escaped; assumes `check_series` passed."""
    key = (measurement, tags)
    series = _series.get(key)
    if series is None:
        escaped = "".join(
            f",{k.translate(_KEY_ESCAPES)}={v.translate(_KEY_ESCAPES)}" for k, v in tags
        )
        series = f"{measurement.translate(_MEASUREMENT_ESCAPES)}{escaped}"
        if len(_series) >= ENCODED_CACHE_SIZE:
            _series.clear()
        _series[key] = series
    return series


def encode_fields(fields: tuple[tuple[str, FieldValue], ...]) -> str:
    """`key=value,...` escaped and typed; assumes `check_fields` passed."""
    parts = []
    for key, value in fields:
        escaped = _field_keys.get(key)
        if escaped is None:
            if len(_field_keys) >= ENCODED_CACHE_SIZE:
                _field_keys.clear()
            escaped = _field_keys[key] = key.translate(_KEY_ESCAPES) + "="
        # Floats first: JSON numbers are floats unless asked otherwise, so most values are.
        parts.append(escaped + (repr(value) if type(value) is float else encode_value(value)))
    return ",".join(parts)


def encode_point(reading: Reading) -> str:
    """One point as a line (no newline); assumes `check_reading` passed."""
    series = encode_series(reading.measurement, reading.tags)
    return f"{series} {encode_fields(reading.fields)} {reading.ts_ns}"


def encode_batch(readings: Iterable[Reading]) -> bytes:
    """A write body: one line per point."""
    return "\n".join(encode_point(r) for r in readings).encode()
