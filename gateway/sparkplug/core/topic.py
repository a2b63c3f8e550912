"""Sparkplug B topics: spBv1.0/<group>/<message type>/<edge node>[/<device>]."""

from __future__ import annotations

from typing import NamedTuple

from gateway.errors import DecodeError

NODE_TYPES = frozenset({"NBIRTH", "NDATA", "NDEATH", "NCMD"})
DEVICE_TYPES = frozenset({"DBIRTH", "DDATA", "DDEATH", "DCMD"})
# What a host application publishes or edge nodes are told: no readings in them.
NOT_READINGS = frozenset({"NCMD", "DCMD", "STATE"})


class SparkplugTopic(NamedTuple):
    """A topic's parts; `device` is None for an edge node's own messages."""

    group: str
    kind: str
    node: str
    device: str | None


def parse_topic(topic: str) -> SparkplugTopic:
    """The parts of a Sparkplug B topic.

    Raises:
        DecodeError: the topic is not one of the specification's shapes.
    """
    levels = topic.split("/")
    if len(levels) >= 3 and levels[1] == "STATE":  # noqa: PLR2004 - spBv1.0/STATE/<host>
        return SparkplugTopic("", "STATE", "/".join(levels[2:]), None)
    if len(levels) == 4 and levels[2] in NODE_TYPES:  # noqa: PLR2004
        device = None
    elif len(levels) == 5 and levels[2] in DEVICE_TYPES:  # noqa: PLR2004
        device = levels[4]
    else:
        raise DecodeError(
            "sparkplug_bad_topic", f"topic {topic[:200]!r} is not a Sparkplug B message topic"
        )
    if not all(levels[1:]):
        raise DecodeError("sparkplug_bad_topic", f"topic {topic[:200]!r} has an empty level")
    return SparkplugTopic(levels[1], levels[2], levels[3], device)


def command_topic(group: str, node: str) -> str:
    """Where an edge node takes its commands (NCMD)."""
    return f"spBv1.0/{group}/NCMD/{node}"
