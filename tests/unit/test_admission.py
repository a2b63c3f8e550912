"""Watermark hysteresis: reject above high, resume only below low."""

from __future__ import annotations

from gateway.admission import Transition, Watermarks


def test_hysteresis_between_watermarks() -> None:
    """Filling past high starts rejecting; it stops only once the fill is below low."""
    marks = Watermarks(capacity_bytes=1000, high=0.9, low=0.7)
    fills = [100, 899, 900, 950, 850, 701, 700, 699, 850, 899, 900]
    got = [marks.update(f) for f in fills]
    assert got == [
        None,
        None,
        Transition.START_REJECTING,
        None,
        None,
        None,
        None,
        Transition.STOP_REJECTING,
        None,
        None,
        Transition.START_REJECTING,
    ]


def test_no_flapping_at_the_edge() -> None:
    """Oscillating around the high watermark yields one transition, not one per sample."""
    marks = Watermarks(capacity_bytes=1000, high=0.9, low=0.7)
    transitions = [marks.update(f) for f in [899, 901, 899, 901, 899, 901]]
    assert [t for t in transitions if t] == [Transition.START_REJECTING]
