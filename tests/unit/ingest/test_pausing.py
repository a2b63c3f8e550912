"""When a paused intake goes back to the broker (gateway/ingest/core/pausing.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import CapacityError
from gateway.ingest.core.pausing import (
    DISK_FULL_RECHECK_S,
    PAUSE_INITIAL_S,
    PAUSE_MAX_S,
    Cause,
    Pause,
    Pauses,
    cause_of,
)

LOW = 800
MIN_FREE = 8 << 20


def wait_s(pause: Pause, fill: int, now: float, free: int = 0) -> float:
    return pause.wait_s(
        fill_bytes=fill, low_bytes=LOW, free_disk_bytes=free, min_free_bytes=MIN_FREE, now=now
    )


def test_the_cause_comes_from_the_refusal() -> None:
    """A paused reading is the watermark, a full disk is the disk, anything else the budget."""
    assert cause_of(CapacityError("high watermark", at_item=3)) is Cause.WATERMARK
    assert cause_of(CapacityError("disk full", disk_full=True)) is Cause.DISK_FULL
    assert cause_of(CapacityError("nearly full (234 pages in use)")) is Cause.DISK_BUDGET


def test_a_page_guard_refusal_far_below_the_watermarks_does_not_resume_at_once() -> None:
    """The reported loop: the fill is below the low watermark, yet the pause lasts."""
    pause = Pauses().begin(Cause.DISK_BUDGET, fill_bytes=500, now=100.0)
    assert pause.is_first
    assert wait_s(pause, fill=500, now=100.0) == PAUSE_INITIAL_S
    # Past the shortest pause, without a delivery: still waiting, looking again each second.
    assert wait_s(pause, fill=500, now=100.0 + PAUSE_INITIAL_S) > 0
    assert wait_s(pause, fill=500, now=100.0 + PAUSE_MAX_S - 0.5) == 0.5


def test_a_page_guard_pause_ends_at_a_delivery_or_at_the_longest_pause() -> None:
    """A falling fill (a delivery or a drop) ends it; without one, intake looks at the cap."""
    pause = Pauses().begin(Cause.DISK_BUDGET, fill_bytes=500, now=0.0)
    assert wait_s(pause, fill=499, now=0.5) == 0.5  # not before the shortest pause
    assert wait_s(pause, fill=499, now=PAUSE_INITIAL_S) == 0.0
    assert wait_s(pause, fill=500, now=PAUSE_MAX_S) == 0.0


def test_pauses_of_one_episode_double_up_to_the_cap_and_a_commit_ends_it() -> None:
    """Refused again after resuming: each pause longer; a commit that goes through resets."""
    pauses = Pauses()
    lengths = []
    for n in range(8):
        pause = pauses.begin(Cause.DISK_BUDGET, fill_bytes=500, now=float(n))
        assert pause.is_first == (n == 0)
        lengths.append(pause.min_s)
    assert lengths == [1.0, 2.0, 4.0, 8.0, 16.0, PAUSE_MAX_S, PAUSE_MAX_S, PAUSE_MAX_S]
    episode = pauses.committed(now=200.0)
    assert episode is not None
    assert (len(episode.causes), episode.started, episode.ended) == (8, 0.0, 200.0)
    assert not pauses.running
    assert pauses.committed(now=201.0) is None
    assert pauses.begin(Cause.DISK_BUDGET, 500, now=300.0).min_s == PAUSE_INITIAL_S


def test_the_watermark_pause_ends_below_the_low_watermark() -> None:
    """The `reject` policy's hysteresis: at or above the low watermark intake stays away."""
    pause = Pauses().begin(Cause.WATERMARK, fill_bytes=900, now=0.0)
    assert wait_s(pause, fill=LOW, now=5.0) > 0
    assert wait_s(pause, fill=LOW - 1, now=5.0) == 0.0


def test_the_disk_full_pause_ends_when_space_is_free_again() -> None:
    """Only free disk space ends it, looked at every few seconds; a delivery does not."""
    pause = Pauses().begin(Cause.DISK_FULL, fill_bytes=900, now=0.0)
    assert wait_s(pause, fill=0, now=5.0, free=MIN_FREE - 1) == DISK_FULL_RECHECK_S
    assert wait_s(pause, fill=900, now=5.0, free=MIN_FREE) == 0.0


@given(
    cause=st.sampled_from(Cause),
    fills=st.lists(st.integers(0, 1000), min_size=1, max_size=200),
    free=st.integers(0, 2 * MIN_FREE),
)
def test_refused_at_every_resume_intake_reconnects_at_most_at_the_backoff_pace(
    cause: Cause, fills: list[int], free: int
) -> None:
    """Whatever the fill does, an intake refused at each attempt makes few attempts an hour."""
    pauses = Pauses()
    now, attempts, step = 0.0, 0, 0
    hour = 3600.0
    while now < hour:
        pause = pauses.begin(cause, fills[step % len(fills)], now)
        while (waited := wait_s(pause, fills[step % len(fills)], now, free)) > 0:
            assert waited <= PAUSE_MAX_S
            now += waited
            step += 1
            if now >= hour:
                break
        else:
            assert now - pause.started >= pause.min_s
            attempts += 1
    # 1 + 2 + 4 + 8 + 16 s, then one attempt per 30 s at most.
    assert attempts <= 5 + hour / PAUSE_MAX_S + 1
