"""When readings came, per device: a sink's max_lag_s gives up only readings past it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.flush.core.marks import Marks


def test_readings_found_at_start_are_marked_at_the_start() -> None:
    marks = Marks(keep_s=10.0)
    marks.note({"a": (1, 500)}, now=100.0)
    assert marks.overdue(before=99.0) == {}
    assert marks.overdue(before=100.0) == {"a": 500}


def test_only_readings_accepted_before_the_limit_are_overdue() -> None:
    marks = Marks(keep_s=10.0)
    for t in range(20):
        marks.note({"a": (1, 10 * t), "b": (2, 3 * t)}, now=float(t))
    assert marks.overdue(before=12.5) == {"a": 120, "b": 36}


def test_marks_older_than_the_deciding_one_go_and_fifos_gone_are_forgotten() -> None:
    marks = Marks(keep_s=5.0)
    for t in range(100):
        marks.note({"a": (1, t), "b": (2, t)}, now=float(t))
    assert len(marks) <= 2 * 7
    marks.note({"a": (1, 200)}, now=100.0)
    assert set(marks.overdue(before=99.0)) == {"a"}


def test_a_fifo_made_again_starts_its_marks_afresh() -> None:
    # Forgotten when empty and made again, a FIFO has a new number and sequences from 0:
    # the old marks would give up its new readings at once.
    marks = Marks(keep_s=10.0)
    marks.note({"a": (1, 1000)}, now=0.0)
    marks.note({"a": (7, 50)}, now=5.0)
    assert marks.overdue(before=4.0) == {}
    assert marks.overdue(before=5.0) == {"a": 50}


@given(
    st.lists(st.tuples(st.integers(0, 20), st.floats(0.1, 3)), min_size=1, max_size=60),
    st.floats(0.5, 20),
)
def test_never_a_reading_accepted_within_the_limit(
    commits: list[tuple[int, float]], keep_s: float
) -> None:
    marks = Marks(keep_s=keep_s)
    accepted: list[float] = []  # each reading's acceptance time, by sequence
    now = 0.0
    for readings, advance in commits:
        now += advance
        accepted += [now] * readings
        marks.note({"a": (1, len(accepted))}, now)
        below = marks.overdue(before=now - keep_s).get("a", 0)
        assert all(t <= now - keep_s for t in accepted[:below])
        # Fewer by at most what came since the deciding mark: a mark each note, here.
        past = sum(1 for t in accepted if t <= now - keep_s)
        assert below == past
