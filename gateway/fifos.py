"""The FIFO model of the buffer: names, accounting records and their on-disk encoding.

Pure: plain values and `struct` layouts, shared by the buffer, its transactions and its
integrity check (see gateway/buffer.py for the database layout).
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass, field

from gateway.admission import DEFAULT_CLASS

KEY = struct.Struct(">IQ")
DEVICE = struct.Struct(">IQQQQq")
TOTALS = struct.Struct(">QQ")
U32 = struct.Struct(">I")
U64 = struct.Struct(">Q")
U32_MAX = 2**32 - 1
# A FIFO's name is the device, with the device class appended for other classes than the default.
_CLASS_SEPARATOR = "\x1f"


def fifo_name(device: str, device_class: str) -> str:
    """The FIFO of a device's readings of one device class.

    Device names hold no control character (gateway/lineproto.py), so the separator is free.
    """
    if device_class == DEFAULT_CLASS:
        return device
    return f"{device}{_CLASS_SEPARATOR}{device_class}"


def fifo_device(fifo: str) -> str:
    """The device a FIFO belongs to."""
    return fifo.partition(_CLASS_SEPARATOR)[0]


def fifo_class(fifo: str) -> str:
    """The device class of a FIFO."""
    return fifo.partition(_CLASS_SEPARATOR)[2] or DEFAULT_CLASS


@dataclass(slots=True)
class DeviceState:
    """Accounting of one device's FIFO."""

    number: int
    head: int  # sequence of the oldest buffered reading
    next: int  # sequence the next appended reading gets
    readings: int
    nbytes: int
    oldest_ts_ns: int

    def pack(self) -> bytes:
        """Serialize for the `devices` database."""
        return DEVICE.pack(
            self.number, self.head, self.next, self.readings, self.nbytes, self.oldest_ts_ns
        )


@dataclass(frozen=True, slots=True)
class Span:
    """A run of one device's buffered readings, as read for a batch."""

    device: str
    first_seq: int
    values: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A point the database refused, with its reason."""

    id: int
    device: str
    reason: str
    line: str


@dataclass(slots=True)
class Admitted:
    """What one `admit` did: readings stored, and refused and dropped by (reason, class)."""

    stored: int = 0
    refused: Counter[tuple[str, str]] = field(default_factory=Counter)
    dropped: Counter[tuple[str, str]] = field(default_factory=Counter)
    # (FIFO, FIFO number, sequence, packed record) of each reading stored, for the latest values.
    placed: list[tuple[str, int, int, bytes]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Totals:
    """Buffer-wide accounting."""

    readings: int
    nbytes: int
    devices: int  # devices with at least one buffered reading
