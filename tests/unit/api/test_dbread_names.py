"""What a miss keeps of the points the database answers: only names ingest could have made."""

from __future__ import annotations

import pytest

from gateway.api.dbread import _storable


def test_empty_tags_of_a_group_by_star_answer_are_dropped() -> None:
    point = ("m", {"device": "d1", "room": ""}, {"v": 1.0}, 100)
    assert _storable(point) == ("m", {"device": "d1"}, {"v": 1.0}, 100)


@pytest.mark.parametrize(
    ("measurement", "tags", "fields"),
    [
        ("m", {"device": "d1", "t": "a\\"}, {"v": 1.0}),
        ("m", {"device": "d1", "t": "line\nbreak"}, {"v": 1.0}),
        ("#m", {"device": "d1"}, {"v": 1.0}),
        ("m", {"device": "d1"}, {"v\x00": 1.0}),
        ("", {"device": "d1"}, {"v": 1.0}),
        ("m", {"device": "d1"}, {"s": "two\nlines"}),
        ("m", {"device": "d1"}, {"v": float("nan")}),
    ],
)
def test_a_point_with_a_name_ingest_refuses_is_not_kept(
    measurement: str, tags: dict[str, str], fields: dict[str, object]
) -> None:
    assert _storable((measurement, tags, fields, 100)) is None  # type: ignore[arg-type]
