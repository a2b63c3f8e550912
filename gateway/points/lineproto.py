r"""InfluxDB line protocol: exact, injection-proof encoding of checked points (DESIGN invariant 7).

Identifiers (measurement, tag keys and values, field keys) escape the characters that delimit
them; string field values escape `\\` and `"`, which every InfluxDB version unescapes. What may
be encoded at all is decided first, by gateway/points/names.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.points.model import FieldValue

# A series and a field key are escaped once per distinct value, not once per reading (they
# repeat in every reading of a device); bounded, because hostile input can invent names.
ENCODED_CACHE_SIZE = 50_000
_series: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}
_series_bytes: dict[tuple[str, tuple[tuple[str, str], ...]], bytes] = {}
_field_keys: dict[str, str] = {}

_MEASUREMENT_ESCAPES = str.maketrans({",": r"\,", " ": r"\ "})
_KEY_ESCAPES = str.maketrans({",": r"\,", " ": r"\ ", "=": r"\="})
_STRING_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"'})


def encode_value(value: FieldValue) -> str:
    """One field value in line-protocol syntax; assumes names.check_field_value passed."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        return repr(value)  # shortest text that reads back as the same double
    return f'"{value.translate(_STRING_ESCAPES)}"'


def encode_series(measurement: str, tags: tuple[tuple[str, str], ...]) -> str:
    """`measurement,tag=value,...` escaped; assumes Names.check_series passed."""
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


def encode_series_bytes(measurement: str, tags: tuple[tuple[str, str], ...]) -> bytes:
    """`encode_series` as UTF-8, as the buffer stores it (once per series, not per reading)."""
    key = (measurement, tags)
    series = _series_bytes.get(key)
    if series is None:
        if len(_series_bytes) >= ENCODED_CACHE_SIZE:
            _series_bytes.clear()
        series = _series_bytes[key] = encode_series(measurement, tags).encode()
    return series


def encode_fields(fields: tuple[tuple[str, FieldValue], ...]) -> str:
    """`key=value,...` escaped and typed; assumes Names.check_fields passed."""
    keys = _field_keys
    # Floats first: JSON numbers are floats unless asked otherwise, so most values are.
    return ",".join(
        [
            (keys.get(key) or _field_key(key))
            + (repr(value) if type(value) is float else encode_value(value))
            for key, value in fields
        ]
    )


def _field_key(key: str) -> str:
    if len(_field_keys) >= ENCODED_CACHE_SIZE:
        _field_keys.clear()
    escaped = _field_keys[key] = key.translate(_KEY_ESCAPES) + "="
    return escaped
