"""The flash-wear figures: /proc/<pid>/io parsing, the rate windows, the card's projected life."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.config.sections import BufferSettings
from gateway.observe import diskwear, procio
from gateway.observe.diskwear import DiskWear, RateWindow, projected_life_days
from gateway.observe.metrics import Metrics

if TYPE_CHECKING:
    from pathlib import Path

PROC_IO = """rchar: 2012
wchar: 4096
syscr: 7
syscw: 3
read_bytes: 0
write_bytes: {value}
cancelled_write_bytes: 12
"""


@given(st.integers(min_value=0, max_value=2**63 - 1))
def test_write_bytes_is_read_from_its_own_line(value: int) -> None:
    """write_bytes is taken from its line, never from wchar or cancelled_write_bytes."""
    assert procio.parse_write_bytes(PROC_IO.format(value=value)) == value


@pytest.mark.parametrize("text", ["", "rchar: 1\nwchar: 2\n", "write_bytes: lots\n"])
def test_a_text_without_write_bytes_says_nothing(text: str) -> None:
    """No write_bytes line, or a garbled one, is None rather than 0."""
    assert procio.parse_write_bytes(text) is None


def test_this_process_and_a_missing_one() -> None:
    """Its own /proc/self/io reads as a number; a pid that does not exist as None."""
    assert isinstance(procio.read_write_bytes(), int)
    assert procio.read_write_bytes(2**22 + 12345) is None


@given(st.floats(min_value=1, max_value=1e6), st.floats(min_value=1, max_value=600))
def test_a_steady_rate_is_measured_with_bounded_memory(rate: float, step_s: float) -> None:
    """A counter growing steadily gives its rate, and the window never holds more than its slots."""
    window = RateWindow(3600.0, min_span_s=60.0, slots=120)
    t = 0.0
    for _i in range(400):
        window.add(t, round(rate * t))
        t += step_s
        assert len(window) <= 120 + 2
    got = window.per_second()
    assert got is not None
    assert got == pytest.approx(rate, rel=1e-3, abs=1e-2)


def test_the_window_forgets_what_is_older_than_its_span() -> None:
    """A burst over an hour ago no longer counts in the hourly rate; the daily one still has it."""
    values = iter([0, 10**9] + [10**9] * 200)
    clock = iter(float(t) for t in range(0, 200 * 60, 60))
    wear = DiskWear(read=lambda: next(values), clock=lambda: next(clock))
    for _ in range(120):
        wear.sample()
    assert wear.hour.per_second() == 0
    day = wear.day.per_second()
    assert day is not None
    assert day > 0


def test_no_rate_before_a_minute_of_samples() -> None:
    """The first samples are mostly the start-up's writes: no rate until they span a minute."""
    window = RateWindow(3600.0)
    window.add(0.0, 0)
    window.add(30.0, 1000)
    assert window.per_second() is None
    window.add(60.0, 2000)
    assert window.per_second() == pytest.approx(2000 / 60)


@given(
    st.floats(min_value=0.01, max_value=1000),
    st.floats(min_value=0, max_value=1000),
    st.floats(min_value=1, max_value=1e12),
)
def test_projected_life_is_what_is_left_over_the_daily_rate(
    tbw: float, used: float, per_day: float
) -> None:
    """Life in days times the daily rate is what the rating has left, never below zero."""
    life = projected_life_days(tbw, used, per_day)
    assert life is not None
    assert life >= 0
    assert life * per_day == pytest.approx(max(0.0, tbw - used) * 1e12)


def test_projected_life_without_a_rating_a_rate_or_writes() -> None:
    """No rating or no rate yet: unknown; nothing written: no end."""
    assert projected_life_days(None, 0, 1e9) is None
    assert projected_life_days(3.0, 0, None) is None
    assert projected_life_days(3.0, 0, 0.0) == math.inf


def _exposition(metrics: Metrics) -> set[str]:
    return {m.name for m in metrics.registry.collect()}


def test_unreadable_proc_exports_nothing_and_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    """Without /proc/self/io no gateway_disk_* family is exported and one INFO line says why."""
    metrics = Metrics()
    metrics.disk._read = lambda: None
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            names = _exposition(metrics)
            metrics.disk.sample()
    assert not {n for n in names if n.startswith("gateway_disk")}
    assert caplog.text.count("/proc/self/io") == 1


def test_the_life_is_exported_once_rated_and_measured_and_not_per_worker() -> None:
    """The projected life appears with a rating and a daily rate, and not from one of workers."""
    metrics = Metrics()
    assert "gateway_disk_written_bytes" in _exposition(metrics)
    assert "gateway_disk_projected_life_days" not in _exposition(metrics)
    metrics.disk.endurance_tbw = 1.0
    metrics.disk.day.add(0.0, 0)
    metrics.disk.day.add(3600.0, 10**6)
    assert "gateway_disk_projected_life_days" in _exposition(metrics)
    metrics.disk.sole_writer = False
    assert "gateway_disk_projected_life_days" not in _exposition(metrics)


def test_workers_figures_add_up_to_the_gateway() -> None:
    """Two workers' writes and rates add up; the life is over their summed daily rate."""
    worker = {
        "written_bytes": 1000,
        "bytes_per_reading": 10.0,
        "bytes_per_hour": 50.0,
        "bytes_per_day": 1e9,
        "endurance_remaining_bytes": 1e12,
        "projected_life_days": 1000.0,
    }
    both = diskwear.combine([worker, {**worker, "bytes_per_hour": None}], accepted=100)
    assert both["written_bytes"] == 2000
    assert both["bytes_per_reading"] == 20.0
    assert both["bytes_per_hour"] is None
    assert both["bytes_per_day"] == 2e9
    assert both["projected_life_days"] == 500.0


def test_the_hourly_rate_after_hours_without_ticks_is_over_the_last_hour() -> None:
    """After a pause of the samples the rate is over the last hour, not over the pause too."""
    window = RateWindow(3600.0)
    for t in range(0, 3600, 10):
        window.add(float(t), t * 1000)
    paused_until = 6 * 3600
    window.add(float(paused_until), 3600 * 1000)
    for t in range(paused_until + 10, paused_until + 610, 10):
        window.add(float(t), 3600 * 1000 + (t - paused_until) * 1000)
    # Ten minutes at 1000 B/s in the last hour; the five silent hours before it do not count.
    assert window.per_second() == pytest.approx(600 * 1000 / 3600, rel=0.02)


def test_a_used_up_card_has_no_life_left_even_unwritten() -> None:
    """A rating already used up is 0 days, also while nothing is written, alone or over workers."""
    assert projected_life_days(3.0, 3.5, 0.0) == 0
    worker = {
        "written_bytes": 0,
        "bytes_per_hour": 0.0,
        "bytes_per_day": 0.0,
        "endurance_remaining_bytes": 0.0,
    }
    assert diskwear.combine([worker, worker], accepted=0)["projected_life_days"] == 0


@pytest.mark.parametrize(
    ("key", "value"),
    [("endurance_tbw", math.inf), ("endurance_tbw", 1e300), ("endurance_used_tb", math.inf)],
)
def test_an_endless_rating_is_refused_as_json_has_no_infinity(
    key: str, value: float, tmp_path: Path
) -> None:
    """An infinite or overflowing rating is a configuration error naming the key."""
    with pytest.raises(ValidationError, match=key):
        BufferSettings(path=tmp_path, **{"endurance_tbw": 1.0, key: value})


@given(
    st.lists(
        st.tuples(st.floats(min_value=-1e5, max_value=1e6), st.integers(0, 2**50)),
        max_size=300,
    )
)
def test_any_clock_and_counter_give_a_finite_rate_and_bounded_memory(
    ticks: list[tuple[float, int]],
) -> None:
    """A clock that jumps either way and a counter that goes back never raise or go negative."""
    window = RateWindow(3600.0, slots=120)
    for t, value in ticks:
        window.add(t, value)
        assert len(window) <= 120 + 2
        rate = window.per_second()
        assert rate is None or (math.isfinite(rate) and rate >= 0)


def test_wear_taken_without_a_rating_is_refused(tmp_path: Path) -> None:
    """endurance_used_tb without endurance_tbw would be ignored: the error names both keys."""
    with pytest.raises(ValidationError, match="endurance_used_tb needs endurance_tbw"):
        BufferSettings(path=tmp_path, endurance_used_tb=0.5)
    assert BufferSettings(path=tmp_path, endurance_used_tb=0.0).endurance_tbw is None
