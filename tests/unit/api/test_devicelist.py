"""The device list over a real buffer: pages in name order, a cursor, the total, a search."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from gateway.api import devicelist
from gateway.api.devicelist import DeviceList
from gateway.buffer.core.ledger import fifo_name
from gateway.buffer.store import Buffer
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
