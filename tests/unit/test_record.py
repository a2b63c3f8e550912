"""The stored form of a reading round-trips exactly."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.model import Reading
from gateway.record import pack, timestamp_of, unpack

values = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(),
)


@given(
    measurement=st.text(),
    tags=st.lists(st.tuples(st.text(), st.text()), max_size=4),
    fields=st.lists(st.tuples(st.text(), values), max_size=4),
    ts=st.integers(-(2**63), 2**63 - 1),
)
def test_pack_unpack_is_exact(
    measurement: str, tags: list[tuple[str, str]], fields: list[tuple[str, object]], ts: int
) -> None:
    """Types and values survive the buffer: int stays int, floats keep every bit."""
    reading = Reading("dev", measurement, tuple(tags), tuple(fields), ts)  # type: ignore[arg-type]
    value = pack(reading)
    back = unpack("dev", value)
    assert back == reading
    assert [type(v) for _, v in back.fields] == [type(v) for _, v in reading.fields]
    assert timestamp_of(value) == ts
