"""Refused lines found exactly: InfluxDB 3's partial answers, read and reconciled by line number,
and whole refusals split in halves. The answers are those InfluxDB 3 Core's documentation and
its server's tests record; the databases below are models of the two behaviours, not servers.
"""

from __future__ import annotations

import json
import math

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import SinkError, SinkPartial, SinkRejected, SinkUnavailable
from gateway.flush.refusals import write_isolating
from gateway.flush.sinkv3 import PARTIAL_LINES_LISTED, partial_lines, v3_outcome

WHERE = "database at http://db:8181"


@pytest.fixture(autouse=True)
def refusals_are_logged_at_error(caplog: pytest.LogCaptureFixture) -> None:
    """Each refused line is logged at ERROR, as it must be: expected here."""
    caplog.errors_expected = True  # type: ignore[attr-defined]


# The documented answer of a write whose second line conflicts with the first's field type.
DOCUMENTED_PARTIAL = json.dumps(
    {
        "error": "partial write of line protocol occurred",
        "data": [
            {
                "original_line": "home,room=Sunroom temp=hi 1735549200",
                "line_number": 2,
                "error_message": "invalid column type for column 'temp', expected "
                "iox::column_type::field::float, got iox::column_type::field::string",
            }
        ],
    }
)
# The answer with accept_partial=false: the whole batch refused, one line named.
DOCUMENTED_WHOLE = json.dumps(
    {
        "error": "parsing failed for write_lp endpoint",
        "data": {
            "original_line": "home,room=Sunroom temp=hi 1735549200",
            "line_number": 2,
            "error_message": "invalid column type for column 'temp'",
        },
    }
)


@pytest.mark.parametrize("status", [400, 422])
def test_the_documented_partial_answer_names_its_line_and_reason(status: int) -> None:
    """400 for lines refused; 422, with the same list, for lines past a schema limit."""
    partial = v3_outcome(status, {}, DOCUMENTED_PARTIAL, WHERE)
    assert isinstance(partial, SinkPartial)
    assert not partial.retryable
    ((number, reason),) = partial.lines
    assert number == 2
    assert reason.startswith(f"{WHERE}: HTTP {status}: invalid column type for column 'temp'")
    assert partial.listed_max == PARTIAL_LINES_LISTED


@pytest.mark.parametrize(
    ("status", "headers", "body", "expected"),
    [
        (204, {}, "", None),
        (400, {}, DOCUMENTED_WHOLE, SinkRejected),
        (400, {}, "not json", SinkRejected),
        (413, {}, '{"error": "request body too large"}', SinkRejected),
        (503, {"Retry-After": "30"}, "", SinkUnavailable),
        (500, {}, DOCUMENTED_PARTIAL, SinkUnavailable),
    ],
)
def test_other_answers_are_classified_as_for_every_api(
    status: int, headers: dict[str, str], body: str, expected: type | None
) -> None:
    outcome = v3_outcome(status, headers, body, WHERE)
    assert (None if outcome is None else type(outcome)) is expected
    if isinstance(outcome, SinkUnavailable):
        assert outcome.retry_after_s == (30 if headers else None)


@pytest.mark.parametrize(
    "data",
    [
        {"line_number": 2},
        [],
        [{"line_number": 0, "error_message": "x"}],
        [{"line_number": True, "error_message": "x"}],
        [{"line_number": "2", "error_message": "x"}],
        ["line 2"],
    ],
)
def test_a_partial_answer_that_names_no_line_is_a_whole_refusal(data: object) -> None:
    body = json.dumps({"error": "partial write of line protocol occurred", "data": data})
    assert partial_lines(400, body, WHERE) is None
    assert isinstance(v3_outcome(400, {}, body, WHERE), SinkRejected)


class PartialDatabase:
    """Stores every line without b"bad"; answers like InfluxDB 3 with accept_partial=true."""

    def __init__(self, listed_max: int = PARTIAL_LINES_LISTED) -> None:
        self.stored: list[bytes] = []
        self.writes = 0
        self.listed_max = listed_max

    async def write(self, body: bytes, points: int) -> None:
        self.writes += 1
        lines = body.split(b"\n")
        assert len(lines) == points
        bad = [(n, "refused") for n, line in enumerate(lines, 1) if b"bad" in line]
        self.stored += [line for line in lines if b"bad" not in line]
        if bad:
            raise SinkPartial("partial", bad[: self.listed_max], self.listed_max)


class WholeDatabase(PartialDatabase):
    """Refuses a batch with any bad line whole, as InfluxDB 1.x and VictoriaMetrics do."""

    async def write(self, body: bytes, points: int) -> None:
        self.writes += 1
        lines = body.split(b"\n")
        assert len(lines) == points
        if any(b"bad" in line for line in lines):
            raise SinkRejected("refused")
        self.stored += lines


def batch(size: int, bad: set[int]) -> list[bytes]:
    return [b"m,n=%d %s=1 %d" % (i, b"bad" if i in bad else b"v", i) for i in range(size)]


@settings(max_examples=150, deadline=None)
@given(data=st.data(), size=st.integers(1, 450), listed_max=st.sampled_from([1, 3, 100]))
def test_partial_answers_find_exactly_the_refused_lines_in_few_writes(
    data: st.DataObject, size: int, listed_max: int
) -> None:
    bad = data.draw(st.sets(st.integers(0, size - 1), max_size=size))
    lines = batch(size, bad)
    database = PartialDatabase(listed_max)
    refused = anyio.run(write_isolating, database.write, lines)
    assert [i for i, _ in refused] == sorted(bad)
    assert set(database.stored) == {line for i, line in enumerate(lines) if i not in bad}
    # One write, and one more per full list: never a split.
    assert database.writes <= 1 + math.ceil(len(bad) / listed_max)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), size=st.integers(1, 200))
def test_whole_refusals_are_split_until_each_refused_line_is_alone(
    data: st.DataObject, size: int
) -> None:
    bad = data.draw(st.sets(st.integers(0, size - 1), max_size=6))
    lines = batch(size, bad)
    database = WholeDatabase()
    refused = anyio.run(write_isolating, database.write, lines)
    assert [i for i, _ in refused] == sorted(bad)
    assert set(database.stored) == {line for i, line in enumerate(lines) if i not in bad}


def test_a_full_list_ending_at_the_last_line_is_not_written_again() -> None:
    lines = batch(PARTIAL_LINES_LISTED, set(range(PARTIAL_LINES_LISTED)))
    database = PartialDatabase()
    refused = anyio.run(write_isolating, database.write, lines)
    assert (len(refused), database.writes) == (PARTIAL_LINES_LISTED, 1)


def test_a_partial_answer_naming_a_line_past_the_body_falls_back_to_splitting() -> None:
    lines = batch(8, {5})
    database = PartialDatabase()
    answers = iter([SinkPartial("partial", [(9, "no such line")], PARTIAL_LINES_LISTED)])

    async def write(body: bytes, points: int) -> None:
        wrong = next(answers, None)
        if wrong is not None:
            raise wrong
        await database.write(body, points)

    refused = anyio.run(write_isolating, write, lines)
    assert refused == [(5, "refused")]
    assert len(set(database.stored)) == 7


def test_a_retryable_failure_leaves_everything_buffered() -> None:
    async def write(body: bytes, points: int) -> None:
        raise SinkUnavailable("down")

    with pytest.raises(SinkError):
        anyio.run(write_isolating, write, batch(3, set()))


def test_an_empty_batch_writes_nothing() -> None:
    database = PartialDatabase()
    assert anyio.run(write_isolating, database.write, []) == []
    assert database.writes == 0
