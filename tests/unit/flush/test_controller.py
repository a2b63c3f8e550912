"""The batch-size controller against scenario tables: outcomes in, size ranges out."""

from __future__ import annotations

import pytest

from gateway.flush.core.controller import BatchSizer

FAST, SLOW, OVERLOAD = "fast", "slow", "overload"


def run(
    events: list[str], size: int = 1000, full: bool = True, spacing_s: float = 1.0
) -> list[int]:
    """Feed events one target-latency window apart; return the size after each."""
    sizer = BatchSizer(floor=100, ceiling=10_000, size=size, target_latency_s=0.5)
    sizes = []
    for n, event in enumerate(events):
        now = n * spacing_s
        if event == OVERLOAD:
            sizes.append(sizer.on_overload(now))
        else:
            latency = 0.1 if event == FAST else 2.0
            sizes.append(sizer.on_success(latency, sizer.size if full else 10, now))
    return sizes


@pytest.mark.parametrize(
    ("events", "kwargs", "low", "high"),
    [
        # Fast, full batches grow additively by the floor per write.
        ([FAST] * 10, {}, 2000, 2000),
        # ... up to the ceiling and no further.
        ([FAST] * 500, {}, 10_000, 10_000),
        # Fast but partial batches (little traffic) do not grow the size.
        ([FAST] * 50, {"full": False}, 1000, 1000),
        # One slow write halves.
        ([SLOW], {}, 500, 500),
        # Sustained slowness reaches the floor and stays there.
        ([SLOW] * 20, {}, 100, 100),
        # One overload halves; a second in a row is an outage: back to the floor.
        ([OVERLOAD], {}, 500, 500),
        ([OVERLOAD, OVERLOAD], {}, 100, 100),
        # After an outage, recovery ramps additively from the floor.
        ([OVERLOAD] * 5 + [FAST] * 5, {}, 600, 600),
        # Slow writes in one latency window count as one congestion event.
        ([SLOW] * 4, {"spacing_s": 0.01}, 500, 500),
        # Sawtooth: growth interrupted by a slow write settles between floor and ceiling.
        (([FAST] * 20 + [SLOW]) * 5, {}, 100, 10_000),
    ],
)
def test_scenarios(events: list[str], kwargs: dict[str, object], low: int, high: int) -> None:
    """Each scenario ends with the batch size in its expected range."""
    final = run(events, **kwargs)[-1]  # type: ignore[arg-type]
    assert low <= final <= high


def test_latency_sequence_falls_and_recovers() -> None:
    """Latency rising past the target shrinks the size; falling back lets it grow again."""
    sizes = run([FAST] * 30 + [SLOW] * 6 + [FAST] * 30, size=1000)
    peak_before, trough, end = sizes[29], min(sizes[30:36]), sizes[-1]
    assert peak_before == 4000
    assert trough == 100
    assert end == 3100


def test_start_size_is_clamped() -> None:
    """An initial size outside the bounds is brought inside them."""
    assert BatchSizer(floor=100, ceiling=200, size=5000, target_latency_s=1).size == 200
