"""One write transaction on the buffer's FIFOs: appends, drops and deletes with their accounting.

The transaction works on copies of the ledger's entries it touches (gateway/buffer/core/
ledger.py), writes the accounting into the LMDB transaction with `finish`, and hands back the
change with `change`; the store has the ledger adopt it only after LMDB committed. This module
also owns the accounting's on-disk form: `read_ledger` is `finish` read back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.buffer.core.ledger import (
    DEVICE,
    KEY,
    TOTALS,
    U32,
    U32_MAX,
    DeviceState,
    Ledger,
    LedgerChange,
)
from gateway.errors import StorageError
from gateway.points.record import timestamp_of

if TYPE_CHECKING:
    from collections.abc import Iterator

    import lmdb

# Idle FIFO entries are forgotten once there are this many entries and no more than half hold
# readings, so that device ids seen once (a firmware bug) do not pile up as keys.
PRUNE_FLOOR_ENTRIES = 10_000


@dataclass(frozen=True, slots=True)
class Tables:
    """The named databases of the buffer's LMDB environment (py-lmdb's handles are untyped)."""

    data: Any
    devices: Any
    meta: Any
    dead: Any


def read_ledger(txn: lmdb.Transaction, tables: Tables) -> Ledger:
    """The committed accounting, as `FifoTransaction.finish` wrote it."""
    states = {
        bytes(name).decode(): DeviceState(*DEVICE.unpack(value))
        for name, value in txn.cursor(db=tables.devices)
    }
    raw = txn.get(b"totals", db=tables.meta)
    readings, nbytes = TOTALS.unpack(raw) if raw else (0, 0)
    return Ledger(states, readings, nbytes)


class FifoTransaction:
    """One write transaction's view of the accounting; see the module docstring."""

    def __init__(self, ledger: Ledger, tables: Tables, txn: lmdb.Transaction) -> None:
        """Start from the committed `ledger`; it is only read here."""
        self._ledger = ledger
        self._tables = tables
        self._txn = txn
        self._put = txn.put
        self._data = tables.data
        self._data_cursor: lmdb.Cursor | None = None
        self._base = ledger.states
        self.changed: dict[str, DeviceState] = {}
        self.pruned: set[str] = set()
        self.readings, self.nbytes = ledger.readings, ledger.nbytes
        self.active = ledger.active
        self._entries = len(self._base)
        self._next_device: int | None = None  # read when the first new device needs it
        self._new_numbers: set[int] = set()

    @property
    def _cursor(self) -> lmdb.Cursor:
        # Only drops and deletes walk the data; most appends never need a cursor.
        if self._data_cursor is None:
            self._data_cursor = self._txn.cursor(db=self._data)
        return self._data_cursor

    def state(self, fifo: str) -> DeviceState | None:
        """The FIFO's accounting as this transaction has it, copied for change."""
        state = self.changed.get(fifo)
        if state is None and fifo not in self.pruned:
            base = self._base.get(fifo)
            if base is not None:
                state = self.changed[fifo] = DeviceState(*DEVICE.unpack(base.pack()))
        return state

    def active_states(self) -> Iterator[tuple[str, DeviceState]]:
        """Every FIFO holding readings, as this transaction has it."""
        for fifo, state in self._base.items():
            if fifo not in self.changed and state.readings:
                yield fifo, state
        for fifo, state in self.changed.items():
            if state.readings:
                yield fifo, state

    def store(self, fifo: str, value: bytes, size: int) -> None:
        """Append one packed reading to the FIFO's tail."""
        state = self.state(fifo)
        if state is None:
            if self._entries >= PRUNE_FLOOR_ENTRIES and self._entries >= 2 * self.active:
                self._prune_idle()
            state = self.changed[fifo] = DeviceState(self._new_number(), 0, 0, 0, 0, 0)
            self.pruned.discard(fifo)
            self._entries += 1
        if not state.readings:
            state.head = state.next
            state.oldest_ts_ns = timestamp_of(value)
            self.active += 1
        self.append_to(state, value, size)

    def append_to(self, state: DeviceState, value: bytes, size: int) -> None:
        """Append to a FIFO that holds readings and whose state this transaction has."""
        self._put(KEY.pack(state.number, state.next), value, db=self._data)
        state.next += 1
        state.readings += 1
        state.nbytes += size
        self.readings += 1
        self.nbytes += size

    def drop(
        self, fifo: str, lease_end: int, *, need_bytes: int = 0, count: int | None = None
    ) -> tuple[int, int]:
        """Delete readings of `fifo` from its first one at or after `lease_end`.

        Deletes `count` readings, or as many as free `need_bytes`; returns (readings, bytes).
        Readings before `lease_end` are in flight and stay, which can leave a gap behind them.
        """
        state = self.state(fifo)
        if state is None or not state.readings:
            return 0, 0
        start = max(state.head, lease_end)
        cursor = self._cursor
        dropped = freed = 0
        if cursor.set_range(KEY.pack(state.number, start)):
            while (dropped < count) if count is not None else (freed < need_bytes):
                key = cursor.key()
                if not key or KEY.unpack(key)[0] != state.number:
                    break
                freed += len(key) + len(cursor.value())
                dropped += 1
                cursor.delete()
        state.readings -= dropped
        state.nbytes -= freed
        self.readings -= dropped
        self.nbytes -= freed
        if dropped and start == state.head:
            self._find_head(state)
        return dropped, freed

    def _find_head(self, state: DeviceState) -> None:
        if not state.readings:
            state.head = state.next
            state.oldest_ts_ns = 0
            self.active -= 1
            return
        cursor = self._cursor
        if not cursor.set_range(KEY.pack(state.number, state.head)):
            raise StorageError(f"device number {state.number} has readings but no head")
        number, state.head = KEY.unpack(cursor.key())
        if number != state.number:
            raise StorageError(f"device number {state.number} has readings but no head")
        state.oldest_ts_ns = timestamp_of(cursor.value())

    def _new_number(self) -> int:
        # Numbers wrap after 2**32 devices (a firmware bug can invent that many over months);
        # one still in use is skipped.
        in_use = self._ledger.numbers
        if self._next_device is None:
            raw = self._txn.get(b"next_device", db=self._tables.meta)
            self._next_device = U32.unpack(raw)[0] if raw else 0
        number = self._next_device
        while number > U32_MAX or number in in_use or number in self._new_numbers:
            number = 0 if number >= U32_MAX else number + 1
        self._new_numbers.add(number)
        self._next_device = number + 1
        return number

    def _prune_idle(self) -> None:
        """Forget FIFOs without readings, so that device ids seen once do not pile up."""
        for fifo, state in list(self._base.items()) + list(self.changed.items()):
            if not state.readings and fifo not in self.pruned:
                self.pruned.add(fifo)
                self.changed.pop(fifo, None)
                self._entries -= 1

    def finish(self) -> None:
        """Write the accounting into the transaction."""
        tables, txn = self._tables, self._txn
        for fifo, state in self.changed.items():
            txn.put(fifo.encode(), state.pack(), db=tables.devices)
        for fifo in self.pruned:
            txn.delete(fifo.encode(), db=tables.devices)
        if self._next_device is not None:
            txn.put(b"next_device", U32.pack(self._next_device & U32_MAX), db=tables.meta)
        txn.put(b"totals", TOTALS.pack(self.readings, self.nbytes), db=tables.meta)

    def change(self) -> LedgerChange:
        """What the ledger adopts once LMDB committed this transaction."""
        return LedgerChange(
            self.changed, self.pruned, self._new_numbers, self.readings, self.nbytes, self.active
        )
