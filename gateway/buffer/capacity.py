"""The buffer's disk budget: how much of the LMDB map readings may take, and when it is full.

Capacity is the LMDB map size, so the file never grows past it. Readings may take
`READINGS_FRACTION` of it; a transaction that would leave the map nearly full of pages is
refused (a full map refuses even deletes); an LMDB write error while the disk itself is nearly
full is the disk filling up (another process, say), which waiting for the flusher cannot fix.
All three are `CapacityError`: capacity, handled by the admission policy, never a crash.
"""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

import lmdb

from gateway.errors import CapacityError, StorageError

if TYPE_CHECKING:
    from pathlib import Path

    from gateway.buffer.transaction import Tables

# LMDB fills B-tree pages about half when many FIFOs append side by side, and copy-on-write needs
# free pages besides; measured with 1 to 1,000 devices, readings taking 35 % of the map never
# filled it (40 % did, with 1,000 devices in 16 MiB).
READINGS_FRACTION = 0.35
# A transaction leaving more of the map than this in use is refused: a full map would leave no
# free page to copy into, and then not even deletes could run.
PAGE_GUARD_FRACTION = 0.9
# An LMDB write error with less free disk than this is the disk filling up, handled like capacity.
DISK_FULL_FREE_BYTES = 8 << 20


def readings_budget(capacity_bytes: int) -> int:
    """How many bytes of readings a buffer of `capacity_bytes` on disk may hold."""
    return int(capacity_bytes * READINGS_FRACTION)


class PageGuard:
    """Refuses a transaction that would leave deletes no free pages to copy into."""

    def __init__(self, env: lmdb.Environment, tables: Tables, capacity_bytes: int) -> None:
        """Pages in use may reach `PAGE_GUARD_FRACTION` of the map."""
        self._tables = tables
        self._capacity_bytes = capacity_bytes
        self._most_pages = int(env.info()["map_size"] * PAGE_GUARD_FRACTION / env.stat()["psize"])

    def check(self, txn: lmdb.Transaction) -> None:
        """Count the pages this transaction leaves in use.

        Raises:
            CapacityError: more than the guard allows.
        """
        pages = 0
        t = self._tables
        for db in (t.data, t.devices, t.meta, t.dead):
            stat = txn.stat(db)
            pages += stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]
        if pages > self._most_pages:
            raise CapacityError(
                f"the disk budget of {self._capacity_bytes} bytes is nearly full "
                f"({pages} pages in use)"
            )


def translate(exc: lmdb.Error, path: Path, capacity_bytes: int) -> StorageError:
    """The gateway's error for an LMDB failure while storing readings."""
    if isinstance(exc, lmdb.MapFullError):
        return CapacityError(f"disk budget of {capacity_bytes} bytes is full")
    free = shutil.disk_usage(path).free
    if free < DISK_FULL_FREE_BYTES:
        return CapacityError(
            f"the disk holding the buffer is full ({free} bytes free): {exc}", disk_full=True
        )
    return StorageError(f"append failed: {exc}")
