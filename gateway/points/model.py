"""The reading: one point on its way from a sensor to the database."""

from __future__ import annotations

from typing import NamedTuple

FieldValue = bool | int | float | str
# The tag that names the sensor; its value comes from the topic's {device} level.
DEVICE_TAG = "device"


class Reading(NamedTuple):
    """One point: a measurement of one device at one timestamp.

    `tags` are sorted by key and include the device tag; `fields` keep the sensor's order.
    """

    device: str
    measurement: str
    tags: tuple[tuple[str, str], ...]
    fields: tuple[tuple[str, FieldValue], ...]
    ts_ns: int
