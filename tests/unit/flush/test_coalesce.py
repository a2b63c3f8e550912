"""Coalescing merges same series and timestamp, keeps every other reading."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.flush.core.coalesce import coalesce, split_fields
from gateway.points.lineparse import parse_lines
from gateway.points.model import Reading
from gateway.points.record import pack, split


def stored(measurement: str, tags: dict[str, str], fields: dict[str, object], ts: int) -> bytes:
    return pack(Reading("d", measurement, tuple(sorted(tags.items())), tuple(fields.items()), ts))  # type: ignore[arg-type]


def test_same_series_and_time_merge_later_wins() -> None:
    """Two readings of one point merge; a third at another time stays apart."""
    values = [
        stored("m", {"device": "d"}, {"a": 1.0, "b": "x,y=1"}, 5),
        stored("m", {"device": "d"}, {"a": 2.0}, 6),
        stored("m", {"device": "d"}, {"a": 3.0, "c": True}, 5),
    ]
    lines, sources = coalesce([split(v) for v in values])
    assert lines == [b'm,device=d a=3.0,b="x,y=1",c=true 5', b"m,device=d a=2.0 6"]
    assert sources == [[0, 2], [1]]


def test_other_tags_or_measurement_do_not_merge() -> None:
    """Series differ by any tag or the measurement."""
    values = [
        stored("m", {"device": "d"}, {"a": 1.0}, 5),
        stored("m", {"device": "e"}, {"a": 1.0}, 5),
        stored("n", {"device": "d"}, {"a": 1.0}, 5),
    ]
    lines, _ = coalesce([split(v) for v in values])
    assert len(lines) == 3


def test_split_fields_respects_quotes_and_escapes() -> None:
    """Commas and equals signs inside strings or escaped keys do not split."""
    assert split_fields(rb'k\,1="a,b=\"c\\",x\=y=2i,z=t') == [
        (rb"k\,1", rb'k\,1="a,b=\"c\\"'),
        (rb"x\=y", rb"x\=y=2i"),
        (b"z", b"z=t"),
    ]


key = st.text(st.sampled_from('ab,= "\\x'), min_size=1, max_size=4).filter(
    lambda k: (
        not k.endswith("\\")
        and "\\\\" not in k
        and not any(k[i] == "\\" and k[i + 1] in ',= "' for i in range(len(k) - 1))
    )
)
value = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-99, 99),
    st.booleans(),
    st.text(st.sampled_from('ab,= "\\'), max_size=5),
)


@given(
    st.lists(
        st.tuples(st.integers(0, 2), st.dictionaries(key, value, min_size=1, max_size=3)),
        max_size=8,
    )
)
def test_merge_matches_dict_semantics(readings: list[tuple[int, dict[str, object]]]) -> None:
    """Whatever the names and values, the merged point is the dict merge of its readings."""
    values = [stored("m", {"device": "d"}, fields, ts) for ts, fields in readings]
    lines, _ = coalesce([split(v) for v in values])
    expected: dict[int, dict[str, object]] = {}
    for ts, fields in readings:
        expected.setdefault(ts, {}).update(fields)
    got = {}
    for line in lines:
        ((_, _, fields, ts),) = parse_lines(line.decode())
        got[ts] = dict(fields)
    assert got == expected
