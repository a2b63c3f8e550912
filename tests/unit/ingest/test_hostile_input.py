"""Hostile input: limits, and property tests over the whole path with anything a sensor can send.

Whatever the topic and payload, nothing on the way from the raw message to the write body raises
(tests/wholepath.py); every message is accepted or counted invalid; and every accepted reading
arrives in the body exactly, so nothing in a payload can add points, tags or fields of its own
making, nor stop the gateway.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.buffer.core.ledger import MAX_DEVICE_BYTES, fifo_name
from gateway.buffer.store import Buffer
from gateway.config.sections import LimitSettings
from gateway.ingest.core.decode import Decoder
from gateway.points.lineparse import parse_lines
from tests.points import encode_point
from tests.wholepath import LIMITS, NOW_NS, SUBSCRIPTIONS, check_message, split_message

if TYPE_CHECKING:
    from collections.abc import Iterator

FUZZER = Path(__file__).parents[2] / "fuzz" / "fuzz_path.py"
CORPUS = Path(__file__).parents[2] / "fuzz" / "corpus"
FUZZ_RUNS = 300_000
NOW_MS = NOW_NS // 10**6
METACHARACTERS = ',= "\\\n\r\t#{}[]/+\x00\x7f'
hostile_text = st.text(
    st.one_of(
        st.characters(codec="utf-8", exclude_categories=("Cs",)), st.sampled_from(METACHARACTERS)
    ),
    max_size=40,
)
# Valid names as long as [limits] allows, in characters of every UTF-8 length: a device or a
# series can be longer in bytes than a key of the buffer's store.
long_names = st.builds(
    lambda char, length: char * length,
    st.sampled_from(["x", "\u00e9", "\u20ac", "\U0001f321"]),
    st.integers(90, LIMITS.max_identifier_len),
)
levels = st.one_of(
    hostile_text, long_names, st.sampled_from(["", "+", "#", "dev-1", "a b", "x=y", "a,b"])
)
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
# JSON text as a sensor may write it: escapes that json.dumps would never make (lone and
# reversed surrogate halves, NUL), BOMs, bytes that are not UTF-8 (overlong, truncated, encoded
# surrogates), and keys that differ only by Unicode normalisation.
JSON_PIECES = [
    "\\ud800", "\\udfff", "\\ud83d\\ude00", "\\ude00\\ud83d", "\\u0000", "\\\\", '\\"',
    "\ufeff", "caf\u00e9", "cafe\u0301", "\u212b", "\u00c5", "x", "1", ",", "=", " ",
]  # fmt: skip
BAD_BYTES = [b"\xc0\xaf", b"\xe2\x82", b"\xed\xa0\x80", b"\xef\xbb\xbf", b"\xff"]
json_strings = st.lists(st.sampled_from(JSON_PIECES), max_size=4).map("".join)
raw_json_payloads = st.builds(
    lambda pairs, bom, ts: (
        ("\ufeff" if bom else "")
        + "{"
        + ", ".join(f'"{k}": {v}' for k, v in [*pairs, ("ts", str(ts))])
        + "}"
    ).encode(),
    st.lists(
        st.tuples(
            json_strings,
            st.one_of(json_strings.map(lambda t: f'"{t}"'), st.sampled_from(["1", "2.5", "true"])),
        ),
        max_size=4,
    ),
    st.booleans(),
    st.integers(NOW_MS - 10, NOW_MS),
)
spliced = st.builds(
    lambda good, bad, at: good[:at] + bad + good[at:],
    raw_json_payloads,
    st.sampled_from(BAD_BYTES),
    st.integers(0, 40),
)
payloads = st.one_of(
    st.binary(max_size=300), json_payloads, line_payloads, raw_json_payloads, spliced
)


def assert_sound(topic: str, payload: bytes, decoder: Decoder) -> None:
    check_message(decoder, topic.encode("utf-8", "surrogatepass"), payload)
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
    assert_sound(topic, payload, Decoder(SUBSCRIPTIONS, LIMITS))


@settings(max_examples=300)
@given(device=levels, payload=st.one_of(json_payloads, st.binary(max_size=100)))
def test_json_readings_round_trip_exactly(device: str, payload: bytes) -> None:
    assert_sound(f"j/{device}/m", payload, Decoder(SUBSCRIPTIONS, LIMITS))


@settings(max_examples=300)
@given(site=levels, device=levels, payload=line_payloads)
def test_line_readings_round_trip_exactly(site: str, device: str, payload: bytes) -> None:
    assert_sound(f"l/{site}/{device}", payload, Decoder(SUBSCRIPTIONS, LIMITS))


def test_huge_and_deeply_nested_json_are_refused() -> None:
    decoder = Decoder(SUBSCRIPTIONS, LIMITS)
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


def test_a_device_name_longer_than_the_buffer_can_key_is_refused() -> None:
    decoder = Decoder(SUBSCRIPTIONS, LIMITS)
    (reading,) = decoder.decode("v/" + "\U0001f321" * 100, b"1", NOW_NS).readings
    assert len(reading.device.encode()) == MAX_DEVICE_BYTES
    for topic in ("v/" + "\U0001f321" * 101, "j/" + "\u20ac" * 134 + "/m"):
        refused = decoder.decode(topic, b"1", NOW_NS)
        assert (refused.readings, [e.reason for e in refused.errors]) == ([], ["device_too_long"])


def test_a_field_named_like_a_tag_is_refused_or_renamed() -> None:
    payload = json.dumps({"device": "spoofed", "v": 1}).encode()
    refused = Decoder(SUBSCRIPTIONS, LIMITS).decode("j/d1/m", payload, NOW_NS)
    assert [e.reason for e in refused.errors] == ["field_is_tag"]
    renamed = Decoder(SUBSCRIPTIONS, LimitSettings(field_named_like_tag="rename"))
    (reading,) = renamed.decode("j/d1/m", payload, NOW_NS).readings
    assert reading.fields == (("device_field", "spoofed"), ("v", 1.0))
    assert ("device", "d1") in reading.tags


def test_coverage_guided_fuzzing_finds_nothing(tmp_path: Path) -> None:
    """tests/fuzz/fuzz_path.py under atheris, from the seed corpus, for a bounded run."""
    pytest.importorskip("atheris")
    corpus = tmp_path / "corpus"
    shutil.copytree(CORPUS, corpus)  # libFuzzer adds what it finds to the corpus it is given
    result = subprocess.run(
        [
            sys.executable,
            str(FUZZER),
            f"-runs={FUZZ_RUNS}",
            "-max_len=4096",
            "-seed=1",
            "-timeout=10",
            str(corpus),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Done {FUZZ_RUNS} runs" in result.stderr


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(device=levels, payload=st.one_of(raw_json_payloads, spliced))
def test_json_text_a_sensor_may_write_is_taken_or_counted(device: str, payload: bytes) -> None:
    """Escapes json.dumps never makes, BOMs and broken UTF-8 end invalid or exact, never raise."""
    check_message(Decoder(SUBSCRIPTIONS, LIMITS), f"j/{device}/m".encode(), payload)


@pytest.fixture(scope="module")
def buffer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Buffer]:
    with Buffer(tmp_path_factory.mktemp("buffer"), 64 << 20, sync="none") as b:
        yield b


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(topic=topics, payload=payloads)
@example(topic="v/" + "\U0001f321" * 100, payload=b"1")
@example(
    topic="l/" + "s" * 256 + "/" + "\u20ac" * 133,
    payload=b"m," + b"t" * 200 + b"=" + b"v" * 256 + b" x=1",
)
def test_the_whole_path_through_a_real_buffer_is_exact(
    topic: str, payload: bytes, buffer: Buffer
) -> None:
    """Decode, store in LMDB, read back, coalesce, encode, parse: the readings, exactly.

    Under the device's own FIFO, and through a checkpoint, which writes its name and series.
    """
    decoder = Decoder(SUBSCRIPTIONS, LIMITS)
    readings = decoder.decode(topic, payload, NOW_NS).readings
    fifo = fifo_name(readings[0].device if readings else "d", "default")

    def through_lmdb(packed: list[bytes]) -> list[bytes]:
        buffer.append([(fifo, value) for value in packed])
        (span,) = buffer.read([(fifo, len(packed))])
        buffer.delete([(fifo, span.first_seq, len(span.values))], [])
        buffer.checkpoint()
        return [bytes(v) for v in span.values]

    check_message(decoder, topic.encode(), payload, through_lmdb)


@pytest.mark.parametrize("seed", sorted(p.name for p in CORPUS.iterdir()))
def test_each_seed_of_the_fuzzing_corpus_keeps_the_contract(seed: str) -> None:
    """The hand-made hostile messages of tests/fuzz/corpus/ pass the whole-path check."""
    check_message(Decoder(SUBSCRIPTIONS, LIMITS), *split_message((CORPUS / seed).read_bytes()))


@pytest.mark.parametrize(
    ("topic", "payload"),
    [
        ("j/d/m", b'{"ts": 1750000000000, "note": "\\ud800"}'),
        ("j/d/m", b'{"\\udfff": 1}'),
        ("j/d/m", b'{"v": 1, "tags": {"t": "\\udbff"}}'),
        ("j/d/m", b'{"v": 1, "tags": {"\\ud800": "x"}}'),
        ("j/d/m", b'{"s": "\\ude00\\ud83d"}'),
    ],
)
def test_a_lone_surrogate_anywhere_is_invalid_with_its_own_reason(
    topic: str, payload: bytes
) -> None:
    """JSON escapes of surrogate halves make text UTF-8 cannot carry: `not_unicode`."""
    result = Decoder(SUBSCRIPTIONS, LIMITS).decode(topic, payload, NOW_NS)
    assert not result.readings
    assert [e.reason for e in result.errors] == ["not_unicode"]


def test_a_paired_surrogate_escape_is_one_character_and_lands_exactly() -> None:
    """`\\ud83c\\udf21` is U+1F321, valid UTF-8: taken, not refused."""
    payload = b'{"\\ud83c\\udf21": 21.5}'
    (reading,) = Decoder(SUBSCRIPTIONS, LIMITS).decode("j/d/m", payload, NOW_NS).readings
    assert reading.fields == (("\U0001f321", 21.5),)
    check_message(Decoder(SUBSCRIPTIONS, LIMITS), b"j/d/m", payload)


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("i/d", b"1" * 5000, "integer_out_of_range"),
        ("i/d", b"-" + b"0" * 40 + b"7", None),
        ("l/s/d", b"m f=" + b"1" * 5000 + b"i", "integer_out_of_range"),
        ("l/s/d", b"m f=1,f=2", "duplicate_field"),
        ("j/d/m", b'{"device": 1, "device_field": 2}', "field_is_tag"),
    ],
)
def test_integer_bombs_and_duplicate_fields_are_refused(
    topic: str, payload: bytes, reason: str | None
) -> None:
    """Past 4,300 digits `int` raises; a repeated field key would be collapsed by the database."""
    result = Decoder(SUBSCRIPTIONS, LIMITS).decode(topic, payload, NOW_NS)
    assert [e.reason for e in result.errors] == ([reason] if reason else [])


def test_a_renamed_field_that_meets_another_is_refused() -> None:
    """With field_named_like_tag = "rename", `device` -> `device_field` may collide."""
    decoder = Decoder(SUBSCRIPTIONS, LimitSettings(field_named_like_tag="rename"))
    result = decoder.decode("j/d/m", b'{"device": 1, "device_field": 2}', NOW_NS)
    assert [e.reason for e in result.errors] == ["duplicate_field"]


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("topic", "payload"),
    [
        ("v/d", b"1" * (255 << 10) + b"x"),
        ("l/s/d", b"m f=" + b"1" * (255 << 10) + b"x"),
        ("l/s/d", b"m f=1." + b"1" * (255 << 10) + b"e"),
    ],
)
def test_a_largest_payload_of_digits_does_not_stall_the_decoder(topic: str, payload: bytes) -> None:
    """A long digit run then a stray byte backtracked quadratically: ~15 min at 256 KiB, once."""
    assert Decoder(SUBSCRIPTIONS, LIMITS).decode(topic, payload, NOW_NS).errors
