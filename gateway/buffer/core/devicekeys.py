"""Keys of the store's `devices` table, where each FIFO's state is checkpointed.

A FIFO's name is its key. LMDB refuses keys over 511 bytes, and a name can be longer: ingest
refuses devices over `MAX_DEVICE_BYTES`, but a buffer written before that limit may hold one,
and a device class and a compaction level lengthen the name. A longer name is kept under a
digest of it, NUL first (names hold no control character, so no short name starts so), with the
name itself after the state in the value. Without this, one such FIFO failed every checkpoint.
"""

from __future__ import annotations

import hashlib

from gateway.buffer.core.ledger import DEVICE, MAX_KEY_BYTES, DeviceState

_LONG = b"\x00"


def device_key(fifo: str) -> bytes:
    """The key of `fifo`'s state."""
    name = fifo.encode()
    if len(name) <= MAX_KEY_BYTES:
        return name
    return _LONG + hashlib.blake2b(name, digest_size=32).digest()


def device_entry(fifo: str, state: DeviceState) -> tuple[bytes, bytes]:
    """The key and value that checkpoint `fifo`'s state."""
    key = device_key(fifo)
    packed = state.pack()
    return key, packed + fifo.encode() if key.startswith(_LONG) else packed


def read_entry(key: bytes, value: bytes) -> tuple[str, DeviceState]:
    """The FIFO name and state of one entry of the table."""
    if key.startswith(_LONG):
        return value[DEVICE.size :].decode(), DeviceState.unpack(value[: DEVICE.size])
    return key.decode(), DeviceState.unpack(value)
