"""The stored form of a reading inside the buffer: line protocol, already encoded.

Value layout: 8-byte big-endian signed timestamp (ns), 2-byte big-endian length of the series,
the series (`measurement,tag=value,...`, escaped, tags sorted) and the fields (`key=value,...`,
escaped and typed), both UTF-8. Encoding happens once, at ingest; flushing a reading is then
concatenation, and coalescing compares series bytes. The device is not stored here: it is part of
the key (and, as the `device` tag, part of the series).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, NamedTuple

from gateway.points.lineproto import encode_fields, encode_series_bytes

if TYPE_CHECKING:
    from gateway.points.model import Reading

# Timestamp ns, length of the series.
HEADER = struct.Struct(">qH")


class Stored(NamedTuple):
    """A stored reading split into its encoded parts."""

    ts_ns: int
    series: bytes
    fields: bytes

    @property
    def line(self) -> bytes:
        """The line-protocol line of this reading (no newline)."""
        return b"%s %s %d" % (self.series, self.fields, self.ts_ns)


def pack(reading: Reading) -> bytes:
    """Serialize a checked reading for the buffer."""
    series = encode_series_bytes(reading.measurement, reading.tags)
    fields = encode_fields(reading.fields).encode()
    return HEADER.pack(reading.ts_ns, len(series)) + series + fields


def split(value: bytes) -> Stored:
    """The encoded parts of a stored reading, without decoding them."""
    ts_ns, series_len = HEADER.unpack_from(value)
    start = HEADER.size
    return Stored(ts_ns, value[start : start + series_len], value[start + series_len :])


def timestamp_of(value: bytes | memoryview) -> int:
    """The timestamp of a stored reading, without decoding the rest."""
    ts: int = HEADER.unpack_from(value)[0]
    return ts
