"""The uplink budget's pacing, without a network."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.flush.core.uplink import UplinkBudget


def test_no_budget_never_waits() -> None:
    budget = UplinkBudget(None)
    assert [budget.reserve(10**9, 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]


def test_back_to_back_bodies_are_spaced_by_their_size() -> None:
    budget = UplinkBudget(1000.0)
    assert budget.reserve(500, 10.0) == 0.0
    assert budget.reserve(500, 10.0) == 0.5
    assert budget.reserve(2000, 10.1) == pytest.approx(0.9)


def test_idle_time_earns_no_credit() -> None:
    budget = UplinkBudget(100.0)
    budget.reserve(100, 0.0)
    assert budget.reserve(100, 60.0) == 0.0
    assert budget.reserve(100, 60.0) == 1.0


@given(
    rate=st.floats(min_value=1.0, max_value=1e7),
    bodies=st.lists(
        st.tuples(st.integers(1, 10**6), st.floats(min_value=0.0, max_value=5.0)), min_size=2
    ),
)
def test_sending_when_told_never_beats_the_rate(
    rate: float, bodies: list[tuple[int, float]]
) -> None:
    """From any send to the end of the last body, the bytes sent fit in the time at the rate."""
    budget = UplinkBudget(rate)
    now, sends = 0.0, []
    for size, gap in bodies:
        now += gap
        sent_at = now + budget.reserve(size, now)
        sends.append((sent_at, size))
        now = sent_at
    for i, (start, _) in enumerate(sends):
        later = sends[i:]
        end = later[-1][0] + later[-1][1] / rate
        assert sum(size for _, size in later) <= (end - start) * rate * (1 + 1e-9) + 1e-6
