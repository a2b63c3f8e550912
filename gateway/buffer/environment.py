"""Opening the buffer's LMDB environment: the directory's lock, the map, the named databases.

One writer process per environment: the ledger mirrored in memory is only right if no other
process writes, so a writer holds an advisory lock on `gateway.lock` while it has the buffer
open. Readers (`gateway status`, `verify-buffer`) open it read-only beside a running writer.
"""

from __future__ import annotations

import fcntl
from typing import TYPE_CHECKING, TextIO

import lmdb

from gateway.buffer.latest import LatestTable
from gateway.buffer.transaction import Tables
from gateway.errors import StorageError

if TYPE_CHECKING:
    from pathlib import Path

    from gateway.config.sections import SyncMode

LOCK_FILE = "gateway.lock"
# LMDB's two files in the environment's directory.
DATA_FILE = "data.mdb"
LMDB_LOCK_FILE = "lock.mdb"
DATABASES = (b"data", b"devices", b"meta", b"dead")


def open_environment(
    path: Path, capacity_bytes: int, sync: SyncMode, *, readonly: bool, latest_series: int
) -> tuple[TextIO | None, lmdb.Environment, Tables, LatestTable | None]:
    """The writer's lock (None read-only), the environment, its tables and last-value table.

    Raises:
        StorageError: another process holds the lock, or LMDB cannot open the environment.
    """
    owner = None
    try:
        if not readonly:
            path.mkdir(parents=True, exist_ok=True)
            owner = lock_exclusively(path / LOCK_FILE)
        durable = sync == "commit"
        env = lmdb.open(
            str(path),
            map_size=capacity_bytes,
            max_dbs=6,
            sync=durable,
            metasync=durable,
            readonly=readonly,
            lock=True,
            readahead=False,
            max_readers=256,
        )
        # Without a transaction of ours py-lmdb opens each database in one it commits, which
        # keeps the handles valid in a read-only environment too.
        tables = Tables(*(env.open_db(name, create=not readonly) for name in DATABASES))
        return owner, env, tables, _open_latest(env, latest_series, readonly=readonly)
    except lmdb.Error as exc:
        if owner is not None:
            owner.close()
        raise StorageError(f"cannot open buffer at {path}: {exc}") from exc


def _open_latest(env: lmdb.Environment, bound: int, *, readonly: bool) -> LatestTable | None:
    """The last-value table; None when turned off (bound 0) or absent from a read-only view.

    A buffer written before the table existed has no database for it until a writer opens it.
    """
    if bound == 0:
        return None
    try:
        latest, lru = (
            env.open_db(name, create=not readonly) for name in (b"latest", b"latest_lru")
        )
    except lmdb.NotFoundError:
        return None
    return LatestTable(latest, lru, bound)


def lock_exclusively(path: Path) -> TextIO:
    """Hold an advisory lock on `path` while the returned file is open.

    Raises:
        StorageError: another process holds it.
    """
    handle = path.open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise StorageError(f"{path.parent} is in use by another gateway process") from None
    return handle
