"""The buffer's disk budget: how much of the LMDB map readings may take, and when it is full.

Capacity is shared by the buffer's two environments (gateway/buffer/environment.py
`map_sizes`: a quarter for the journal, the rest for the store), so the two files together never
pass it. The pages in use may reach `PAGE_GUARD_FRACTION` of each map, counting in the store the
journal (a seal copies it there) and the pages a checkpoint rewrites twice (LMDB copies before it
frees): a commit that would leave more is refused (a full map refuses even the checkpoint that
frees pages). Readings count their uncompressed
bytes against a budget of `READINGS_FRACTION` of the capacity; they are stored compressed, so the
budget is larger than the capacity. An LMDB write error while the disk itself is nearly full is
the disk filling up (another process, say), which waiting for the flusher cannot fix. All three
are `CapacityError`: capacity, handled by the admission policy, never a crash.
"""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING, Any

import lmdb

from gateway.errors import CapacityError, StorageError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path


# Line protocol compresses several-fold in chunks (the simulator's readings took 2 bytes of file
# each at 100 devices and 11 at 1,000 in `gateway bench`, against about 75 counted), so readings
# counting 2.25 times the capacity fit in it with the guard's margin for copy-on-write, the
# journal and chunks partly delivered. Readings that compress less meet the page guard first,
# which pauses intake like the `reject` policy.
READINGS_FRACTION = 2.25
# A transaction leaving more of the map than this in use is refused: a full map would leave no
# free page to copy into, and then not even deletes could run.
PAGE_GUARD_FRACTION = 0.9
# Past this fraction of the map in use, the buffer checkpoints after every change, so that the
# pages deliveries and drops freed come back before the guard refuses a commit.
PRESSURE_FRACTION = 0.6
# An LMDB write error with less free disk than this is the disk filling up, handled like capacity.
DISK_FULL_FREE_BYTES = 8 << 20


def readings_budget(capacity_bytes: int) -> int:
    """How many bytes of readings a buffer of `capacity_bytes` on disk may hold."""
    return int(capacity_bytes * READINGS_FRACTION)


class PageGuard:
    """Refuses a group commit that would leave the checkpoint no free pages to copy into."""

    def __init__(
        self,
        env: lmdb.Environment,
        databases: Sequence[Any],
        rewritten: Sequence[Any],
        capacity_bytes: int,
        journal: lmdb.Environment | None = None,
    ) -> None:
        """Pages in use in both environments may reach `PAGE_GUARD_FRACTION` of the map.

        `databases`: every named database of the store, the sealed chunks first; `rewritten`:
        those a checkpoint may rewrite whole (the accounting, the last values), whose pages it
        needs twice.
        """
        self._env = env
        self._databases = tuple(databases)
        self._rewritten = tuple(rewritten)
        self._capacity_bytes = capacity_bytes
        self._most_pages = _most_pages(env)
        self._most_journal_pages = _most_pages(journal) if journal is not None else 0
        self._pressure_pages = int(self._most_pages * PRESSURE_FRACTION / PAGE_GUARD_FRACTION)
        self._store_pages = 0
        self.pages = 0
        # Whether the last refusal was the journal's own map: a seal empties it.
        self.journal_full = False
        self.measure_store()

    @property
    def under_pressure(self) -> bool:
        """Whether the last commit left the map nearly as full as the guard allows."""
        return self.pages > self._pressure_pages

    def measure_store(self) -> None:
        """Count the store's pages, with a copy of those a checkpoint may rewrite.

        They change only at checkpoints. The copy is room the checkpoint needs: LMDB writes
        each page a transaction changes to a free page and frees the old one only after it.
        """
        with self._env.begin() as txn:
            in_use = sum([_pages(txn.stat(db)) for db in self._databases])
            copied = sum([_pages(txn.stat(db)) for db in self._rewritten])
            # Deleting delivered chunks rewrites the leaves and branches that name them (their
            # overflow pages are only freed): room a full map must keep, or nothing frees it.
            copied += _tree_pages(txn.stat(self._databases[0]))
        self._store_pages = in_use + copied

    def check(self, journal_txn: lmdb.Transaction, *, freeing: bool = False) -> None:
        """Count the pages this journal transaction leaves in use, with the store's.

        The journal's pages count in the store too: a seal copies its readings there before the
        journal records are deleted. And the journal keeps room in its own map for the
        transaction that deletes them.

        `freeing`: the transaction takes out more than it adds (a compaction step). It writes
        nothing to the store, and the pages it frees there come back at the next checkpoint:
        only the journal's own map may refuse it. Refused at the store's guard, it would leave
        a buffer whose database is down no way ever to make room.

        Raises:
            CapacityError: more than the guard allows.
        """
        journal_pages = _pages(journal_txn.stat())
        pages = self.pages = self._store_pages + journal_pages
        self.journal_full = bool(self._most_journal_pages) and (
            journal_pages > self._most_journal_pages
        )
        if (pages > self._most_pages and not freeing) or self.journal_full:
            raise CapacityError(
                f"the disk budget of {self._capacity_bytes} bytes is nearly full "
                f"({pages} pages in use)"
            )


def _most_pages(env: lmdb.Environment) -> int:
    return int(env.info()["map_size"] * PAGE_GUARD_FRACTION / env.stat()["psize"])


def _tree_pages(stat: Mapping[str, Any]) -> int:
    pages: int = stat["branch_pages"] + stat["leaf_pages"]
    return pages


def _pages(stat: Mapping[str, Any]) -> int:
    pages: int = stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]
    return pages


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
