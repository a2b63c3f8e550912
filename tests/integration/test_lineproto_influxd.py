"""Line-protocol encoding against a real influxd: arbitrary names and values read back unchanged."""

from __future__ import annotations

import itertools
import urllib.request
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gateway.errors import DecodeError
from gateway.points.model import Reading
from tests.points import check_reading, encode_point

if TYPE_CHECKING:
    from tests.conftest import InfluxV1

pytestmark = pytest.mark.integration

# Printable text plus the line-protocol metacharacters; control characters are refused by the
# encoder and covered by the unit tests.
name_chars = st.characters(codec="utf-8", exclude_categories=("Cs", "Cc"))
names = st.text(name_chars, min_size=1, max_size=12)
values = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=False),
    st.text(name_chars, max_size=20),
)
timestamps = itertools.count(1_600_000_000_000_000_000, 1_000_000_000)


def write(influx: InfluxV1, line: str) -> None:
    request = urllib.request.Request(  # noqa: S310 - loopback http
        f"{influx.url}/write?db={influx.database}&precision=ns", data=line.encode()
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
        assert response.status == 204


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    measurement=names,
    tags=st.dictionaries(names, names, max_size=3),
    fields=st.dictionaries(names, values, min_size=1, max_size=3),
)
def test_encoded_points_read_back_unchanged(
    influx: InfluxV1, measurement: str, tags: dict[str, str], fields: dict[str, object]
) -> None:
    """Whatever the names and values, influxd stores exactly the point that was encoded."""
    ts = next(timestamps)
    reading = Reading("d", measurement, tuple(sorted(tags.items())), tuple(fields.items()), ts)  # type: ignore[arg-type]
    try:
        check_reading(reading)
    except DecodeError:
        assume(False)
    # A fresh database per example: `SELECT *` over `/.*/` merges the keys of all measurements,
    # and a key that is a tag in one and a field in another would hide the field.
    influx.query(f"DROP DATABASE {influx.database}")
    influx.query(f"CREATE DATABASE {influx.database}")
    write(influx, encode_point(reading))
    found = influx.query(f"SELECT * FROM /.*/ WHERE time = {ts}")
    (series,) = found
    assert series["name"] == measurement
    row = dict(zip(series["columns"], series["values"][0], strict=True))
    assert row["time"] == ts
    for key, value in tags.items():
        assert row[key] == value
    for key, value in fields.items():
        stored = row[key]
        if isinstance(value, float):
            # influxd's JSON prints an integral float as its shortest digits without exponent
            # or ".0" (2.7e16 as 27000000000000000), which Python reads as an int.
            assert float(stored) == value, (key, stored, value)
        else:
            assert stored == value, (key, stored, value)
            assert type(stored) is type(value)
