"""The durable buffer: one FIFO of readings per device in LMDB, with exact accounting.

On-disk format (one LMDB environment, four named databases):
- `data`: key `>IQ` (device number, sequence) -> `record.pack(reading)`. One FIFO's readings are
  contiguous keys in acceptance order, so a batch is one cursor walk.
- `devices`: key FIFO name (UTF-8; gateway/buffer/core/ledger.py) -> `>IQQQQq` (device number,
  head sequence, next sequence, readings, bytes, oldest timestamp ns).
- `meta`: `totals` -> `>QQ` (readings, bytes); `next_device` -> `>I`.
- `dead`: the dead letters, in the format gateway/buffer/deadletters.py owns.

Capacity (gateway/buffer/capacity.py): the LMDB map is the configured capacity; readings may take
a fixed fraction of it, and admission (gateway/buffer/core/admission.py) decides near that
budget, inside the transaction that stores, so drops and stores commit together.

Invariants: accounting is written in the same transaction as the data it counts, so it is exact
after any crash. A reading leaves only by `delete`, which the flusher calls after the database
confirmed (or after moving it to `dead`), or by a drop that admission decided and counted; readings
the flusher has read are leased and never dropped. Every method blocks; the service calls them in
its event loop's thread (see gateway/service/lifecycle.py for why not in a worker thread).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Self

import lmdb

from gateway.buffer import capacity, deadletters, environment, integrity
from gateway.buffer.admitter import Admitter
from gateway.buffer.core.admission import Lane, Rules
from gateway.buffer.core.ledger import (
    KEY,
    U64,
    Admitted,
    DeviceState,
    Span,
    Totals,
)
from gateway.buffer.core.verify import Report, is_plausible
from gateway.buffer.transaction import FifoTransaction, read_ledger
from gateway.config.sections import ApiSettings, SyncMode
from gateway.errors import CapacityError, StorageError

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from pathlib import Path

    from gateway.buffer.latest import Latest

logger = logging.getLogger(__name__)
# Without a configuration (tools, tests), the read API's default.
DEFAULT_LATEST_SERIES: int = ApiSettings.model_fields["latest_series"].default
DEFAULT_LANE = Lane()


class Buffer:
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

        `latest_series`: the most series whose latest reading is kept (gateway/buffer/latest.py).

        Raises:
            StorageError: when LMDB cannot open it.
        """
        self.capacity_bytes = capacity_bytes
        self.budget_bytes = capacity.readings_budget(capacity_bytes)
        self.path = path
        opened = environment.open_environment(
            path, capacity_bytes, sync, readonly=readonly, latest_series=latest_series
        )
        self._owner, self._env, self._tables, self.latest = opened
        self._guard = capacity.PageGuard(self._env, self._tables, capacity_bytes)
        self._plain_rules = Rules(budget_bytes=self.budget_bytes)
        self._lock = threading.Lock()
        # Readings the flusher has read and not yet deleted, per FIFO: (end sequence, bytes).
        # They are on their way to the database, so admission never drops them.
        self._leases: dict[str, tuple[int, int]] = {}
        # The committed accounting, for the flusher's scheduling and admission; LMDB stays the
        # source of truth and the ledger adopts a change only after its commit.
        with self._env.begin() as txn:
            self._ledger = read_ledger(txn, self._tables)
        if not readonly and not is_plausible(
            self._ledger.states, (self._ledger.readings, self._ledger.nbytes)
        ):
            report = self.repair()
            logger.error(
                "buffer accounting did not match its data (%s); rebuilt it from a full scan",
                "; ".join(report.problems[:5]),
            )

    def verify(self) -> Report:
        """Compare the stored accounting with a full scan of the data."""
        with self._lock:
            return integrity.verify(self._env, self._tables, self._ledger)

    def repair(self) -> Report:
        """Rebuild the accounting from a full scan; returns what was wrong before."""
        with self._lock:
            report, self._ledger = integrity.repair(self._env, self._tables, self._ledger)
            return report

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
                    w = FifoTransaction(self._ledger, self._tables, txn)
                    admitted = Admitter(w, rules, self._leases).admit(items)
                    if admitted.stored:
                        if self.latest is not None:
                            self.latest.record(txn, admitted.placed, time.time_ns())
                        self._guard.check(txn)
                    w.finish()
            except lmdb.Error as exc:
                raise capacity.translate(exc, self.path, self.capacity_bytes) from exc
            self._ledger.adopt(w.change())
        return admitted

    def read(self, wanted: Iterable[tuple[str, int]]) -> list[Span]:
        """Read up to n oldest readings of each (FIFO, n) and lease them until `delete`/`release`.

        Nothing is removed; leased readings are never dropped by admission.
        """
        spans = []
        with self._lock, self._env.begin() as txn:
            cursor = txn.cursor(db=self._tables.data)
            states = self._ledger.states
            for fifo, n in wanted:
                state = states.get(fifo)
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
                    w = FifoTransaction(self._ledger, self._tables, txn)
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
            self._ledger.adopt(w.change())
            return deleted

    def _store_dead(
        self, txn: lmdb.Transaction, dead_lines: Sequence[tuple[str, str, str]]
    ) -> None:
        cursor = txn.cursor(db=self._tables.dead)
        seq = U64.unpack(cursor.key())[0] + 1 if cursor.last() else 0
        for device, reason, line in dead_lines:
            txn.put(U64.pack(seq), deadletters.encode(device, reason, line), db=self._tables.dead)
            seq += 1

    def backlog(self) -> dict[str, int]:
        """Buffered readings per device, for devices that have any."""
        with self._lock:
            return {d: s.readings for d, s in self._ledger.states.items() if s.readings}

    def devices(self) -> dict[str, DeviceState]:
        """A snapshot of every device's accounting."""
        with self._lock:
            return {d: DeviceState(*s.pack_fields()) for d, s in self._ledger.states.items()}

    def totals(self) -> Totals:
        """Buffer-wide accounting."""
        with self._lock:
            return self._ledger.totals()

    def latest_of(self, device: str) -> list[Latest]:
        """The newest reading of each series of `device` the last-value table holds."""
        if self.latest is None:
            return []
        by_number = {state.number: state for state in self._ledger.states.values()}
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
        return (self.path / environment.DATA_FILE).stat().st_size

    def dead_letter_count(self) -> int:
        """How many points the dead-letter store holds."""
        with self._env.begin() as txn:
            entries: int = txn.stat(self._tables.dead)["entries"]
            return entries
