"""A message's readings as they are built: the result, the route of a topic, the checks.

Pure. Shared by every format's decoder (gateway/ingest/core/decode.py and, for Sparkplug B,
gateway/ingest/core/sparkplugread.py): a reading is made and held to [limits] in `add`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from gateway.buffer.core.ledger import MAX_DEVICE_BYTES
from gateway.config.mqtt import DEFAULT_DEVICE_CLASS
from gateway.errors import DecodeError
from gateway.points.model import Reading

if TYPE_CHECKING:
    from collections.abc import Sequence

    from gateway.config.mqtt import Subscription
    from gateway.config.sections import LimitSettings
    from gateway.points.model import FieldValue
    from gateway.points.names import Names

# [limits] field_named_like_tag = "rename": a field named like a tag of its reading gets this.
RENAMED_FIELD_SUFFIX = "_field"


@dataclass(slots=True)
class Decoded:
    """What one message yielded: the valid readings and one error per invalid reading."""

    readings: list[Reading] = field(default_factory=list)
    errors: list[DecodeError] = field(default_factory=list)
    # The device class of the subscription the topic matched: the readings' admission lane.
    device_class: str = DEFAULT_DEVICE_CLASS
    # State to commit with the readings (gateway/buffer/store.py `admit`), and messages to
    # publish once they are committed (topic, payload): Sparkplug B alias maps and rebirths.
    notes: dict[bytes, bytes] = field(default_factory=dict)
    commands: list[tuple[str, bytes]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Route:
    """What a topic means: its subscription, device, measurement and the tags it sets."""

    sub: Subscription
    device: str
    measurement: str
    topic_tags: dict[str, str]
    sorted_tags: tuple[tuple[str, str], ...]
    tag_keys: frozenset[str]

    def __post_init__(self) -> None:
        """Refuse a device the buffer cannot name a FIFO after: every format's routes come here.

        Raises:
            DecodeError: the device's name is too long.
        """
        size = len(self.device.encode())
        if size > MAX_DEVICE_BYTES:
            raise DecodeError(
                "device_too_long",
                f"device name is {size} bytes in UTF-8, more than {MAX_DEVICE_BYTES}",
            )


class Bounds(NamedTuple):
    """The limits a message's readings are held to; timestamps relative to its receipt.

    A named tuple, made per message: a frozen dataclass costs three times as much to make.
    """

    limits: LimitSettings
    names: Names
    oldest_ns: int
    newest_ns: int


def add(
    route: Route,
    result: Decoded,
    *,
    measurement: str,
    tags: dict[str, str],
    fields: Sequence[tuple[str, FieldValue]],
    ts_ns: int,
    bounds: Bounds,
    measurement_checked: bool = False,
) -> None:
    """Make one reading of `route`'s device and hold it to the limits; appended to `result`.

    `measurement_checked`: the caller checked the measurement's name already (and `route`'s
    tags were checked with the route).

    Raises:
        DecodeError: the reading breaks a limit or a naming rule.
    """
    limits = bounds.limits
    if len(fields) > limits.max_fields_per_reading:
        raise DecodeError(
            "too_many_fields", f"{len(fields)} fields, more than {limits.max_fields_per_reading}"
        )
    if not bounds.oldest_ns <= ts_ns <= bounds.newest_ns:
        which = "future" if ts_ns > bounds.newest_ns else "past"
        raise DecodeError(
            f"timestamp_too_far_in_{which}", f"timestamp {ts_ns} ns is out of [limits] range"
        )
    if tags:
        clash = route.topic_tags.keys() & tags.keys()
        if clash:
            raise DecodeError("tag_conflict", f"payload tag {min(clash)!r} is set by the topic")
        tags.update(route.topic_tags)
        sorted_tags = tuple(sorted(tags.items()))
        bounds.names.check_series(measurement, sorted_tags)
        tag_keys = frozenset(tags)
    elif measurement is route.measurement or measurement_checked:
        sorted_tags, tag_keys = route.sorted_tags, route.tag_keys  # checked with the route
    else:
        sorted_tags, tag_keys = route.sorted_tags, route.tag_keys
        bounds.names.check_series(measurement, sorted_tags)
    if len(sorted_tags) > limits.max_tags:
        raise DecodeError("too_many_tags", f"{len(sorted_tags)} tags, more than {limits.max_tags}")
    if limits.field_named_like_tag == "rename":
        fields = _rename_tag_named_fields(fields, tag_keys)
    reading = Reading(route.device, measurement, sorted_tags, tuple(fields), ts_ns)
    bounds.names.check_fields(reading, tag_keys, limits.max_string_len)
    result.readings.append(reading)


def _rename_tag_named_fields(
    fields: Sequence[tuple[str, FieldValue]], tag_keys: frozenset[str]
) -> Sequence[tuple[str, FieldValue]]:
    for key, _ in fields:
        if key in tag_keys:
            break
    else:
        return fields
    renamed = [(f"{key}{RENAMED_FIELD_SUFFIX}" if key in tag_keys else key, v) for key, v in fields]
    if len({key for key, _ in renamed}) < len(renamed):
        raise DecodeError("duplicate_field", "a renamed field has the name of another field")
    return renamed
