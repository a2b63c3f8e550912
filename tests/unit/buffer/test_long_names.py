"""FIFO names longer than LMDB's keys: their states checkpoint, come back and are forgotten.

Ingest refuses device names over 400 bytes, but a buffer written before that limit may hold
longer ones, which made every checkpoint fail; the buffer must take them whatever ingest does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.buffer.core.devicekeys import device_key
from gateway.buffer.core.ledger import MAX_KEY_BYTES, fifo_name, level_fifo
from gateway.buffer.store import Buffer
from gateway.points.model import Reading
from gateway.points.record import pack

if TYPE_CHECKING:
    from pathlib import Path

MIB = 1 << 20
LONG = "\U0001f321" * 150  # 600 bytes
NAMES = [LONG, fifo_name(LONG, "critical"), level_fifo(LONG, 2), "short"]


def readings(n: int) -> list[tuple[str, bytes]]:
    return [
        (fifo, pack(Reading(fifo, "m", (("k", str(i)),), (("v", float(i)),), i + 1)))
        for i in range(n)
        for fifo in NAMES
    ]


def test_long_names_have_keys_lmdb_takes_and_distinct_from_every_short_name() -> None:
    keys = {device_key(name) for name in NAMES}
    assert len(keys) == len(NAMES)
    assert all(len(key) <= MAX_KEY_BYTES for key in keys)
    assert device_key("short") == b"short"


def test_long_fifo_names_checkpoint_recover_and_are_forgotten(tmp_path: Path) -> None:
    with Buffer(tmp_path, 16 * MIB) as buffer:
        buffer.append(readings(3))
        buffer.checkpoint()
        buffer.append(readings(2))  # left in the journal: the reopen replays it
    with Buffer(tmp_path, 16 * MIB) as buffer:
        assert buffer.totals().readings == 5 * len(NAMES)
        assert buffer.backlog() == dict.fromkeys(NAMES, 5)
        spans = buffer.read([(fifo, 5) for fifo in NAMES])
        assert [len(span.values) for span in spans] == [5] * len(NAMES)
        buffer.delete([(span.device, span.first_seq, len(span.values)) for span in spans], [])
        buffer.checkpoint()
    with Buffer(tmp_path, 16 * MIB) as buffer:
        assert buffer.totals().readings == 0
        buffer.append(readings(1))
        buffer.checkpoint()
    with Buffer(tmp_path, 16 * MIB, readonly=True) as buffer:
        assert buffer.backlog() == dict.fromkeys(NAMES, 1)
