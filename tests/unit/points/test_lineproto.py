"""Line-protocol encoding: exact escaping, types, and refusal of what cannot be exact."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import DecodeError
from gateway.points.lineparse import parse_fields, parse_lines
from gateway.points.lineproto import encode_fields
from gateway.points.model import Reading
from tests.points import check_reading, encode_batch, encode_point
from tests.strategies import readings


def point(
    measurement: str = "m",
    tags: tuple[tuple[str, str], ...] = (),
    fields: tuple[tuple[str, object], ...] = (("v", 1.0),),
    ts: int = 5,
) -> Reading:
    return Reading("d", measurement, tags, fields, ts)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("reading", "line"),
    [
        (
            point("a b,c", (("k=1", "v 2,x"),), (("f,=g", 'say "hi" \\o/'),)),
            r'a\ b\,c,k\=1=v\ 2\,x f\,\=g="say \"hi\" \\o/" 5',
        ),
        (
            point(fields=(("i", -7), ("b", False), ("f", 0.1), ("e", 1e300))),
            "m i=-7i,b=false,f=0.1,e=1e+300 5",
        ),
        (point('m=x"', fields=(("u", "ü✓"),)), 'm=x" u="ü✓" 5'),
    ],
)
def test_escaping_examples(reading: Reading, line: str) -> None:
    """Delimiters are escaped per position; types carry their suffixes."""
    check_reading(reading)
    assert encode_point(reading) == line


@pytest.mark.parametrize(
    ("reading", "reason"),
    [
        (point("m\n"), "control_character"),
        (point(tags=(("k", "v\\"),)), "ambiguous_backslash"),
        (point(tags=(("k", "a\\,b"),)), "ambiguous_backslash"),
        (point(tags=(("k", ""),)), "empty_name"),
        (point("#m"), "comment_measurement"),
        (point(fields=()), "no_fields"),
        (point(fields=(("v", float("nan")),)), "not_finite"),
        (point(fields=(("v", 2**63),)), "integer_out_of_range"),
        (point(fields=(("v", "a\nb"),)), "control_character"),
        (point(fields=(("v", [1]),)), "bad_value_type"),
        (point(tags=(("time", "x"),)), "reserved_name"),
        (point("x" * 300), "name_too_long"),
    ],
)
def test_unrepresentable_readings_are_refused(reading: Reading, reason: str) -> None:
    """What cannot be stored exactly is refused with a reason instead of altered."""
    with pytest.raises(DecodeError) as info:
        check_reading(reading)
    assert info.value.reason == reason


def test_batch_is_newline_separated() -> None:
    """A batch body is one line per point."""
    assert encode_batch([point(ts=1), point(ts=2)]) == b"m v=1.0 1\nm v=1.0 2"


def _checked(
    measurement: str, tags: dict[str, str], fields: dict[str, object], ts: int
) -> Reading | None:
    """The reading these parts make, or None when the gateway would refuse it."""
    reading = Reading("d", measurement, tuple(sorted(tags.items())), tuple(fields.items()), ts)  # type: ignore[arg-type]
    try:
        check_reading(reading)
    except DecodeError:
        return None
    return reading


@given(**readings)
def test_encoded_points_parse_back_unchanged(
    measurement: str, tags: dict[str, str], fields: dict[str, object], ts: int
) -> None:
    """Every accepted reading encodes to a line that parses back to the same point."""
    reading = _checked(measurement, tags, fields, ts)
    if reading is None:
        return
    ((m, parsed_tags, parsed_fields, parsed_ts),) = parse_lines(encode_point(reading))
    assert (m, tuple(parsed_tags), tuple(parsed_fields), parsed_ts) == (
        reading.measurement,
        reading.tags,
        reading.fields,
        reading.ts_ns,
    )


@given(**readings)
def test_encoded_fields_parse_back_unchanged(
    measurement: str, tags: dict[str, str], fields: dict[str, object], ts: int
) -> None:
    """A stored reading's field part parses back to the same typed fields."""
    reading = _checked(measurement, tags, fields, ts)
    if reading is None:
        return
    assert tuple(parse_fields(encode_fields(reading.fields))) == reading.fields


@given(st.text(alphabet="ab_=,.0123456789+-eEiutrfalsTF", max_size=30))
def test_field_parts_read_as_in_a_line(text: str) -> None:
    """`parse_fields` reads a field part as the line parser does, or refuses it as it does."""
    try:
        ((_, _, want, _),) = parse_lines("m " + text)
    except DecodeError as exc:
        if exc.reason == "duplicate_field":
            return
        with pytest.raises(DecodeError):
            parse_fields(text)
        return
    assert parse_fields(text) == want


@pytest.mark.parametrize(
    ("part", "value"),
    [
        (r's="a\"b"', 'a"b'),
        (r's="a\\b"', "a\\b"),
        (r's="a\qb"', "a\\qb"),  # a backslash before any other character stands for itself
        (r's="\\"', "\\"),
        (r's="\""', '"'),
        ('s=""', ""),
    ],
)
def test_quoted_strings_unescape_as_line_protocol_says(part: str, value: str) -> None:
    """Only `\\"` and `\\\\` are escapes inside a quoted string value."""
    assert parse_fields(part) == [("s", value)]


@pytest.mark.parametrize("part", ['s="abc', 's="abc\\"', 's="abc\\'])
def test_an_unterminated_string_is_refused(part: str) -> None:
    """A string value without its closing quote is a malformed line."""
    with pytest.raises(DecodeError):
        parse_fields(part)


def test_a_string_of_megabytes_parses_in_milliseconds() -> None:
    """A 2 MiB string value takes far less CPU than a loop per character (about 1.7 s) would.

    A compaction step parses stored readings in the event loop, one reading of any size.
    """
    text = "x" * (1 << 20) + '\\"' + "y" * (1 << 20)
    started = time.thread_time()
    assert parse_fields(f's="{text}",v=1') == [("s", text.replace('\\"', '"')), ("v", 1.0)]
    assert time.thread_time() - started < 0.2
