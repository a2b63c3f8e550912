"""The device list over a real buffer: pages in name order, a cursor, the total, a search."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import pytest

from gateway.api import devicelist
from gateway.api.devicelist import DeviceList
from gateway.buffer.core.ledger import fifo_name
from gateway.buffer.store import Buffer
from gateway.errors import StorageError
from tests.unit.buffer.test_idle_metadata import reading

if TYPE_CHECKING:
    from pathlib import Path


@pytest.mark.anyio
async def test_pages_list_every_device_once_with_its_backlog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Devices with a backlog, with a device class, and with only a latest value: following
    `next` lists each once, by name, with every FIFO's readings; a search finds one by name."""
    monkeypatch.setattr(devicelist, "INDEX_TTL_S", 0.0)
    with Buffer(tmp_path, 64 << 20) as buffer:
        buffer.append([(f"d{i:02d}", reading(f"d{i:02d}", i)) for i in range(7)])
        buffer.append([(fifo_name("d03", "alarm"), reading("d03", 100))])
        spans = buffer.read([("d05", 1)])
        buffer.delete([(s.device, s.first_seq, 1) for s in spans])  # delivered: latest only
        buffer.remember("zz-from-db", [b"m,device=zz-from-db v=1i 5"])
        listing = DeviceList(buffer)
        rows, after, totals = [], "", set()
        while True:
            page = await listing.page(after=after, limit=3, name=None)
            assert len(page["devices"]) <= 3
            rows += page["devices"]
            totals.add(page["total"])
            if page["next"] is None:
                break
            after = page["next"]
        names = [f"d{i:02d}" for i in range(7)] + ["zz-from-db"]
        assert [r["device"] for r in rows] == names
        assert totals == {len(names)}
        backlog = {r["device"]: r["buffered_readings"] for r in rows}
        assert (backlog["d03"], backlog["d05"], backlog["zz-from-db"]) == (2, 0, 0)
        assert all(r["last_seen"] is not None for r in rows)
        found = await listing.page(after="", limit=100, name="d04")
        assert ([r["device"] for r in found["devices"]], found["next"]) == (["d04"], None)
        missing = await listing.page(after="", limit=100, name="d0")
        assert missing["devices"] == []


def test_closing_the_buffer_waits_for_an_index_pass_in_a_thread(tmp_path: Path) -> None:
    """close() waits for a worker thread's pass over the device names (py-lmdb reads without
    the interpreter lock); a pass after close is a StorageError, not a read of a closed map."""
    buffer = Buffer(tmp_path, 64 << 20)
    buffer.remember("d0", [b"m,device=d0 v=1i 5"])
    inside, release = threading.Event(), threading.Event()
    real_names = buffer.latest.device_names  # type: ignore[union-attr]

    def slow_names(txn: object) -> set[str]:
        inside.set()
        release.wait(5)
        return real_names(txn)

    buffer.latest.device_names = slow_names  # type: ignore[union-attr,method-assign]
    found: list[object] = []
    reader = threading.Thread(target=lambda: found.append(buffer.device_index().names))
    reader.start()
    assert inside.wait(5)
    closer = threading.Thread(target=buffer.close)
    closer.start()
    closer.join(0.3)
    assert closer.is_alive(), "close went on under a reader"
    release.set()
    reader.join(5)
    closer.join(5)
    assert found == [["d0"]]
    with pytest.raises(StorageError, match="closed"):
        buffer.device_index()
