"""The `deadband` table of a subscription: what it accepts, and each mistake named by its key."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from gateway.config import loader as config
from gateway.ingest.core.deadband import Deadbands
from tests.unit.config.test_config import MINIMAL, problems, write

if TYPE_CHECKING:
    from pathlib import Path

SUBSCRIPTION = '[[mqtt.subscriptions]]\ntopic = "sensors/{device}/{measurement}"\n'


def with_deadband(table: str, extra: str = "") -> str:
    return MINIMAL.replace(SUBSCRIPTION, f"{SUBSCRIPTION}deadband = {{ {table} }}\n{extra}")


def test_a_deadband_table_becomes_its_class_rule(tmp_path: Path) -> None:
    """Numbers, tables by field and the heartbeat reach the rule of the subscription's class."""
    text = with_deadband("absolute = { temp = 0.2 }, relative = 0.01, heartbeat_s = 60")
    settings = config.load(write(tmp_path, text), {})
    rule = Deadbands.of(settings.mqtt.subscriptions).rule_for("default")
    assert rule is not None
    assert rule.heartbeat_ns == 60 * 10**9
    assert rule.band("temp", 100.0) == 1.0
    assert rule.band("hum", 10.0) == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ("heartbeat_s = 60", ": set absolute, relative or both"),
        ("absolute = -1", ".absolute: must be a finite number >= 0"),
        ("absolute = { temp = inf }", ".absolute: temp: must be a finite number"),
        ("relative = 0", ".relative: must be a fraction in (0, 1]"),
        ("relative = { hum = 1.5 }", ".relative: hum: must be a fraction"),
        ("absolute = 1, heartbeat_s = 0", ".heartbeat_s: Input should be greater than 0"),
        ("absolute = 1, max_series = 0", ".max_series: Input should be greater than or equal"),
        ("absolute = 1, band = 2", ".band: unknown key"),
    ],
)
def test_each_mistake_is_named(tmp_path: Path, table: str, expected: str) -> None:
    """One problem, under the subscription's deadband key."""
    (found,) = problems(tmp_path, with_deadband(table))
    assert found.startswith(f"mqtt.subscriptions.0.deadband{expected}"), found


def test_subscriptions_of_one_class_share_a_deadband(tmp_path: Path) -> None:
    """A second subscription of the class with another deadband is refused, by key."""
    other = '\n[[mqtt.subscriptions]]\ntopic = "alarms/{device}"\nmeasurement = "a"\n'
    (found,) = problems(tmp_path, with_deadband("absolute = 1") + other)
    assert found.startswith("mqtt: subscriptions.1.deadband: device_class 'default' has"), found
