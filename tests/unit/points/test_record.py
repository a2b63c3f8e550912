"""The stored form of a reading round-trips exactly."""

from __future__ import annotations

from hypothesis import assume, given

from gateway.errors import DecodeError
from gateway.points.model import Reading
from gateway.points.record import pack, split, timestamp_of
from tests.points import check_reading, encode_point, unpack
from tests.strategies import readings


@given(**readings)
def test_pack_unpack_is_exact(
    measurement: str, tags: dict[str, str], fields: dict[str, object], ts: int
) -> None:
    """Types and values survive the buffer: int stays int, floats keep every bit."""
    reading = Reading("dev", measurement, tuple(sorted(tags.items())), tuple(fields.items()), ts)  # type: ignore[arg-type]
    try:
        check_reading(reading)
    except DecodeError:
        assume(False)
    value = pack(reading)
    back = unpack("dev", value)
    assert back == reading
    assert [type(v) for _, v in back.fields] == [type(v) for _, v in reading.fields]
    assert timestamp_of(value) == ts
    assert split(value).line.decode() == encode_point(reading)
