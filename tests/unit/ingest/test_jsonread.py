"""JSON payloads read by orjson, with the standard library behind it: the same values as before."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import DecodeError
from gateway.ingest.core.jsonread import json_objects

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
readings = st.dictionaries(st.text(), values, max_size=6)


def beyond_64_bits_as_float(value: object) -> object:
    """What `integers = "float"` makes of a value the standard library read."""
    if type(value) is int and not -(2**63) <= value < 2**64:
        return float(value)
    if isinstance(value, list):
        return [beyond_64_bits_as_float(v) for v in value]
    if isinstance(value, dict):
        return {k: beyond_64_bits_as_float(v) for k, v in value.items()}
    return value


def as_objects(value: object) -> list[object]:
    return value if isinstance(value, list) else [value]


@given(st.one_of(readings, st.lists(readings, min_size=1, max_size=5)))
def test_what_a_sensor_sends_reads_as_the_standard_library_reads_it(payload: object) -> None:
    text = json.dumps(payload)
    expected = json.loads(text)
    assert json_objects(text, exact_integers=True) == as_objects(expected)
    assert json_objects(text) == as_objects(beyond_64_bits_as_float(expected))


def test_what_only_the_standard_library_reads_is_still_read() -> None:
    """NaN, huge integers and lone surrogates reach the per-reading checks, as before."""
    (obj,) = json_objects('{"a": NaN, "c": "\\ud800"}')
    assert math.isnan(obj["a"])
    assert obj["c"] == "\ud800"
    (exact,) = json_objects('{"b": 123456789012345678901234567890}', exact_integers=True)
    assert exact["b"] == 123456789012345678901234567890


@pytest.mark.parametrize("text", ["{", "[]", "1", '"x"', "[" * 100_000])
def test_what_is_no_reading_is_bad_json(text: str) -> None:
    with pytest.raises(DecodeError) as raised:
        json_objects(text)
    assert raised.value.reason == "bad_json"
