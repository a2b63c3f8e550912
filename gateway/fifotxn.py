"""One write transaction on the buffer's FIFOs: appends, drops and deletes with their accounting.

The transaction works on copies of the accounting it touches; the buffer adopts them with
`publish` only after LMDB committed, so the in-memory mirror never runs ahead of the disk.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.errors import StorageError
from gateway.fifos import DEVICE, KEY, TOTALS, U32, U32_MAX, DeviceState
from gateway.record import timestamp_of

if TYPE_CHECKING:
    from collections.abc import Iterator

    import lmdb

    from gateway.buffer import Buffer

# Idle FIFO entries are forgotten once there are this many entries and no more than half hold
# readings, so that device ids seen once (a firmware bug) do not pile up as keys.
PRUNE_FLOOR_ENTRIES = 10_000


class FifoTransaction:
    """One write transaction's view of the accounting; the buffer adopts it after the commit."""

    def __init__(self, buffer: Buffer, txn: lmdb.Transaction) -> None:
        """Start from the buffer's committed accounting."""
        self._buffer = buffer
        self._txn = txn
        self._put = txn.put
        self._data = buffer._data  # noqa: SLF001
        self._data_cursor: lmdb.Cursor | None = None
        self._base = buffer._states  # noqa: SLF001
        self.changed: dict[str, DeviceState] = {}
        self.pruned: set[str] = set()
        self.readings, self.nbytes = buffer._totals  # noqa: SLF001
        self.active = buffer._active  # noqa: SLF001
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
        in_use = self._buffer._numbers  # noqa: SLF001
        if self._next_device is None:
            raw = self._txn.get(b"next_device", db=self._buffer._meta)  # noqa: SLF001
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
        buffer, txn = self._buffer, self._txn
        for fifo, state in self.changed.items():
            txn.put(fifo.encode(), state.pack(), db=buffer._devices)  # noqa: SLF001
        for fifo in self.pruned:
            txn.delete(fifo.encode(), db=buffer._devices)  # noqa: SLF001
        if self._next_device is not None:
            txn.put(b"next_device", U32.pack(self._next_device & U32_MAX), db=buffer._meta)  # noqa: SLF001
        txn.put(b"totals", TOTALS.pack(self.readings, self.nbytes), db=buffer._meta)  # noqa: SLF001

    def publish(self) -> None:
        """Adopt the committed accounting as the buffer's mirror."""
        buffer = self._buffer
        for fifo in self.pruned:
            state = buffer._states.pop(fifo, None)  # noqa: SLF001
            if state is not None:
                buffer._numbers.discard(state.number)  # noqa: SLF001
        buffer._states.update(self.changed)  # noqa: SLF001
        buffer._numbers |= self._new_numbers  # noqa: SLF001
        buffer._totals = (self.readings, self.nbytes)  # noqa: SLF001
        buffer._active = self.active  # noqa: SLF001
