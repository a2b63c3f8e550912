"""Decoding payloads into readings: formats, mapping, refusals, and no crash on any input."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config.mqtt import Subscription
from gateway.config.sections import LimitSettings
from gateway.ingest.core.decode import Decoder
from gateway.points.model import Reading
from tests.points import encode_point

NOW_NS = 1_750_000_000_123_456_789
# The receipt time a reading without a timestamp gets: NOW_NS in whole multiples of 8 ns.
RECEIPT_NS = 1_750_000_000_123_456_784
# The mapping tests use small timestamps (1 ms after 1970); the limit tests use the defaults.
ANY_AGE = LimitSettings(max_age_s=1e11)


def decoder(**kwargs: object) -> Decoder:
    fields: dict[str, object] = {"topic": "sensors/{device}/{measurement}"} | kwargs
    return Decoder([Subscription.model_validate(fields)], ANY_AGE)


def test_default_mapping_is_the_documented_point() -> None:
    """The example message of docs/data-mapping.md becomes exactly its point."""
    result = decoder().decode(
        "sensors/dev-1/telemetry", b'{"ts": 1700000000000, "temp": 21.5, "hum": 40.2}', NOW_NS
    )
    assert not result.errors
    assert [encode_point(r) for r in result.readings] == [
        "telemetry,device=dev-1 temp=21.5,hum=40.2 1700000000000000000"
    ]


def test_missing_timestamp_takes_time_of_receipt() -> None:
    """Without ts the reading is stamped with the receipt time passed in, low 3 bits cleared."""
    (reading,) = decoder().decode("sensors/d/m", b'{"v": 1}', NOW_NS).readings
    assert reading.ts_ns == RECEIPT_NS


@pytest.mark.parametrize(
    ("sub", "payload"),
    [
        ({"topic": "sensors/{device}/{measurement}"}, b'{"v": 1}'),
        ({"topic": "sensors/{device}/{measurement}", "format": "value"}, b"2.5"),
        ({"topic": "sensors/{device}/m", "format": "line"}, b"m v=1"),
    ],
)
@given(now_ns=st.integers(min_value=NOW_NS - 10**12, max_value=NOW_NS + 10**12))
def test_receipt_stamps_are_multiples_of_8(
    sub: dict[str, str], payload: bytes, now_ns: int
) -> None:
    """A stamp of receipt never has the low bits set that carry a summary's level."""
    (reading,) = (
        Decoder([Subscription.model_validate(sub)], ANY_AGE)
        .decode("sensors/d/m", payload, now_ns)
        .readings
    )
    assert reading.ts_ns % 8 == 0
    assert now_ns - 8 < reading.ts_ns <= now_ns


@pytest.mark.parametrize(
    ("unit", "ts", "expected_ns"),
    [
        ("s", 1700000000, 1700000000 * 10**9),
        ("s", 1700000000.123, 1700000000123000000),
        ("ms", 1700000000123, 1700000000123000000),
        ("us", 1700000000123456, 1700000000123456000),
        ("ns", 1700000000123456789, 1700000000123456789),
        ("ms", "2023-11-14T22:13:20.5Z", 1700000000500000000),
        ("ms", "2023-11-14T23:13:20+01:00", 1700000000000000000),
        ("ms", "2023-11-14T22:13:20", 1700000000000000000),
    ],
)
def test_timestamp_units(unit: str, ts: object, expected_ns: int) -> None:
    """Epoch numbers in each unit and ISO 8601 strings convert exactly."""
    payload = json.dumps({"ts": ts, "v": 1}).encode()
    (reading,) = decoder(timestamp_unit=unit).decode("sensors/d/m", payload, NOW_NS).readings
    assert reading.ts_ns == expected_ns


def test_json_array_tags_and_static_tags() -> None:
    """Arrays give one reading per object; payload, topic and static tags merge."""
    d = Decoder(
        [Subscription(topic="f/{site}/{device}", measurement="env", tags={"region": "eu"})], ANY_AGE
    )
    payload = json.dumps([{"ts": 1, "t": 1.5, "tags": {"room": "a"}}, {"ts": 2, "t": 2}])
    result = d.decode("f/s1/d1", payload.encode(), NOW_NS)
    assert result.readings == [
        Reading(
            "d1",
            "env",
            (("device", "d1"), ("region", "eu"), ("room", "a"), ("site", "s1")),
            (("t", 1.5),),
            1_000_000,
        ),
        Reading(
            "d1",
            "env",
            (("device", "d1"), ("region", "eu"), ("site", "s1")),
            (("t", 2.0),),
            2_000_000,
        ),
    ]


def test_numbers_are_floats_unless_integers_int() -> None:
    """JSON numbers are type-stable floats by default; integers='int' keeps integers."""
    payload = b'{"ts": 1, "n": 21, "x": 2.5, "ok": true, "s": "txt"}'
    (as_float,) = decoder().decode("sensors/d/m", payload, NOW_NS).readings
    assert as_float.fields == (("n", 21.0), ("x", 2.5), ("ok", True), ("s", "txt"))
    assert isinstance(as_float.fields[0][1], float)
    (as_int,) = decoder(integers="int").decode("sensors/d/m", payload, NOW_NS).readings
    assert as_int.fields[0] == ("n", 21)
    assert isinstance(as_int.fields[0][1], int)


def test_value_format() -> None:
    """A plain number becomes the configured field."""
    d = decoder(format="value", value_field="level")
    (reading,) = d.decode("sensors/tank/depth", b" 12.5\n", NOW_NS).readings
    assert reading.fields == (("level", 12.5),)
    assert d.decode("sensors/tank/depth", b"abc", NOW_NS).errors[0].reason == "bad_value"
    assert d.decode("sensors/tank/depth", b"1e999", NOW_NS).errors[0].reason == "not_finite"


def test_line_format_adds_device_and_keeps_types() -> None:
    """Line protocol keeps measurement, tags and types; the device tag comes from the topic."""
    d = Decoder([Subscription(topic="lp/{device}", format="line")], ANY_AGE)
    payload = b'# comment\nm,a=1 f=1.5,i=-3i,b=T,s="q\\"x" 17\n\nm2 v=2u'
    result = d.decode("lp/d9", payload, NOW_NS)
    assert not result.errors
    assert result.readings == [
        Reading(
            "d9",
            "m",
            (("a", "1"), ("device", "d9")),
            (("f", 1.5), ("i", -3), ("b", True), ("s", 'q"x')),
            17,
        ),
        Reading("d9", "m2", (("device", "d9"),), (("v", 2),), RECEIPT_NS),
    ]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff", "not_utf8"),
        (b"{", "bad_json"),
        (b"[]", "bad_json"),
        (b"3", "bad_json"),
        (b'{"v": NaN}', "not_finite"),
        (b'{"v": 1e999}', "not_finite"),
        (b'{"v": null}', "bad_value_type"),
        (b'{"v": {"a": 1}}', "bad_value_type"),
        (b'{"v": [1]}', "bad_value_type"),
        (b'{"ts": 1}', "no_fields"),
        (b'{"ts": true, "v": 1}', "bad_timestamp"),
        (b'{"ts": "soon", "v": 1}', "bad_timestamp"),
        (b'{"v": 1, "tags": {"device": "x"}}', "tag_conflict"),
        (b'{"v": 1, "tags": {"a": 1}}', "bad_tags"),
        (b'{"device": 1}', "field_is_tag"),
        (b'{"time": 1}', "reserved_name"),
        (b'{"a\\nb": 1}', "control_character"),
        (b'{"s": "two\\nlines"}', "control_character"),
        (b'{"a\\\\": 1}', "ambiguous_backslash"),
        (b"[" * 100_000 + b"]" * 100_000, "bad_json"),
    ],
)
def test_bad_json_payloads_are_refused_with_a_reason(payload: bytes, reason: str) -> None:
    """Each kind of bad input is one counted error with a stable reason."""
    result = decoder().decode("sensors/d/m", payload, NOW_NS)
    assert not result.readings
    assert [e.reason for e in result.errors] == [reason]


def test_bad_item_does_not_cost_the_others() -> None:
    """In an array, the valid readings survive an invalid neighbour."""
    payload = b'[{"ts": 1, "v": 1}, {"ts": 2, "v": NaN}, 7, {"ts": 3, "v": 3}]'
    result = decoder().decode("sensors/d/m", payload, NOW_NS)
    assert [r.ts_ns for r in result.readings] == [1_000_000, 3_000_000]
    assert [e.reason for e in result.errors] == ["not_finite", "bad_json"]


def test_topic_problems() -> None:
    """Unmatched topics and bad topic levels are errors, not crashes."""
    d = decoder()
    assert d.decode("other/x", b"{}", NOW_NS).errors[0].reason == "no_subscription"
    assert d.decode("sensors//m", b'{"v":1}', NOW_NS).errors[0].reason == "empty_topic_level"
    assert d.decode("sensors/d\x01/m", b'{"v":1}', NOW_NS).errors[0].reason == "control_character"


@given(topic=st.text(max_size=60), payload=st.binary(max_size=300))
def test_arbitrary_input_never_raises(topic: str, payload: bytes) -> None:
    """Any topic and bytes decode to readings and counted errors, never an exception."""
    for d in (
        decoder(),
        decoder(format="value"),
        Decoder([Subscription(topic="{device}/#", format="line")], ANY_AGE),
    ):
        result = d.decode(topic, payload, NOW_NS)
        for reading in result.readings:
            encode_point(reading)


json_scalars = st.one_of(
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(2**53), 2**53),
    st.text(max_size=20),
)


@given(st.lists(st.dictionaries(st.text(max_size=12), json_scalars, max_size=6), max_size=5))
def test_arbitrary_json_objects_never_raise(objects: list[dict[str, object]]) -> None:
    """Arbitrary JSON objects are accepted or refused with a reason, never an exception."""
    result = decoder().decode("sensors/d/m", json.dumps(objects).encode(), NOW_NS)
    assert len(result.readings) + len(result.errors) >= min(1, len(objects))
    for reading in result.readings:
        assert all(not isinstance(v, float) or math.isfinite(v) for _, v in reading.fields)
