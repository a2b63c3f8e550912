"""Admission decisions: watermarks, shares, the device guard and the choice of victims."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.buffer.core.admission import (
    DEVICE_SHARE,
    MAX_DEVICES,
    PAUSE,
    SHED,
    Candidate,
    Decision,
    Fifo,
    Lane,
    Policy,
    Rules,
    Transition,
    Verdict,
    Watermarks,
    decide,
    victim,
    when_no_room,
)

REJECT = Lane("r", Policy.REJECT)
DROP = Lane("d", Policy.DROP_OLDEST)
LOW = Lane("low", Policy.SHED, priority=1)
MID = Lane("mid", Policy.SHED, priority=5)
ALARM = Lane("alarm", Policy.SHED, priority=9, critical=True)
STEPS_NS = (60 * 10**9, 600 * 10**9)
COMPACT = Lane("c", Policy.COMPACT, steps_ns=STEPS_NS)
KEPT = Lane("kept", Policy.COMPACT, critical=True, steps_ns=STEPS_NS)
RULES = Rules(budget_bytes=10_000, high=0.9, low=0.8, device_share=0.25, max_devices=3)
OLD = Fifo(nbytes=100, droppable_bytes=100, is_new=False)


def test_hysteresis_between_watermarks() -> None:
    """Filling past high starts rejecting; it stops only once the fill is below low."""
    marks = Watermarks(high_bytes=900, low_bytes=700)
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
    marks = Watermarks(high_bytes=900, low_bytes=700)
    transitions = [marks.update(f) for f in [899, 901, 899, 901, 899, 901]]
    assert [t for t in transitions if t] == [Transition.START_REJECTING]


def test_below_the_high_watermark_every_policy_stores() -> None:
    for lane in (REJECT, DROP, LOW, ALARM):
        assert decide(lane, 50, fifo=OLD, used=8000, active=3, rules=RULES).verdict is Verdict.STORE


def test_at_the_high_watermark_reject_pauses_and_droppers_make_room() -> None:
    assert decide(REJECT, 50, fifo=OLD, used=8990, active=1, rules=RULES).verdict is Verdict.PAUSE
    decision = decide(DROP, 50, fifo=OLD, used=8990, active=1, rules=RULES)
    assert decision.verdict is Verdict.STORE
    assert decision.make_room_bytes >= 40
    assert decide(ALARM, 50, fifo=OLD, used=8990, active=1, rules=RULES).make_room_bytes >= 40


def test_device_guard_refuses_new_devices_only() -> None:
    new = Fifo(0, 0, is_new=True)
    assert decide(DROP, 50, fifo=new, used=0, active=3, rules=RULES) == Decision(
        Verdict.REFUSE, MAX_DEVICES
    )
    assert decide(DROP, 50, fifo=OLD, used=0, active=3, rules=RULES).verdict is Verdict.STORE
    assert decide(DROP, 50, fifo=new, used=0, active=2, rules=RULES).verdict is Verdict.STORE


def test_share_refuses_for_reject_and_drops_own_for_droppers() -> None:
    full = Fifo(nbytes=2490, droppable_bytes=2490, is_new=False)  # share is 2,500 bytes
    assert decide(REJECT, 50, fifo=full, used=2490, active=1, rules=RULES) == Decision(
        Verdict.REFUSE, DEVICE_SHARE
    )
    decision = decide(DROP, 50, fifo=full, used=2490, active=1, rules=RULES)
    assert decision.verdict is Verdict.STORE
    assert decision.drop_own_bytes >= 40
    in_flight = Fifo(nbytes=2490, droppable_bytes=10, is_new=False)
    assert decide(DROP, 50, fifo=in_flight, used=2490, active=1, rules=RULES).reason == (
        DEVICE_SHARE
    )
    assert decide(ALARM, 50, fifo=full, used=2490, active=1, rules=RULES).verdict is Verdict.STORE


def test_without_room_shed_refuses_itself_and_the_rest_pause() -> None:
    assert when_no_room(LOW) == Decision(Verdict.REFUSE, SHED)
    assert when_no_room(ALARM).verdict is Verdict.PAUSE
    assert when_no_room(DROP).verdict is Verdict.PAUSE


def test_drop_oldest_takes_the_largest_of_its_own_policy() -> None:
    candidates = [
        Candidate("small", DROP, 100),
        Candidate("large", DROP, 900),
        Candidate("rejecting", REJECT, 5000),
        Candidate("shedding", LOW, 5000),
        Candidate("in-flight", DROP, 0),
    ]
    chosen = victim(DROP, candidates)
    assert chosen is not None
    assert chosen.name == "large"
    assert victim(REJECT, candidates) is None


def test_shed_takes_the_lowest_priority_first_and_never_critical() -> None:
    candidates = [
        Candidate("mid-large", MID, 5000),
        Candidate("low-small", LOW, 10),
        Candidate("alarm", ALARM, 9000),
    ]
    chosen = victim(MID, candidates)
    assert chosen is not None
    assert chosen.name == "low-small"
    chosen = victim(LOW, [c for c in candidates if c.name != "low-small"])
    assert chosen is None  # nothing at or below priority 1 but critical data
    chosen = victim(ALARM, [c for c in candidates if c.name != "low-small"])
    assert chosen is not None
    assert chosen.name == "mid-large"
    assert victim(ALARM, [Candidate("alarm", ALARM, 9000)]) is None


def test_a_compact_lane_is_never_a_victim_nor_takes_one() -> None:
    """Compact lanes give up readings to summaries only: no drop policy takes theirs."""
    candidates = [
        Candidate("compact-large", COMPACT, 9000),
        Candidate("drop-small", DROP, 10),
        Candidate("shed-small", LOW, 10),
    ]
    assert victim(COMPACT, candidates) is None
    assert victim(KEPT, candidates) is None
    for lane, name in [(DROP, "drop-small"), (MID, "shed-small"), (ALARM, "shed-small")]:
        chosen = victim(lane, candidates)
        assert chosen is not None
        assert chosen.name == name
    assert victim(DROP, [Candidate("compact-large", COMPACT, 9000)]) is None
    assert victim(ALARM, [Candidate("compact-large", COMPACT, 9000)]) is None


def test_a_compact_lane_is_compactable_unless_critical_and_never_droppable() -> None:
    """Only a non-critical compact lane with its steps may be summarised; none is dropped."""
    assert COMPACT.is_compactable
    assert not COMPACT.is_droppable
    assert not KEPT.is_compactable
    assert not KEPT.is_droppable
    assert not Lane("no-steps", Policy.COMPACT).is_compactable
    for lane in (REJECT, DROP, LOW, ALARM):
        assert not lane.is_compactable


def test_a_compact_lane_without_room_pauses() -> None:
    """At the high watermark a compact reading asks for room; with none made, it waits."""
    decision = decide(COMPACT, 50, fifo=OLD, used=8990, active=1, rules=RULES)
    assert decision.verdict is Verdict.STORE
    assert decision.make_room_bytes >= 40
    assert victim(COMPACT, [Candidate("c", COMPACT, 9000)]) is None
    assert when_no_room(COMPACT) == PAUSE
    assert when_no_room(KEPT) == PAUSE


def test_a_compact_lane_over_its_share_is_refused_as_under_reject() -> None:
    """Nothing of a compact device is dropped to keep its share: the reading is refused."""
    full = Fifo(nbytes=2490, droppable_bytes=2490, is_new=False)
    assert decide(COMPACT, 50, fifo=full, used=2490, active=1, rules=RULES) == Decision(
        Verdict.REFUSE, DEVICE_SHARE
    )


lanes = st.sampled_from([REJECT, DROP, LOW, MID, ALARM, COMPACT, KEPT])


@given(
    lane=lanes,
    others=st.lists(st.tuples(lanes, st.integers(0, 5000)), max_size=8),
)
def test_a_victim_is_never_critical_rejecting_or_of_another_policy(
    lane: Lane, others: list[tuple[Lane, int]]
) -> None:
    candidates = [Candidate(str(i), other, n) for i, (other, n) in enumerate(others)]
    chosen = victim(lane, candidates)
    if chosen is None:
        return
    assert not chosen.lane.critical
    assert chosen.lane.policy is lane.policy not in {Policy.REJECT, Policy.COMPACT}
    assert chosen.droppable_bytes > 0
    if lane.policy is Policy.SHED and not lane.critical:
        assert chosen.lane.priority <= lane.priority


@given(
    lane=lanes,
    size=st.integers(1, 500),
    nbytes=st.integers(0, 4000),
    used=st.integers(0, 10_000),
    active=st.integers(0, 5),
)
def test_a_stored_reading_fits_once_its_room_is_made(
    lane: Lane, size: int, nbytes: int, used: int, active: int
) -> None:
    """Whatever the state, a STORE plus the room it asks for keeps the fill at the watermark."""
    fifo = Fifo(nbytes, nbytes, is_new=nbytes == 0)
    used = max(used, nbytes)
    decision = decide(lane, size, fifo=fifo, used=used, active=active, rules=RULES)
    if decision.verdict is not Verdict.STORE:
        return
    after = used + size - decision.drop_own_bytes - decision.make_room_bytes
    assert after <= RULES.high_bytes or used > RULES.high_bytes
    if not lane.critical and RULES.share_bytes is not None:
        assert nbytes + size - decision.drop_own_bytes <= RULES.share_bytes
