"""The durable buffer: one FIFO of readings per device in LMDB, with exact accounting.

On-disk format (one LMDB environment, four named databases):
- `data`: key `>IQ` (device number, sequence) -> `record.pack(reading)`. One device's readings are
  contiguous and in acceptance order, so a batch is one cursor walk.
- `devices`: key device name (UTF-8) -> `>IQQQQq` (device number, head sequence, next sequence,
  readings, bytes, oldest timestamp ns).
- `meta`: `totals` -> `>QQ` (readings, bytes); `next_device` -> `>I`.
- `dead`: key `>Q` (sequence) -> device, NUL, the database's reason, NUL, the refused line.

Invariants: accounting is written in the same transaction as the data it counts, so it is exact
after any crash; a reading is deleted only by `delete`, which the flusher calls after the database
confirmed (or after moving it to `dead`). Every method blocks: the shell runs them in a thread.
"""

from __future__ import annotations

import fcntl
import logging
import struct
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Self, TextIO

import lmdb

from gateway.errors import CapacityError, StorageError
from gateway.record import timestamp_of
from gateway.verify import Found, Report, compare, is_plausible

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from pathlib import Path

SyncMode = Literal["commit", "interval", "none"]
logger = logging.getLogger(__name__)
# Held while a writer has the buffer open: the in-memory mirror of the accounting is only right
# if no other process writes.
LOCK_FILE = "gateway.lock"

_KEY = struct.Struct(">IQ")
_DEVICE = struct.Struct(">IQQQQq")
_TOTALS = struct.Struct(">QQ")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
# LMDB copies pages on write and keeps freed pages until no reader needs them; twice the budget
# plus a fixed margin leaves the map room to do that when the budget is full.
MAP_HEADROOM_FACTOR = 2
MAP_HEADROOM_BYTES = 64 << 20


@dataclass(slots=True)
class DeviceState:
    """Accounting of one device's FIFO."""

    number: int
    head: int  # sequence of the oldest buffered reading
    next: int  # sequence the next appended reading gets
    readings: int
    nbytes: int
    oldest_ts_ns: int

    def pack(self) -> bytes:
        """Serialize for the `devices` database."""
        return _DEVICE.pack(
            self.number, self.head, self.next, self.readings, self.nbytes, self.oldest_ts_ns
        )


@dataclass(frozen=True, slots=True)
class Span:
    """A run of one device's buffered readings, as read for a batch."""

    device: str
    first_seq: int
    values: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A point the database refused, with its reason."""

    id: int
    device: str
    reason: str
    line: str


@dataclass(frozen=True, slots=True)
class Totals:
    """Buffer-wide accounting."""

    readings: int
    nbytes: int
    devices: int  # devices with at least one buffered reading


class Buffer:
    """Per-device FIFOs in one LMDB environment; see the module docstring."""

    def __init__(
        self, path: Path, capacity_bytes: int, sync: SyncMode = "commit", *, readonly: bool = False
    ) -> None:
        """Open (creating if needed) the buffer under `path`.

        Raises:
            StorageError: when LMDB cannot open it.
        """
        self.capacity_bytes = capacity_bytes
        self.path = path
        self._owner: TextIO | None = None
        try:
            if not readonly:
                path.mkdir(parents=True, exist_ok=True)
                self._owner = _lock_exclusively(path / LOCK_FILE)
            durable = sync == "commit"
            self._env = lmdb.open(
                str(path),
                map_size=capacity_bytes * MAP_HEADROOM_FACTOR + MAP_HEADROOM_BYTES,
                max_dbs=4,
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
        except lmdb.Error as exc:
            self._release()
            raise StorageError(f"cannot open buffer at {path}: {exc}") from exc
        # Mirror of `devices` for the flusher's scheduling; LMDB stays the source of truth and
        # the mirror is only replaced after a successful commit.
        self._lock = threading.Lock()
        self._states: dict[str, DeviceState] = {}
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
                bytes(name).decode(): DeviceState(*_DEVICE.unpack(value))
                for name, value in txn.cursor(db=self._devices)
            }
            self._totals = self._read_totals(txn)
        # Devices with a backlog, kept up to date by append and delete: scrapes and every group
        # commit ask for it, and counting would walk every device's state each time.
        self._active = sum(1 for state in self._states.values() if state.readings)

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

    def scan(self) -> dict[int, Found]:
        """Walk every stored reading: what each device number really holds."""
        found: dict[int, Found] = {}
        with self._env.begin() as txn:
            for key, value in txn.cursor(db=self._data):
                number, seq = _KEY.unpack(key)
                entry = found.get(number)
                if entry is None:
                    entry = found[number] = Found(first_seq=seq, oldest_ts_ns=timestamp_of(value))
                entry.readings += 1
                entry.nbytes += _KEY.size + len(value)
                entry.last_seq = seq
        return found

    def verify(self) -> Report:
        """Compare the stored accounting with a full scan of the data."""
        with self._lock:
            states, totals = dict(self._states), self._totals
        return compare(states, totals, self.scan())

    def repair(self) -> Report:
        """Rebuild the accounting from a full scan; returns what was wrong before.

        Readings whose device number has no device entry are kept under a device named
        `orphan-<number>`: their records still carry their own device tag.
        """
        with self._lock:
            found = self.scan()
            report = compare(self._states, self._totals, found)
            if report.is_consistent:
                return report
            states = dict(self._states)
            for number in report.orphan_numbers:
                states[f"orphan-{number}"] = DeviceState(number, 0, 0, 0, 0, 0)
            with self._env.begin(write=True) as txn:
                for name, state in states.items():
                    seen = found.get(state.number, Found())
                    if seen.readings:
                        state.head, state.next = seen.first_seq, seen.last_seq + 1
                    else:
                        state.head = state.next = max(state.next, state.head)
                    state.readings, state.nbytes = seen.readings, seen.nbytes
                    state.oldest_ts_ns = seen.oldest_ts_ns
                    txn.put(name.encode(), state.pack(), db=self._devices)
                totals = (
                    sum(f.readings for f in found.values()),
                    sum(f.nbytes for f in found.values()),
                )
                txn.put(b"totals", _TOTALS.pack(*totals), db=self._meta)
                next_number = max([s.number for s in states.values()], default=-1) + 1
                raw = txn.get(b"next_device", db=self._meta)
                if not raw or _U32.unpack(raw)[0] < next_number:
                    txn.put(b"next_device", _U32.pack(next_number), db=self._meta)
            self._load_accounting()
            return report

    def sync(self) -> None:
        """Force committed transactions to disk (sync modes `interval` and `none`)."""
        self._env.sync(True)

    def _read_totals(self, txn: lmdb.Transaction) -> tuple[int, int]:
        raw = txn.get(b"totals", db=self._meta)
        return _TOTALS.unpack(raw) if raw else (0, 0)

    def append(self, items: Sequence[tuple[str, bytes]]) -> None:
        """Append (device, packed record) pairs in one transaction: all are stored or none.

        Raises:
            CapacityError: the byte budget or the LMDB map cannot take them; nothing was stored.
            StorageError: any other LMDB failure; nothing was stored.
        """
        if not items:
            return
        incoming = sum(_KEY.size + len(value) for _, value in items)
        with self._lock:
            readings, nbytes = self._totals
            if nbytes + incoming > self.capacity_bytes:
                raise CapacityError(f"buffer budget of {self.capacity_bytes} bytes is full")
            changed: dict[str, DeviceState] = {}
            became_active = 0
            try:
                with self._env.begin(write=True) as txn:
                    raw = txn.get(b"next_device", db=self._meta)
                    first_new = next_device = _U32.unpack(raw)[0] if raw else 0
                    for device, value in items:
                        state = changed.get(device) or self._copy_state(device)
                        if state is None:
                            state = DeviceState(next_device, 0, 0, 0, 0, 0)
                            next_device += 1
                        if state.readings == 0:
                            state.oldest_ts_ns = timestamp_of(value)
                            became_active += 1
                        txn.put(_KEY.pack(state.number, state.next), value, db=self._data)
                        state.next += 1
                        state.readings += 1
                        state.nbytes += _KEY.size + len(value)
                        changed[device] = state
                    for device, state in changed.items():
                        txn.put(device.encode(), state.pack(), db=self._devices)
                    if next_device != first_new:
                        txn.put(b"next_device", _U32.pack(next_device), db=self._meta)
                    totals = (readings + len(items), nbytes + incoming)
                    txn.put(b"totals", _TOTALS.pack(*totals), db=self._meta)
            except lmdb.MapFullError as exc:
                raise CapacityError("LMDB map is full") from exc
            except lmdb.Error as exc:
                raise StorageError(f"append failed: {exc}") from exc
            self._states.update(changed)
            self._totals = totals
            self._active += became_active

    def _copy_state(self, device: str) -> DeviceState | None:
        state = self._states.get(device)
        return None if state is None else DeviceState(*_DEVICE.unpack(state.pack()))

    def read(self, wanted: Iterable[tuple[str, int]]) -> list[Span]:
        """Read up to n oldest readings of each (device, n); nothing is removed."""
        spans = []
        with self._lock:
            heads = [(d, n, self._states[d]) for d, n in wanted if d in self._states]
        with self._env.begin() as txn:
            cursor = txn.cursor(db=self._data)
            for device, n, state in heads:
                values: list[bytes] = []
                if n > 0 and cursor.set_key(_KEY.pack(state.number, state.head)):
                    for key, value in cursor:
                        if len(values) >= n or _KEY.unpack(key)[0] != state.number:
                            break
                        values.append(bytes(value))
                if values:
                    spans.append(Span(device, state.head, tuple(values)))
        return spans

    def delete(
        self,
        spans: Iterable[tuple[str, int, int]],
        dead_lines: Sequence[tuple[str, str, str]] = (),
    ) -> int:
        """Delete (device, first sequence, count) runs in one transaction; returns their count.

        `dead_lines` (device, the database's reason, line) go to the dead-letter database in the
        same transaction, so a refused point moves there atomically instead of vanishing.

        Raises:
            StorageError: a run does not start at its device's head (it was already deleted).
        """
        with self._lock:
            readings, nbytes = self._totals
            changed: dict[str, DeviceState] = {}
            went_idle = 0
            try:
                with self._env.begin(write=True) as txn:
                    cursor = txn.cursor(db=self._data)
                    for device, first_seq, count in spans:
                        state = changed.get(device) or self._copy_state(device)
                        if state is None or state.head != first_seq or count > state.readings:
                            raise StorageError(
                                f"delete of {device!r} from {first_seq} does not "
                                "match the buffered head"
                            )
                        freed = 0
                        for seq in range(first_seq, first_seq + count):
                            key = _KEY.pack(state.number, seq)
                            value = txn.get(key, db=self._data)
                            if value is None:
                                raise StorageError(f"{device!r} sequence {seq} is missing")
                            freed += _KEY.size + len(value)
                            txn.delete(key, db=self._data)
                        state.head += count
                        state.readings -= count
                        went_idle += count > 0 and state.readings == 0
                        state.nbytes -= freed
                        readings -= count
                        nbytes -= freed
                        state.oldest_ts_ns = 0
                        if state.readings and cursor.set_key(_KEY.pack(state.number, state.head)):
                            state.oldest_ts_ns = timestamp_of(cursor.value())
                        changed[device] = state
                    for device, state in changed.items():
                        txn.put(device.encode(), state.pack(), db=self._devices)
                    if dead_lines:
                        self._store_dead(txn, dead_lines)
                    txn.put(b"totals", _TOTALS.pack(readings, nbytes), db=self._meta)
            except lmdb.MapFullError as exc:
                raise CapacityError("LMDB map is full") from exc
            except lmdb.Error as exc:
                raise StorageError(f"delete failed: {exc}") from exc
            deleted = self._totals[0] - readings
            self._states.update(changed)
            self._totals = (readings, nbytes)
            self._active -= went_idle
            return deleted

    def _store_dead(
        self, txn: lmdb.Transaction, dead_lines: Sequence[tuple[str, str, str]]
    ) -> None:
        cursor = txn.cursor(db=self._dead)
        seq = _U64.unpack(cursor.key())[0] + 1 if cursor.last() else 0
        for device, reason, line in dead_lines:
            txn.put(_U64.pack(seq), f"{device}\0{reason}\0{line}".encode(), db=self._dead)
            seq += 1

    def backlog(self) -> dict[str, int]:
        """Buffered readings per device, for devices that have any."""
        with self._lock:
            return {d: s.readings for d, s in self._states.items() if s.readings}

    def devices(self) -> dict[str, DeviceState]:
        """A snapshot of every device's accounting."""
        with self._lock:
            return {d: DeviceState(*_DEVICE.unpack(s.pack())) for d, s in self._states.items()}

    def totals(self) -> Totals:
        """Buffer-wide accounting."""
        with self._lock:
            readings, nbytes = self._totals
            return Totals(readings, nbytes, self._active)

    def dead_letter_count(self) -> int:
        """How many points the dead-letter store holds."""
        with self._env.begin() as txn:
            entries: int = txn.stat(self._dead)["entries"]
            return entries

    def dead_letters(self) -> list[DeadLetter]:
        """Every stored dead letter, oldest first."""
        with self._env.begin() as txn:
            return [
                DeadLetter(_U64.unpack(key)[0], *bytes(value).decode().split("\0", 2))
                for key, value in txn.cursor(db=self._dead)
            ]


def _lock_exclusively(path: Path) -> TextIO:
    handle = path.open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise StorageError(f"{path.parent} is in use by another gateway process") from None
    return handle
