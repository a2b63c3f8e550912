"""The compact policy's [buffer] keys and a subscription's deadband: bounds named by key."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from gateway.buffer.core.admission import Policy, rules_of
from gateway.config import loader as config
from tests.unit.config.test_config import MINIMAL, problems, write

if TYPE_CHECKING:
    from pathlib import Path

S = 1_000_000_000


def with_buffer(extra: str) -> str:
    """The minimal configuration with more [buffer] keys."""
    return MINIMAL.replace('capacity = "1GiB"', 'capacity = "1GiB"\n' + extra)


def with_deadband(table: str, text: str = MINIMAL) -> str:
    """A configuration whose first subscription has the deadband `table` (inline TOML)."""
    return text.replace('format = "json"', f'format = "json"\ndeadband = {table}', 1)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("compact_ladder = [1]", "buffer.compact_ladder: each multiplier is a whole number from 2"),
        ("compact_ladder = [10, 1001]", "buffer.compact_ladder: each multiplier is a whole number"),
        ("compact_ladder = [2, 2, 2, 2, 2, 2, 2]", "buffer.compact_ladder: at most 6 multipliers"),
        ("compact_ladder = [2.5]", "buffer.compact_ladder.0: Input should be a valid integer"),
        (
            "compact_ladder = [1000, 11]",
            "buffer: compact_interval_s x compact_ladder gives a coarsest step of 660000 s",
        ),
        ("compact_interval_s = 0", "buffer.compact_interval_s: Input should be greater than"),
        ("compact_interval_s = 3601", "buffer.compact_interval_s: Input should be less than"),
        ("compact_level_share = 0", "buffer.compact_level_share: Input should be greater than"),
        ("compact_level_share = 0.6", "buffer.compact_level_share: Input should be less than"),
    ],
)
def test_compact_settings_out_of_bounds_are_named(
    tmp_path: Path, extra: str, expected: str
) -> None:
    """Each out-of-bounds compact key is one problem naming the key."""
    found = problems(tmp_path, with_buffer('policy = "compact"\n' + extra))
    assert len(found) == 1
    assert found[0].startswith(expected), found


@pytest.mark.parametrize(
    ("extra", "steps_s"),
    [
        ("", (60, 600, 3600)),
        ("compact_ladder = []", (60,)),
        ("compact_ladder = [2, 2, 2, 2, 2, 2]", (60, 120, 240, 480, 960, 1920, 3840)),
        ("compact_interval_s = 3600\ncompact_ladder = [24, 7]", (3600, 86_400, 604_800)),  # 7 days
        ("compact_interval_s = 1\ncompact_ladder = [1000]", (1, 1000)),
    ],
)
def test_compact_settings_within_bounds_load(
    tmp_path, extra: str, steps_s: tuple[int, ...]
) -> None:
    """The bounds themselves are accepted, and the steps are the interval times the ladder."""
    settings = config.load(write(tmp_path, with_buffer('policy = "compact"\n' + extra)), {})
    assert settings.buffer.compact_steps_s == steps_s


def test_compact_lanes_carry_the_steps_and_the_share(tmp_path: Path) -> None:
    """A compact lane takes [buffer]'s steps in ns and level share; other lanes take none."""
    text = with_buffer(
        'policy = "compact"\ncompact_interval_s = 30\ncompact_ladder = [4, 5]\n'
        "compact_level_share = 0.2"
    ) + (
        '\n[[mqtt.subscriptions]]\ntopic = "alarms/{device}"\nmeasurement = "alarm"\n'
        'device_class = "alarm"\npolicy = "reject"\n'
    )
    rules = rules_of(config.load(write(tmp_path, text), {}), 1000)
    steps = (30 * S, 120 * S, 600 * S)
    for lane in (rules.lane("default"), rules.lane("gone-from-the-config")):
        assert (lane.policy, lane.steps_ns, lane.level_share) == (Policy.COMPACT, steps, 0.2)
        assert lane.is_compactable
    assert rules.lane("alarm").steps_ns == ()
    assert not rules.lane("alarm").is_compactable


def test_a_compact_subscription_takes_the_buffer_steps(tmp_path: Path) -> None:
    """A subscription's own compact policy under a reject buffer gets [buffer]'s steps."""
    text = MINIMAL.replace('format = "json"', 'format = "json"\npolicy = "compact"')
    rules = rules_of(config.load(write(tmp_path, text), {}), 1000)
    assert rules.lane("default").steps_ns == (60 * S, 600 * S, 3600 * S)
    assert rules.lane("gone-from-the-config").policy is Policy.REJECT
    assert rules.lane("gone-from-the-config").steps_ns == ()


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ("{absolute = -1}", "mqtt.subscriptions.0.deadband.absolute: must be a finite number >= 0"),
        ("{absolute = inf}", "mqtt.subscriptions.0.deadband.absolute: must be a finite number"),
        ("{absolute = nan}", "mqtt.subscriptions.0.deadband.absolute: must be a finite number"),
        (
            "{absolute = {temp = 0.5, hum = -0.5}}",
            "mqtt.subscriptions.0.deadband.absolute: hum: must be a finite number >= 0",
        ),
        ("{relative = 0}", "mqtt.subscriptions.0.deadband.relative: must be a fraction in (0, 1]"),
        ("{relative = 1.5}", "mqtt.subscriptions.0.deadband.relative: must be a fraction"),
        (
            "{relative = {hum = 2}}",
            "mqtt.subscriptions.0.deadband.relative: hum: must be a fraction",
        ),
        ("{heartbeat_s = 10}", "mqtt.subscriptions.0.deadband: set absolute, relative or both"),
        ("{absolute = 1, heartbeat_s = 0}", "mqtt.subscriptions.0.deadband.heartbeat_s: Input"),
        ("{absolute = 1, max_series = 0}", "mqtt.subscriptions.0.deadband.max_series: Input"),
        ("{absolute = 1, band = 2}", "mqtt.subscriptions.0.deadband.band: unknown key"),
    ],
)
def test_deadband_problems_are_named(tmp_path: Path, table: str, expected: str) -> None:
    """Each bad deadband is one problem naming the key (and the field of a table)."""
    found = problems(tmp_path, with_deadband(table))
    assert len(found) == 1
    assert found[0].startswith(expected), found


def test_a_deadband_loads_with_a_band_by_field(tmp_path: Path) -> None:
    """A relative band for every field and an absolute one by field load as given."""
    text = with_deadband("{relative = 1, absolute = {temp = 0.3}, heartbeat_s = 60}")
    band = config.load(write(tmp_path, text), {}).mqtt.subscriptions[0].deadband
    assert band is not None
    assert (band.relative, band.absolute, band.heartbeat_s) == (1, {"temp": 0.3}, 60)
    assert band.max_series == 10_000


def test_subscriptions_of_one_class_must_agree_on_the_deadband(tmp_path: Path) -> None:
    """A class is one lane: two subscriptions of it with different deadbands are refused."""
    second = '\n[[mqtt.subscriptions]]\ntopic = "b/{device}"\nmeasurement = "b"\n'
    found = problems(tmp_path, MINIMAL + second + "deadband = {absolute = 1}\n")
    assert len(found) == 1
    assert found[0].startswith("mqtt: subscriptions.1.deadband: device_class 'default' has"), found
    text = with_deadband("{absolute = 1}") + second + "deadband = {absolute = 1}\n"
    assert len(config.load(write(tmp_path, text), {}).mqtt.subscriptions) == 2
