"""The durable buffer: one FIFO of readings per device in LMDB, with exact accounting.

On-disk format (one LMDB environment, four named databases):
- `data`: key `>IQ` (device number, sequence) -> `record.pack(reading)`. One FIFO's readings are
  contiguous keys in acceptance order, so a batch is one cursor walk.
- `devices`: key FIFO name (UTF-8; gateway/fifos.py) -> `>IQQQQq` (device number, head sequence,
  next sequence, readings, bytes, oldest timestamp ns).
- `meta`: `totals` -> `>QQ` (readings, bytes); `next_device` -> `>I`.
- `dead`: key `>Q` (sequence) -> FIFO, NUL, the database's reason, NUL, the refused line.

Capacity: the LMDB map is the configured capacity, so the file never grows past it. Readings may
take `READINGS_FRACTION` of it (see `readings_budget`); admission (gateway/admission.py) decides
near that budget, inside the transaction that stores, so drops and stores commit together.

Invariants: accounting is written in the same transaction as the data it counts, so it is exact
after any crash. A reading leaves only by `delete`, which the flusher calls after the database
confirmed (or after moving it to `dead`), or by a drop that admission decided and counted; readings
the flusher has read are leased and never dropped. Every method blocks; the service calls them in
its event loop's thread (see gateway/service.py for why not in a worker thread).
"""

from __future__ import annotations

import fcntl
import logging
import shutil
import threading
import time
from typing import TYPE_CHECKING, Literal, Self, TextIO

import lmdb

from gateway.admission import Lane, Rules
from gateway.admitter import Admitter
from gateway.errors import CapacityError, StorageError
from gateway.fifos import (
    DEVICE,
    KEY,
    TOTALS,
    U64,
    Admitted,
    DeadLetter,
    DeviceState,
    Span,
    Totals,
)
from gateway.fifotxn import FifoTransaction
from gateway.integrity import IntegrityMixin
from gateway.latest import Latest, LatestTable
from gateway.verify import is_plausible

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from pathlib import Path

SyncMode = Literal["commit", "interval", "none"]
logger = logging.getLogger(__name__)
# Held while a writer has the buffer open: the in-memory mirror of the accounting is only right
# if no other process writes.
LOCK_FILE = "gateway.lock"
# LMDB's two files in the environment's directory.
DATA_FILE = "data.mdb"
LMDB_LOCK_FILE = "lock.mdb"

# LMDB fills B-tree pages about half when many FIFOs append side by side, and copy-on-write needs
# free pages besides; measured with 1 to 1,000 devices, readings taking 35 % of the map never
# filled it (40 % did, with 1,000 devices in 16 MiB).
READINGS_FRACTION = 0.35
# A transaction leaving more of the map than this in use is refused: a full map would leave no
# free page to copy into, and then not even deletes could run.
PAGE_GUARD_FRACTION = 0.9
# An LMDB write error with less free disk than this is the disk filling up, handled like capacity.
DISK_FULL_FREE_BYTES = 8 << 20
DEFAULT_LATEST_SERIES = 10_000
DEFAULT_LANE = Lane()


def readings_budget(capacity_bytes: int) -> int:
    """How many bytes of readings a buffer of `capacity_bytes` on disk may hold."""
    return int(capacity_bytes * READINGS_FRACTION)


class Buffer(IntegrityMixin):
    """Per-device FIFOs in one LMDB environment; see the module docstring."""

    def __init__(
        self,
        path: Path,
        capacity_bytes: int,
        sync: SyncMode = "commit",
        *,
        readonly: bool = False,
        latest_series: int = DEFAULT_LATEST_SERIES,
    ) -> None:
        """Open (creating if needed) the buffer under `path`, its file bounded by `capacity_bytes`.

        `latest_series`: the most series whose latest reading is kept (gateway/latest.py).

        Raises:
            StorageError: when LMDB cannot open it.
        """
        self.capacity_bytes = capacity_bytes
        self.budget_bytes = readings_budget(capacity_bytes)
        self.path = path
        self._owner: TextIO | None = None
        try:
            if not readonly:
                path.mkdir(parents=True, exist_ok=True)
                self._owner = lock_exclusively(path / LOCK_FILE)
            durable = sync == "commit"
            self._env = lmdb.open(
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
            self._data, self._devices, self._meta, self._dead = (
                self._env.open_db(name, create=not readonly)
                for name in (b"data", b"devices", b"meta", b"dead")
            )
            self.latest = _open_latest(self._env, latest_series, readonly=readonly)
        except lmdb.Error as exc:
            self._release()
            raise StorageError(f"cannot open buffer at {path}: {exc}") from exc
        self._guard_pages = int(
            self._env.info()["map_size"] * PAGE_GUARD_FRACTION / self._env.stat()["psize"]
        )
        self._plain_rules = Rules(budget_bytes=self.budget_bytes)
        # Mirror of `devices` for the flusher's scheduling; LMDB stays the source of truth and
        # the mirror is only replaced after a successful commit.
        self._lock = threading.Lock()
        self._states: dict[str, DeviceState] = {}
        # Readings the flusher has read and not yet deleted, per FIFO: (end sequence, bytes).
        # They are on their way to the database, so admission never drops them.
        self._leases: dict[str, tuple[int, int]] = {}
        self._load_accounting()
        if not readonly and not is_plausible(self._states, self._totals):
            report = self.repair()
            logger.error(
                "buffer accounting did not match its data (%s); rebuilt it from a full scan",
                "; ".join(report.problems[:5]),
            )

    def _load_accounting(self) -> None:
        with self._env.begin() as txn:
            self._states = {
                bytes(name).decode(): DeviceState(*DEVICE.unpack(value))
                for name, value in txn.cursor(db=self._devices)
            }
            self._totals = self._read_totals(txn)
        # Devices with a backlog, kept up to date by append and delete: scrapes and every group
        # commit ask for it, and counting would walk every device's state each time.
        self._active = sum(1 for state in self._states.values() if state.readings)
        self._numbers = {state.number for state in self._states.values()}

    def __enter__(self) -> Self:
        """Use as a context manager that closes the buffer."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close on leaving the block."""
        self.close()

    def close(self) -> None:
        """Close the environment; committed data is already on disk per the sync mode."""
        self._env.close()
        self._release()

    def _release(self) -> None:
        if self._owner is not None:
            self._owner.close()
            self._owner = None

    def sync(self) -> None:
        """Force committed transactions to disk (sync modes `interval` and `none`)."""
        self._env.sync(True)

    def _read_totals(self, txn: lmdb.Transaction) -> tuple[int, int]:
        raw = txn.get(b"totals", db=self._meta)
        return TOTALS.unpack(raw) if raw else (0, 0)

    def append(self, items: Sequence[tuple[str, bytes]]) -> None:
        """Append (FIFO, packed record) pairs in one transaction: all are stored or none.

        Raises:
            CapacityError: the readings budget or the disk cannot take them; nothing was stored.
            StorageError: any other LMDB failure; nothing was stored.
        """
        self.admit([(fifo, value, DEFAULT_LANE) for fifo, value in items], self._plain_rules)

    def admit(self, items: Iterable[tuple[str, bytes, Lane]], rules: Rules) -> Admitted:
        """Store (FIFO, packed record, lane) triples in one transaction, as `rules` admit them.

        Readings refused and readings dropped to make room are counted in the result; the
        drops commit with the stores, so the accounting stays exact.

        Raises:
            CapacityError: a reading was to pause intake (its index is `at_item`), or the disk
                is full; nothing of this call was stored or dropped.
            StorageError: any other LMDB failure; nothing was stored or dropped.
        """
        with self._lock:
            try:
                with self._env.begin(write=True) as txn:
                    w = FifoTransaction(self, txn)
                    admitted = Admitter(w, rules, self._leases).admit(items)
                    if admitted.stored:
                        if self.latest is not None:
                            self.latest.record(txn, admitted.placed, time.time_ns())
                        self._check_pages(txn)
                    w.finish()
            except lmdb.MapFullError as exc:
                raise CapacityError(f"disk budget of {self.capacity_bytes} bytes is full") from exc
            except lmdb.Error as exc:
                free = shutil.disk_usage(self.path).free
                if free < DISK_FULL_FREE_BYTES:
                    raise CapacityError(
                        f"the disk holding the buffer is full ({free} bytes free): {exc}",
                        disk_full=True,
                    ) from exc
                raise StorageError(f"append failed: {exc}") from exc
            w.publish()
        return admitted

    def _check_pages(self, txn: lmdb.Transaction) -> None:
        """Refuse a transaction that would leave deletes no free pages to copy into."""
        pages = 0
        for db in (self._data, self._devices, self._meta, self._dead):
            stat = txn.stat(db)
            pages += stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]
        if pages > self._guard_pages:
            raise CapacityError(
                f"the disk budget of {self.capacity_bytes} bytes is nearly full "
                f"({pages} pages in use)"
            )

    def read(self, wanted: Iterable[tuple[str, int]]) -> list[Span]:
        """Read up to n oldest readings of each (FIFO, n) and lease them until `delete`/`release`.

        Nothing is removed; leased readings are never dropped by admission.
        """
        spans = []
        with self._lock, self._env.begin() as txn:
            cursor = txn.cursor(db=self._data)
            for fifo, n in wanted:
                state = self._states.get(fifo)
                if state is None or n <= 0 or not state.readings:
                    continue
                values: list[bytes] = []
                last_seq = state.head
                if cursor.set_key(KEY.pack(state.number, state.head)):
                    for key, value in cursor:
                        number, seq = KEY.unpack(key)
                        if number != state.number or len(values) >= n:
                            break
                        values.append(bytes(value))
                        last_seq = seq
                if values:
                    leased = sum(KEY.size + len(v) for v in values)
                    self._leases[fifo] = (last_seq + 1, leased)
                    spans.append(Span(fifo, state.head, tuple(values)))
        return spans

    def release(self, fifos: Iterable[str]) -> None:
        """End the leases of `read` for FIFOs whose readings were not delivered."""
        with self._lock:
            for fifo in fifos:
                self._leases.pop(fifo, None)

    def delete(
        self,
        spans: Iterable[tuple[str, int, int]],
        dead_lines: Sequence[tuple[str, str, str]] = (),
    ) -> int:
        """Delete (FIFO, first sequence, count) runs in one transaction; returns their count.

        `dead_lines` (FIFO, the database's reason, line) go to the dead-letter database in the
        same transaction, so a refused point moves there atomically instead of vanishing.

        Raises:
            StorageError: a run does not start at its FIFO's head (it was already deleted).
            CapacityError: the disk budget left no page to delete with; nothing was deleted.
        """
        with self._lock:
            try:
                with self._env.begin(write=True) as txn:
                    w = FifoTransaction(self, txn)
                    deleted = 0
                    for fifo, first_seq, count in spans:
                        self._leases.pop(fifo, None)
                        state = w.state(fifo)
                        if state is None or state.head != first_seq or count > state.readings:
                            raise StorageError(
                                f"delete of {fifo!r} from {first_seq} does not match the "
                                "buffered head"
                            )
                        if w.drop(fifo, first_seq, count=count)[0] != count:
                            raise StorageError(f"{fifo!r} misses readings after {first_seq}")
                        deleted += count
                    if dead_lines:
                        self._store_dead(txn, dead_lines)
                    w.finish()
            except lmdb.MapFullError as exc:
                raise CapacityError("the disk budget left no room to delete") from exc
            except lmdb.Error as exc:
                raise StorageError(f"delete failed: {exc}") from exc
            w.publish()
            return deleted

    def _store_dead(
        self, txn: lmdb.Transaction, dead_lines: Sequence[tuple[str, str, str]]
    ) -> None:
        cursor = txn.cursor(db=self._dead)
        seq = U64.unpack(cursor.key())[0] + 1 if cursor.last() else 0
        for device, reason, line in dead_lines:
            txn.put(U64.pack(seq), f"{device}\0{reason}\0{line}".encode(), db=self._dead)
            seq += 1

    def backlog(self) -> dict[str, int]:
        """Buffered readings per device, for devices that have any."""
        with self._lock:
            return {d: s.readings for d, s in self._states.items() if s.readings}

    def devices(self) -> dict[str, DeviceState]:
        """A snapshot of every device's accounting."""
        with self._lock:
            return {d: DeviceState(*DEVICE.unpack(s.pack())) for d, s in self._states.items()}

    def totals(self) -> Totals:
        """Buffer-wide accounting."""
        with self._lock:
            readings, nbytes = self._totals
            return Totals(readings, nbytes, self._active)

    def latest_of(self, device: str) -> list[Latest]:
        """The newest reading of each series of `device` the last-value table holds."""
        if self.latest is None:
            return []
        by_number = {state.number: state for state in self._states.values()}
        with self._env.begin() as txn:
            return self.latest.device(txn, device, by_number)

    def latest_devices(self) -> dict[str, int]:
        """Device -> when its newest reading was taken (ns), from the last-value table."""
        if self.latest is None:
            return {}
        with self._env.begin() as txn:
            return dict(self.latest.devices(txn))

    def remember(self, device: str, lines: Sequence[bytes]) -> None:
        """Keep readings read back from the database in the last-value table.

        Raises:
            StorageError: LMDB refused the write (the buffer's own data is unaffected).
        """
        if self.latest is None:
            return
        with self._lock:
            try:
                with self._env.begin(write=True) as txn:
                    self.latest.fill(txn, device, lines, time.time_ns())
            except lmdb.Error as exc:
                raise StorageError(f"cannot keep the latest values of {device!r}: {exc}") from exc

    def file_bytes(self) -> int:
        """Size of the LMDB data file: what the buffer takes on disk."""
        return (self.path / DATA_FILE).stat().st_size

    def dead_letter_count(self) -> int:
        """How many points the dead-letter store holds."""
        with self._env.begin() as txn:
            entries: int = txn.stat(self._dead)["entries"]
            return entries

    def dead_letters(self) -> list[DeadLetter]:
        """Every stored dead letter, oldest first."""
        with self._env.begin() as txn:
            return [
                DeadLetter(U64.unpack(key)[0], *bytes(value).decode().split("\0", 2))
                for key, value in txn.cursor(db=self._dead)
            ]


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
