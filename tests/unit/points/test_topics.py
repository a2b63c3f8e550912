"""Topic templates: filters, placeholder values, and malformed templates."""

from __future__ import annotations

import pytest

from gateway.errors import DecodeError
from gateway.points.topics import TopicTemplate


def test_placeholders_become_plus_and_values() -> None:
    """{name} levels subscribe as + and yield their values."""
    template = TopicTemplate.parse("sensors/{site}/{device}/{measurement}")
    assert template.mqtt_filter == "sensors/+/+/+"
    assert template.match("sensors/s1/dev-1/telemetry") == {
        "site": "s1",
        "device": "dev-1",
        "measurement": "telemetry",
    }
    assert template.match("sensors/s1/dev-1") is None
    assert template.match("other/s1/dev-1/telemetry") is None
    assert template.match("sensors/s1/dev-1/telemetry/extra") is None


def test_trailing_hash_accepts_deeper_levels() -> None:
    """A final # subscribes to everything below and ignores the extra levels."""
    template = TopicTemplate.parse("plant/{device}/#")
    assert template.mqtt_filter == "plant/+/#"
    assert template.match("plant/p1") == {"device": "p1"}
    assert template.match("plant/p1/a/b") == {"device": "p1"}


def test_empty_level_is_invalid_input() -> None:
    """An empty placeholder level is a decode error, not a crash."""
    with pytest.raises(DecodeError):
        TopicTemplate.parse("s/{device}/x").match("s//x")


@pytest.mark.parametrize(
    "template",
    [
        "",
        "sensors/{measurement}",
        "s/{device}/+",
        "s/#/{device}",
        "s/x{device}",
        "s/{device}/{device}",
        "s/{1device}",
    ],
)
def test_malformed_templates_are_refused(template: str) -> None:
    """Templates without {device}, with raw wildcards or partial placeholders are refused."""
    with pytest.raises(ValueError, match=r"."):
        TopicTemplate.parse(template)
