"""Hostile input: limits, and property tests over the decoders with anything a sensor can send.

Whatever the topic and payload, `Decoder.decode` returns; every message is accepted or counted
invalid; and every accepted reading encodes to a line that parses back to exactly that reading,
so nothing in a payload can add points, tags or fields of its own making.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import LimitSettings, Subscription
from gateway.decode import Decoder
from gateway.lineparse import parse_lines
from gateway.lineproto import encode_point

FUZZER = Path(__file__).parents[1] / "fuzz" / "fuzz_decode.py"
FUZZ_RUNS = 50_000
NOW_NS = 1_750_000_000_000_000_000
NOW_MS = NOW_NS // 10**6
SUBSCRIPTIONS = [
    Subscription(topic="j/{device}/{measurement}", format="json"),
    Subscription(topic="l/{site}/{device}", format="line"),
    Subscription(topic="v/{device}", measurement="level", format="value"),
]
METACHARACTERS = ',= "\\\n\r\t#{}[]/+\x00\x7f'
hostile_text = st.text(
    st.one_of(
        st.characters(codec="utf-8", exclude_categories=("Cs",)), st.sampled_from(METACHARACTERS)
    ),
    max_size=40,
)
levels = st.one_of(hostile_text, st.sampled_from(["", "+", "#", "dev-1", "a b", "x=y", "a,b"]))
topics = st.builds(
    lambda prefix, parts: "/".join([prefix, *parts]),
    st.sampled_from(["j", "l", "v", "other", ""]),
    st.lists(levels, min_size=0, max_size=4),
)
json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),
        hostile_text,
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(hostile_text, children, max_size=4)
    ),
    max_leaves=20,
)
json_payloads = st.one_of(
    st.dictionaries(st.one_of(hostile_text, st.just("ts"), st.just("tags")), json_values),
    st.lists(st.dictionaries(hostile_text, json_values, max_size=5), max_size=5),
).map(lambda value: json.dumps(value).encode())
line_payloads = st.lists(hostile_text, max_size=5).map(lambda lines: "\n".join(lines).encode())
payloads = st.one_of(st.binary(max_size=300), json_payloads, line_payloads)


def assert_sound(topic: str, payload: bytes, decoder: Decoder) -> None:
    result = decoder.decode(topic, payload, NOW_NS)
    assert result.readings or result.errors, "neither accepted nor counted"
    for reading in result.readings:
        line = encode_point(reading)
        ((measurement, tags, fields, ts),) = parse_lines(line)
        assert (measurement, tuple(tags), tuple(fields), ts) == (
            reading.measurement,
            reading.tags,
            reading.fields,
            reading.ts_ns,
        )
        assert ("device", reading.device) in reading.tags


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(topic=topics, payload=payloads)
def test_any_topic_and_payload_is_accepted_or_counted(topic: str, payload: bytes) -> None:
    assert_sound(topic, payload, Decoder(SUBSCRIPTIONS))


@settings(max_examples=300)
@given(device=levels, payload=st.one_of(json_payloads, st.binary(max_size=100)))
def test_json_readings_round_trip_exactly(device: str, payload: bytes) -> None:
    assert_sound(f"j/{device}/m", payload, Decoder(SUBSCRIPTIONS))


@settings(max_examples=300)
@given(site=levels, device=levels, payload=line_payloads)
def test_line_readings_round_trip_exactly(site: str, device: str, payload: bytes) -> None:
    assert_sound(f"l/{site}/{device}", payload, Decoder(SUBSCRIPTIONS))


def test_huge_and_deeply_nested_json_are_refused() -> None:
    decoder = Decoder(SUBSCRIPTIONS)
    deep = b"[" * 200_000 + b"]" * 200_000
    assert decoder.decode("j/d/m", deep, NOW_NS).errors[0].reason == "payload_too_large"
    nested = json.dumps({"ts": NOW_MS, "v": {"a": [{"b": 1}]}}).encode()
    assert decoder.decode("j/d/m", nested, NOW_NS).errors[0].reason == "bad_value_type"
    too_deep = b"[" * 5000 + b"]" * 5000
    assert decoder.decode("j/d/m", too_deep, NOW_NS).errors[0].reason == "bad_json"


def test_each_limit_refuses_with_its_reason() -> None:
    limits = LimitSettings(
        max_payload_bytes=2000,
        max_readings_per_message=3,
        max_fields_per_reading=2,
        max_tags=3,
        max_identifier_len=20,
        max_string_len=5,
        max_future_s=60,
        max_age_s=3600,
    )
    decoder = Decoder(SUBSCRIPTIONS, limits)

    def reason(obj: object) -> str:
        result = decoder.decode("j/d/m", json.dumps(obj).encode(), NOW_NS)
        assert not result.readings
        return result.errors[0].reason

    assert reason([{"v": 1}] * 4) == "too_many_readings"
    assert reason({"a": 1, "b": 2, "c": 3}) == "too_many_fields"
    assert reason({"v": 1, "tags": {"x": "1", "y": "2", "z": "3"}}) == "too_many_tags"
    assert reason({"v": "longer"}) == "string_too_long"
    assert reason({"v": 1, "x" * 21: 2}) == "name_too_long"
    assert reason({"v": 1, "ts": NOW_MS + 61_000}) == "timestamp_too_far_in_future"
    assert reason({"v": 1, "ts": NOW_MS - 3_601_000}) == "timestamp_too_far_in_past"
    assert reason({"v": float("nan")}) == "not_finite"
    assert reason({"v": [1, 2]}) == "bad_value_type"
    big = decoder.decode("j/d/m", b" " * 2001, NOW_NS)
    assert big.errors[0].reason == "payload_too_large"
    ok = decoder.decode("j/d/m", json.dumps({"v": 1, "ts": NOW_MS - 3_599_000}).encode(), NOW_NS)
    assert len(ok.readings) == 1


def test_a_field_named_like_a_tag_is_refused_or_renamed() -> None:
    payload = json.dumps({"device": "spoofed", "v": 1}).encode()
    refused = Decoder(SUBSCRIPTIONS).decode("j/d1/m", payload, NOW_NS)
    assert [e.reason for e in refused.errors] == ["field_is_tag"]
    renamed = Decoder(SUBSCRIPTIONS, LimitSettings(field_named_like_tag="rename"))
    (reading,) = renamed.decode("j/d1/m", payload, NOW_NS).readings
    assert reading.fields == (("device_field", "spoofed"), ("v", 1.0))
    assert ("device", "d1") in reading.tags


def test_coverage_guided_fuzzing_finds_nothing() -> None:
    """tests/fuzz/fuzz_decode.py under atheris for a bounded number of inputs."""
    pytest.importorskip("atheris")
    result = subprocess.run(
        [sys.executable, str(FUZZER), f"-runs={FUZZ_RUNS}", "-max_len=2048", "-seed=1"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Done {FUZZ_RUNS} runs" in result.stderr
