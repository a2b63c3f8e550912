"""Report by exception: what the deadband keeps, what it suppresses, and what its state holds."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config.mqtt import Deadband
from gateway.ingest.core.deadband import Deadbands, Kept, Rule, SeriesKey
from gateway.points.model import FieldValue, Reading

S = 1_000_000_000
CLASS = "slow"
RULE = Rule.of(Deadband(absolute=0.5, relative=0.1, heartbeat_s=10))


def reading(device: str, ts_s: float, **fields: FieldValue) -> Reading:
    return Reading(device, "m", (("device", device),), tuple(fields.items()), round(ts_s * S))


def deadbands(rule: Rule = RULE) -> Deadbands:
    return Deadbands({CLASS: rule})


def take(bands: Deadbands, *readings: Reading, clean: bool = True) -> list[bool]:
    """Judge one message and commit it alone: what was kept."""
    judged = bands.judge(CLASS, readings)
    marks = [j.mark for j in judged if j.mark is not None]
    bands.stage(marks)
    bands.settle(marks, clean=clean)
    return [j.keep for j in judged]


# One series' readings: a few devices, a float field moving in small steps, sometimes a string
# or an int field instead, time going forward mostly and sometimes back.
FIELD_SETS = st.sampled_from(["v", "v+s", "vi"])
STEPS = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c"]),
        st.floats(min_value=-2.0, max_value=12.0),  # seconds since the last reading
        st.floats(min_value=-1.0, max_value=1.0),  # the value's move
        FIELD_SETS,
        st.sampled_from(["on", "off"]),
    ),
    max_size=60,
)


def readings_of(steps: list[tuple[str, float, float, str, str]]) -> list[Reading]:
    out, now, value = [], 1_700_000_000.0, 20.0
    for device, dt, move, field_set, state in steps:
        now, value = now + dt, value + move
        if field_set == "v":
            out.append(reading(device, now, v=value))
        elif field_set == "v+s":
            out.append(reading(device, now, v=value, s=state))
        else:
            out.append(reading(device, now, v=round(value)))
    return out


def within(rule: Rule, kept: Reading, new: Reading) -> bool:
    """The deadband's definition, written out independently of its code."""
    before, after = dict(kept.fields), dict(new.fields)
    if before.keys() != after.keys() or not 0 <= new.ts_ns - kept.ts_ns < rule.heartbeat_ns:
        return False
    for name, value in after.items():
        was = before[name]
        if type(value) is not type(was):
            return False
        if isinstance(value, str | bool):
            if value != was:
                return False
        elif value != was and not abs(value - was) < rule.band(name, was):  # type: ignore[arg-type,operator]
            return False
    return True


@given(STEPS)
def test_kept_and_suppressed_readings_follow_the_definition(steps: list) -> None:
    """Suppressed iff within band of the last KEPT reading of its series, within the heartbeat."""
    bands = deadbands()
    last: dict[str, Reading] = {}  # the last reading kept, by series
    for new in readings_of(steps):
        (keep,) = take(bands, new)
        seen = last.get(new.device)
        if seen is None:
            assert keep, "a first reading is kept"
        else:
            assert keep is not within(RULE, seen, new)
            if dict(seen.fields).keys() != dict(new.fields).keys():
                assert keep, "a changed field set is kept"
        if keep:
            last[new.device] = new


@given(STEPS, st.integers(min_value=1, max_value=3))
def test_state_is_bounded_and_a_forgotten_series_keeps_its_next_reading(
    steps: list, max_series: int
) -> None:
    """At most max_series series remembered; the least recently used is forgotten first."""
    rule = Rule.of(Deadband(absolute=100.0, heartbeat_s=86_400, max_series=max_series))
    bands = deadbands(rule)
    order: list[str] = []  # least recently used first
    for new in readings_of(steps):
        remembered = new.device in order
        (keep,) = take(bands, new)
        if not remembered:
            assert keep
        if new.device in order:
            order.remove(new.device)
        order.append(new.device)
        del order[:-max_series]
        assert bands.series(CLASS) == len(order) <= max_series


@given(STEPS, STEPS, STEPS)
def test_settling_without_clean_changes_no_later_decision(
    before: list, lost: list, after: list
) -> None:
    """A batch not settled clean (refused, not committed) leaves the state as it was."""
    with_lost, without = deadbands(), deadbands()
    for new in readings_of(before):
        take(with_lost, new)
        take(without, new)
    for new in readings_of(lost):
        take(with_lost, new, clean=False)
    for new in readings_of(after):
        assert take(with_lost, new) == take(without, new)


def test_a_batch_judges_against_its_staged_readings_and_settles_only_the_committed() -> None:
    """Later messages of a batch see earlier kept ones; uncommitted marks are forgotten."""
    bands = deadbands()
    first = bands.judge(CLASS, [reading("a", 0, v=20.0)])
    bands.stage([j.mark for j in first if j.mark])
    (second,) = bands.judge(CLASS, [reading("a", 1, v=20.1)])
    assert first[0].keep
    assert not second.keep
    bands.settle([], clean=True)  # nothing of the batch committed
    (again,) = bands.judge(CLASS, [reading("a", 2, v=20.1)])
    assert again.keep, "the staged reading was never stored"


def test_a_message_is_judged_against_its_own_earlier_readings() -> None:
    """An array of readings of one series: each against the last one kept before it."""
    keeps = take(
        deadbands(Rule.of(Deadband(absolute=0.5))),
        reading("a", 0, v=20.0),
        reading("a", 1, v=20.3),
        reading("a", 2, v=20.6),  # 0.6 from 20.0: kept
        reading("a", 3, v=20.9),  # 0.3 from 20.6
    )
    assert keeps == [True, False, True, False]


def test_slow_drift_cannot_creep_past_the_band() -> None:
    """Judged against the last kept, not the last seen: a drift of 0.2 a step is kept every 3."""
    bands = deadbands(Rule.of(Deadband(absolute=0.5, heartbeat_s=3600)))
    keeps = [take(bands, reading("a", t, v=20.0 + 0.2 * t))[0] for t in range(10)]
    assert keeps == [True, False, False, True, False, False, True, False, False, True]


@pytest.mark.parametrize(
    ("new", "why"),
    [
        (reading("a", 5, v=20.1), None),
        (reading("a", 5, v=22.6), "v moved 2.6 >= band 2"),  # relative: 0.1 x 20
        (reading("a", 10, v=20.1), "heartbeat: 10 s since the last kept"),
        (reading("a", -1, v=20.0), "timestamp before the last kept reading's"),
        (reading("a", 5, v=20.0, s="x"), "the field names changed"),
        (reading("a", 5, w=20.0), "the field names changed"),
        (reading("a", 5, v=20), "v changed type"),
    ],
)
def test_each_reason_to_keep(new: Reading, why: str | None) -> None:
    """The reason a reading is kept, as `gateway try` shows it."""
    bands = deadbands()
    take(bands, reading("a", 0, v=20.0))
    (judged,) = bands.judge(CLASS, [new], explain=True)
    assert judged.keep is (why is not None)
    if why is None:
        assert judged.why == "all fields within band, 5 s since the last kept (heartbeat 10 s)"
    else:
        assert judged.why == why


def test_a_band_table_names_fields_and_the_others_keep_any_change() -> None:
    """With a table, a field it does not name is kept on any change, and equal is within band."""
    rule = Rule.of(Deadband(absolute={"temp": 1.0}))
    bands = deadbands(rule)
    take(bands, reading("a", 0, temp=20.0, hum=40.0))
    assert take(bands, reading("a", 1, temp=20.5, hum=40.0)) == [False]
    assert take(bands, reading("a", 2, temp=20.5, hum=40.1)) == [True]


def test_strings_and_booleans_must_be_equal() -> None:
    """A changed string or boolean is kept whatever the numbers did."""
    bands = deadbands()
    take(bands, reading("a", 0, v=1.0, s="on", b=True))
    assert take(bands, reading("a", 1, v=1.0, s="on", b=True)) == [False]
    assert take(bands, reading("a", 2, v=1.0, s="off", b=True)) == [True]
    assert take(bands, reading("a", 3, v=1.0, s="off", b=False)) == [True]


def test_a_class_without_a_rule_keeps_everything() -> None:
    """Only classes with a deadband are judged."""
    bands = deadbands()
    judged = bands.judge("other", [reading("a", 0, v=1.0), reading("a", 1, v=1.0)])
    assert [j.keep for j in judged] == [True, True]
    assert bands.rule_for("other") is None


def test_reconfigure_drops_only_the_state_of_a_changed_rule() -> None:
    """A class whose rule changed starts afresh; another keeps what it remembered."""
    bands = Deadbands({"x": RULE, "y": RULE})
    for device_class in ("x", "y"):
        judged = bands.judge(device_class, [reading("a", 0, v=1.0)])
        bands.settle([j.mark for j in judged if j.mark], clean=True)
    bands.reconfigure({"x": RULE, "y": Rule.of(Deadband(absolute=2.0))})
    assert bands.series("x") == 1
    assert bands.series("y") == 0


def test_state_holds_the_kept_values() -> None:
    """The reference of a series is the kept reading, field by field."""
    bands = deadbands()
    take(bands, reading("a", 0, v=1.0, s="on"))
    key: SeriesKey = ("a", "m", (("device", "a"),))
    assert bands._state[CLASS][key] == Kept(0, {"v": 1.0, "s": "on"})
