"""The commits waiting for the database: the oldest undelivered one gives the lag."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.flush.core.waiting import Waiting


def test_readings_found_at_start_count_as_old_until_delivered() -> None:
    """A recovered backlog is older than anything committed after the start."""
    waiting = Waiting(recovered=5)
    waiting.committed(3, now=10.0, linger_s=1.0)
    assert waiting.oldest_since() == -math.inf
    waiting.delivered(5)
    assert waiting.oldest_since() == 10.0
    waiting.delivered(3)
    assert not waiting


def test_only_the_first_waiting_commit_arms_the_linger_timer() -> None:
    """A second commit while one waits changes nothing the flusher would do."""
    waiting = Waiting(recovered=0)
    assert waiting.committed(1, now=0.0, linger_s=1.0)
    assert not waiting.committed(1, now=0.1, linger_s=1.0)


@given(
    st.lists(st.integers(1, 50), min_size=1, max_size=40),
    st.sampled_from([3.0, math.inf]),
    st.data(),
)
def test_the_oldest_undelivered_reading_sets_the_lag(
    sizes: list[int], linger_s: float, data: st.DataObject
) -> None:
    """Against a model of one timestamp per reading: exact, or older once commits merged."""
    waiting = Waiting(recovered=0)
    model: list[float] = []
    for t, size in enumerate(sizes):
        waiting.committed(size, now=float(t), linger_s=linger_s)
        model += [float(t)] * size
        gone = data.draw(st.integers(0, len(model)))
        assert waiting.delivered(gone) == 0
        del model[:gone]
        assert bool(waiting) == bool(model)
        assert len(waiting) == len(model)
        if model:
            # Merged commits keep the older time: the lag is never under-reported, and without
            # merges (no commit lingered) it is exact.
            assert waiting.oldest_since() <= model[0]
            if linger_s == math.inf:
                assert waiting.oldest_since() == model[0]


def test_linger_is_over_for_readings_whose_age_was_lost() -> None:
    """With nothing known to wait, readings the buffer still holds are due now, not never."""
    waiting = Waiting(0)
    assert waiting.linger_left(100.0, 0.2) == 0.0
    waiting.committed(5, 100.0, 0.2)
    assert waiting.linger_left(100.05, 0.2) == pytest.approx(0.15)
    # More left than it counted (drops taken off this stream): the rest is the other's.
    assert waiting.delivered(7) == 2
    assert not waiting
    assert len(waiting) == 0
    assert waiting.linger_left(100.06, 0.2) == 0.0
