"""Whole-reading helpers the tests use beside the product's encoder: a point, a batch, a check.

The product encodes readings once, at ingest, into their stored form (gateway/points/record.py)
and never needs a whole point as text, nor to read a stored reading back as a `Reading`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.config.sections import LimitSettings
from gateway.points.lineparse import parse_lines
from gateway.points.lineproto import encode_fields, encode_series
from gateway.points.model import Reading
from gateway.points.names import Names
from gateway.points.record import split

if TYPE_CHECKING:
    from collections.abc import Iterable

NAMES = Names(LimitSettings().max_identifier_len)


def check_reading(reading: Reading, names: Names = NAMES) -> None:
    """Refuse a reading that cannot be encoded exactly, as the decoders do."""
    names.check_series(reading.measurement, reading.tags)
    names.check_fields(reading)


def encode_point(reading: Reading) -> str:
    """One point as a line (no newline); assumes `check_reading` passed."""
    series = encode_series(reading.measurement, reading.tags)
    return f"{series} {encode_fields(reading.fields)} {reading.ts_ns}"


def encode_batch(readings: Iterable[Reading]) -> bytes:
    """A write body: one line per point."""
    return "\n".join(encode_point(r) for r in readings).encode()


def unpack(device: str, value: bytes) -> Reading:
    """Rebuild the reading stored by `record.pack` (exact: see the round-trip tests)."""
    ((measurement, tags, fields, ts_ns),) = parse_lines(split(value).line.decode())
    return Reading(device, measurement, tuple(tags), tuple(fields), ts_ns or 0)
