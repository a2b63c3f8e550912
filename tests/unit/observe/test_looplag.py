"""The event-loop lag core and the health verdict it feeds: times given, nothing awaited."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.observe.health import LOOP_STALL_S, Health
from gateway.observe.looplag import WINDOW_S, LoopLag

# (sleep interval, how late the wake-up came) pairs of one sampler's run.
wakeups = st.lists(
    st.tuples(
        st.floats(min_value=0.001, max_value=5.0),
        st.floats(min_value=-0.01, max_value=40.0),
    ),
    max_size=200,
)


def test_the_lag_is_how_late_the_sampler_woke() -> None:
    """Late by 2 s is a lag of 2 s; on time or early is no lag."""
    lag = LoopLag()
    lag.sleeping_until(10.25)
    assert lag.woke(12.25) == 2.0
    lag.sleeping_until(12.5)
    assert lag.woke(12.5) == 0.0
    lag.sleeping_until(12.75)
    assert lag.woke(12.7) == 0.0
    assert lag.recent_max(13.0) == 2.0


def test_a_wakeup_without_a_due_time_counts_no_lag() -> None:
    """The first wake-up of a sampler that never said when it was due is on time."""
    lag = LoopLag()
    assert lag.woke(5.0) == 0.0
    assert lag.recent_max(5.0) == 0.0


def test_a_stall_is_forgotten_after_the_window() -> None:
    """A lag counts for `window_s` after the wake-up that measured it, and not after."""
    lag = LoopLag(window_s=60.0)
    lag.sleeping_until(100.0)
    lag.woke(103.0)
    assert lag.recent_max(163.0) == 3.0
    assert lag.recent_max(163.1) == 0.0
    assert lag.quantile(0.99, 163.1) == 0.0


def test_an_overdue_wakeup_counts_as_lag_so_far() -> None:
    """While the sampler is overdue, the lateness so far is the worst lag, stamped now."""
    lag = LoopLag()
    lag.sleeping_until(10.0)
    lag.woke(10.5)
    lag.sleeping_until(10.75)
    assert lag.recent_max(10.7) == 0.5  # not due yet
    worst = lag.worst(13.75)
    assert worst is not None
    assert (worst.at, worst.lag_s) == (13.75, 3.0)


def test_the_quantile_is_the_nearest_rank() -> None:
    """p99 of 100 lags is the 99th smallest; p50 the 50th."""
    lag = LoopLag()
    for i in range(100):
        lag.sleeping_until(i * 0.5)
        lag.woke(i * 0.5 + (i + 1) / 1024)  # exact in binary floats
    assert lag.quantile(0.99, 50.0) == 99 / 1024
    assert lag.quantile(0.5, 50.0) == 50 / 1024
    assert lag.quantile(1.0, 50.0) == lag.recent_max(50.0) == 100 / 1024


@given(wakeups)
def test_the_recent_max_is_the_largest_lag_within_the_window(
    steps: list[tuple[float, float]],
) -> None:
    """Against a plain list of every wake-up: the max and the quantiles over the window agree."""
    lag = LoopLag()
    now = 0.0
    seen: list[tuple[float, float]] = []
    for interval_s, late_s in steps:
        due = now + interval_s
        lag.sleeping_until(due)
        now = due + late_s
        measured = lag.woke(now)
        assert measured == max(0.0, late_s) or abs(measured - max(0.0, now - due)) < 1e-9
        seen.append((now, measured))
        recent = [m for at, m in seen if now - at <= WINDOW_S]
        assert lag.recent_max(now) == max(recent)
        assert min(recent) <= lag.quantile(0.99, now) <= max(recent)
        assert lag.quantile(1.0, now) == max(recent)


def test_health_fails_for_a_minute_after_a_stall_past_the_limit() -> None:
    """A 6 s lag with a 5 s limit: /healthz fails with the reason, not hung, then recovers."""
    health = Health(started=0.0, max_loop_lag_s=5.0)
    health.loop_lag.sleeping_until(10.0)
    health.loop_lag.woke(16.0)
    health.last_tick = 16.0
    verdict = health.liveness(20.0)
    assert not verdict.ok
    assert not verdict.hung
    assert verdict.problems == (
        "event loop lag 6.0 s 4 s ago (more than max_loop_lag_s 5 s within 60 s)",
    )
    assert not health.readiness(20.0).ok
    health.last_tick = 76.0
    assert health.liveness(76.1).ok


def test_health_takes_a_lag_under_the_limit() -> None:
    """A lag of the limit itself is no stall."""
    health = Health(started=0.0, max_loop_lag_s=5.0)
    health.loop_lag.sleeping_until(10.0)
    health.loop_lag.woke(15.0)
    assert health.liveness(15.0).ok


def test_health_calls_an_overdue_sampler_hung() -> None:
    """Answered while the sampler is overdue past the limit: failing and hung, 'so far'."""
    health = Health(started=0.0, max_loop_lag_s=1.0)
    health.loop_lag.sleeping_until(10.0)
    verdict = health.liveness(12.5)
    assert not verdict.ok
    assert verdict.hung
    assert "event loop lag 2.5 s so far" in verdict.problems[0]


def test_a_stale_housekeeping_tick_is_hung() -> None:
    """The housekeeping tick's age still tells a stuck loop, and is hung."""
    health = Health(started=100.0)
    verdict = health.liveness(100.0 + LOOP_STALL_S + 1)
    assert not verdict.ok
    assert verdict.hung
