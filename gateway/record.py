"""The stored form of a reading inside the buffer.

Value layout: 8-byte big-endian signed timestamp (ns), then compact JSON
`[measurement, [[tag, value], ...], [[field, value], ...]]`. JSON keeps int, float (shortest
round-trip text), bool and str apart, so a reading reads back exactly as it went in. The
timestamp leads so that the oldest buffered time of a device is read without decoding.
The device is not stored here: it is part of the key.
"""

from __future__ import annotations

import json
import struct

from gateway.model import Reading

_TS = struct.Struct(">q")
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def pack(reading: Reading) -> bytes:
    """Serialize a reading for the buffer."""
    body = _dumps([reading.measurement, reading.tags, reading.fields])
    return _TS.pack(reading.ts_ns) + body.encode()


def unpack(device: str, value: bytes) -> Reading:
    """Rebuild a reading stored by `pack`."""
    measurement, tags, fields = json.loads(value[_TS.size :])
    return Reading(
        device,
        measurement,
        tuple(map(tuple, tags)),
        tuple(map(tuple, fields)),
        _TS.unpack_from(value)[0],
    )


def timestamp_of(value: bytes) -> int:
    """The timestamp of a stored reading, without decoding the rest."""
    ts: int = _TS.unpack_from(value)[0]
    return ts
