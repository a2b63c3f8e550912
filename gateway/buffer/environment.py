"""Opening the buffer's LMDB environments: the directory's lock, the maps, the named databases.

Two environments in one directory: the journal (`journal.mdb`, its one unnamed database holding a
chunk per group commit) and the store (`data.mdb`: sealed chunks, accounting, dead letters, the
last-value table). A group commit writes the journal alone, and an append to the right edge of
the only B-tree of an environment dirties the fewest pages (gateway/buffer/store.py has the
figures).

One writer process per environment: the ledger mirrored in memory is only right if no other
process writes, so a writer holds an advisory lock on `gateway.lock` while it has the buffer
open. Readers (`gateway status`, `verify-buffer`) open it read-only beside a running writer.
"""

from __future__ import annotations

import fcntl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

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
JOURNAL_FILE = "journal.mdb"
JOURNAL_LOCK_FILE = "journal.mdb-lock"
# Every file of a buffer's directory, for whoever removes one.
FILES = (DATA_FILE, LMDB_LOCK_FILE, JOURNAL_FILE, JOURNAL_LOCK_FILE, LOCK_FILE)
DATABASES = (b"sealed", b"devices", b"meta", b"dead")
# What `meta` says under `format`; a buffer without it was written by a version that stored a
# key per reading, which this one cannot read. chunks-2 chunks carry checksums and FIFO states
# behind flag bits that chunks-1 readers would misread, so a writer marks a chunks-1 buffer
# chunks-2 on opening (its chunks read as ever) and a chunks-1 version refuses it.
FORMAT = b"chunks-2"
UPGRADABLE_FORMATS = (b"chunks-1",)


# The journal's share of the capacity. It is sealed at a sixteenth of the capacity (gateway/buffer/
# checkpoint.py), so this leaves room for what is appended while a seal runs, for records waiting
# to be deleted, and for LMDB's need of a run of free pages per large record (a record its map
# refuses asks for a seal, which empties it); the store takes the rest, so the two files together
# never pass the capacity, each bounded by its map.
JOURNAL_MAP_FRACTION = 1 / 4
PAGE_BYTES = 4096


def map_sizes(capacity_bytes: int) -> tuple[int, int]:
    """The map sizes (store, journal) of a buffer of `capacity_bytes`, in whole pages."""
    journal = max(PAGE_BYTES * 16, int(capacity_bytes * JOURNAL_MAP_FRACTION)) // PAGE_BYTES
    return capacity_bytes // PAGE_BYTES * PAGE_BYTES - journal * PAGE_BYTES, journal * PAGE_BYTES


@dataclass(frozen=True, slots=True)
class Opened:
    """A buffer directory, opened."""

    owner: TextIO | None  # the writer's lock, None read-only
    env: lmdb.Environment
    journal: lmdb.Environment | None  # None read-only before the first writer made it
    tables: Tables
    latest: LatestTable | None


def open_environment(
    path: Path, capacity_bytes: int, sync: SyncMode, *, readonly: bool, latest_series: int
) -> Opened:
    """Both environments, their tables and the last-value table.

    Raises:
        StorageError: another process holds the lock, LMDB cannot open an environment, or the
            buffer is of a format this version cannot read.
    """
    owner = None
    try:
        if not readonly:
            path.mkdir(parents=True, exist_ok=True)
            owner = lock_exclusively(path / LOCK_FILE)
        durable = sync == "commit"
        store_bytes, journal_bytes = map_sizes(capacity_bytes)
        options: dict[str, Any] = {
            "map_size": store_bytes,
            "sync": durable,
            "metasync": durable,
            "readonly": readonly,
            "lock": True,
            "readahead": False,
            "max_readers": 256,
        }
        env = lmdb.open(str(path), max_dbs=12, **options)
        _check_format(env, path, readonly=readonly)
        # Without a transaction of ours py-lmdb opens each database in one it commits, which
        # keeps the handles valid in a read-only environment too.
        sealed, devices, meta, dead = (env.open_db(n, create=not readonly) for n in DATABASES)
        notes = _open_optional(env, b"notes", readonly=readonly)
        damaged = _open_optional(env, b"damaged", readonly=readonly)
        tables = Tables(sealed, devices, meta, dead, notes, damaged)
        journal = None
        if not readonly or (path / JOURNAL_FILE).exists():
            options["map_size"] = journal_bytes
            journal = lmdb.open(str(path / JOURNAL_FILE), subdir=False, max_dbs=0, **options)
        latest = _open_latest(env, latest_series, readonly=readonly)
        return Opened(owner, env, journal, tables, latest)
    except lmdb.Error as exc:
        if owner is not None:
            owner.close()
        raise StorageError(f"cannot open buffer at {path}: {exc}") from exc


def _check_format(env: lmdb.Environment, path: Path, *, readonly: bool) -> None:
    """Refuse a buffer of another format; mark a new one with this one's.

    Raises:
        StorageError: the buffer holds readings in a format this version cannot read.
    """
    with env.begin(write=not readonly) as txn:
        names = {bytes(key) for key, _ in txn.cursor()}
        if b"meta" not in names:
            if not readonly:
                txn.put(b"format", FORMAT, db=env.open_db(b"meta", txn=txn))
            return
        meta = env.open_db(b"meta", txn=txn, create=False)
        found = txn.get(b"format", db=meta)
        if found == FORMAT:
            return
        if found in UPGRADABLE_FORMATS:
            if not readonly:
                txn.put(b"format", FORMAT, db=meta)
            return
        if found is None and b"data" not in names:
            if not readonly:
                txn.put(b"format", FORMAT, db=meta)
            return
        raise StorageError(
            f"the buffer at {path} was written by an older version of the gateway, which "
            "stored one key per reading; drain it with that version (let it deliver "
            "everything), then remove the directory"
        )


def _open_optional(env: lmdb.Environment, name: bytes, *, readonly: bool) -> Any:  # noqa: ANN401
    """A database that a buffer written by an older version lacks until a writer opens it."""
    try:
        return env.open_db(name, create=not readonly)
    except lmdb.NotFoundError:
        return None


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
