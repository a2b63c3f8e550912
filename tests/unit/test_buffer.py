"""The LMDB buffer: per-device FIFO, exact accounting, delete only what was delivered."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from gateway.buffer import Buffer
from gateway.errors import CapacityError, StorageError
from gateway.model import Reading
from gateway.record import pack, unpack

if TYPE_CHECKING:
    from pathlib import Path

MIB = 1 << 20


def rec(device: str, ts: int) -> tuple[str, bytes]:
    return device, pack(Reading(device, "m", (("device", device),), (("v", float(ts)),), ts))


def test_fifo_per_device_and_exact_accounting(tmp_path: Path) -> None:
    """Readings come back per device in acceptance order; totals count every byte."""
    buf = Buffer(tmp_path, 16 * MIB)
    items = [rec("a", 1), rec("b", 2), rec("a", 3), rec("b", 4), rec("a", 5)]
    buf.append(items)
    assert buf.backlog() == {"a": 3, "b": 2}
    spans = buf.read([("a", 2), ("b", 10)])
    assert [
        (s.device, s.first_seq, [unpack(s.device, v).ts_ns for v in s.values]) for s in spans
    ] == [("a", 0, [1, 3]), ("b", 0, [2, 4])]
    totals = buf.totals()
    assert totals.readings == 5
    assert totals.nbytes == sum(12 + len(v) for _, v in items)
    assert buf.devices()["a"].oldest_ts_ns == 1

    assert buf.delete([("a", 0, 2)]) == 2
    assert buf.backlog() == {"a": 1, "b": 2}
    assert buf.devices()["a"].oldest_ts_ns == 5
    assert [unpack("a", v).ts_ns for v in buf.read([("a", 9)])[0].values] == [5]


def test_read_does_not_remove(tmp_path: Path) -> None:
    """Reading twice returns the same readings."""
    buf = Buffer(tmp_path, 16 * MIB)
    buf.append([rec("a", 1)])
    assert buf.read([("a", 5)]) == buf.read([("a", 5)])
    assert buf.totals().readings == 1


def test_accounting_survives_reopen(tmp_path: Path) -> None:
    """After close and reopen, counts, bytes and heads are what they were."""
    buf = Buffer(tmp_path, 16 * MIB)
    buf.append([rec(f"d{i % 7}", i) for i in range(100)])
    buf.delete([("d0", 0, 5), ("d3", 0, 14)])
    before = (buf.totals(), buf.devices())
    buf.close()
    again = Buffer(tmp_path, 16 * MIB)
    assert (again.totals(), again.devices()) == before
    assert again.read([("d0", 1)])[0].first_seq == 5
    again.append([rec("d0", 1000), rec("new", 1)])
    assert again.devices()["new"].number == 7


def test_delete_must_start_at_head(tmp_path: Path) -> None:
    """Deleting what was already deleted, or more than exists, fails and changes nothing."""
    buf = Buffer(tmp_path, 16 * MIB)
    buf.append([rec("a", 1), rec("a", 2)])
    buf.delete([("a", 0, 1)])
    for bad in ([("a", 0, 1)], [("a", 1, 5)], [("zz", 0, 1)]):
        with pytest.raises(StorageError):
            buf.delete(bad)
    assert buf.totals().readings == 1


def test_failed_delete_is_all_or_nothing(tmp_path: Path) -> None:
    """A delete with one bad span leaves every span in place."""
    buf = Buffer(tmp_path, 16 * MIB)
    buf.append([rec("a", 1), rec("b", 2)])
    with pytest.raises(StorageError):
        buf.delete([("a", 0, 1), ("b", 3, 1)])
    assert buf.backlog() == {"a": 1, "b": 1}
    buf.close()
    assert Buffer(tmp_path, 16 * MIB).backlog() == {"a": 1, "b": 1}


def test_budget_full_is_capacity_and_stores_nothing(tmp_path: Path) -> None:
    """Past the byte budget an append raises CapacityError and stores none of its readings."""
    buf = Buffer(tmp_path, MIB)
    batch = [rec("a", i) for i in range(1000)]
    batch_bytes = sum(12 + len(v) for _, v in batch)
    appended = 0
    while buf.totals().nbytes + batch_bytes <= MIB:
        buf.append(batch)
        appended += len(batch)
    with pytest.raises(CapacityError):
        buf.append(batch * 2)
    assert buf.totals().readings == appended
    assert buf.totals().nbytes == appended // 1000 * batch_bytes
    buf.delete([("a", 0, 1000)])
    buf.append(batch)
    assert buf.totals().readings == appended


def test_dead_letters_move_atomically(tmp_path: Path) -> None:
    """A refused point leaves the FIFO and enters the dead-letter store in one transaction."""
    buf = Buffer(tmp_path, 16 * MIB)
    buf.append([rec("a", 1), rec("a", 2)])
    buf.delete([("a", 0, 2)], [("a", "m v=2.0 2")])
    assert buf.totals().readings == 0
    assert buf.dead_letters() == [("a", "m v=2.0 2")]


def test_many_devices(tmp_path: Path) -> None:
    """10,000 devices with a few readings each keep separate, exact FIFOs."""
    buf = Buffer(tmp_path, 64 * MIB)
    buf.append([rec(f"dev-{i % 10_000}", i) for i in range(30_000)])
    backlog = buf.backlog()
    assert len(backlog) == 10_000
    assert set(backlog.values()) == {3}
    spans = buf.read([("dev-9999", 3)])
    assert [unpack("dev-9999", v).ts_ns for v in spans[0].values] == [9999, 19999, 29999]
