"""The last-value table: per series, the newest reading the gateway accepted or read back.

Kept in the buffer's LMDB environment and written in the transaction that stores the readings,
so what `/api/v1/devices/{device}/latest` shows is exactly what was acknowledged. Two databases:
- `latest`: key device, 0x1f, series (`measurement,tag=value,...` as encoded for the database)
  -> `>qQIQqB` (timestamp ns, update number, FIFO number, sequence, updated at ns, source) and
  the encoded fields.
- `latest_lru`: key `>Q` update number -> the `latest` key. The lowest number is the series
  updated least recently, evicted first when the table holds more than its bound.

A reading is still buffered while its FIFO (by number) has not moved its head past its
sequence; values read back from the database (source `database`) are delivered by definition.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.buffer.core.ledger import U64, DeviceState, fifo_device
from gateway.points.lineparse import parse_lines
from gateway.points.record import HEADER

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping

    import lmdb

ENTRY = struct.Struct(">qQIQqB")
SEPARATOR = b"\x1f"
FROM_INGEST, FROM_DATABASE = 0, 1
# (FIFO name, FIFO number, sequence, packed record) of each reading a commit stored.
Placed = tuple[str, int, int, bytes]


@dataclass(frozen=True, slots=True)
class Latest:
    """The newest reading of one series, decoded."""

    device: str
    measurement: str
    tags: dict[str, str]
    fields: dict[str, object]
    ts_ns: int
    updated_ns: int
    buffered: bool
    from_database: bool


class LatestTable:
    """Reads and writes the two databases inside the caller's transactions."""

    def __init__(self, latest: Any, lru: Any, bound: int) -> None:  # noqa: ANN401 - LMDB handles
        """`latest` and `lru`: the opened LMDB databases; `bound`: the most series kept."""
        self._latest = latest
        self._lru = lru
        self.bound = bound

    def record(self, txn: lmdb.Transaction, placed: Iterable[Placed], now_ns: int) -> None:
        """Make each series' newest reading among `placed` its latest, if newer than the kept."""
        # Per reading only the header is read and the series sliced: this runs in every commit.
        newest: dict[tuple[str, bytes], tuple[int, int, int, bytes, int]] = {}
        header, start = HEADER.unpack_from, HEADER.size
        for fifo, number, seq, value in placed:
            ts_ns, series_len = header(value)
            key = (fifo, value[start : start + series_len])
            kept = newest.get(key)
            if kept is None or ts_ns >= kept[0]:
                newest[key] = (ts_ns, number, seq, value, start + series_len)
        devices: dict[str, bytes] = {}
        for (fifo, series), (ts_ns, number, seq, value, fields_at) in newest.items():
            device = devices.get(fifo)
            if device is None:
                device = devices[fifo] = fifo_device(fifo).encode() + SEPARATOR
            origin = (number, seq, now_ns, FROM_INGEST)
            self._put(txn, device + series, ts_ns, origin, value[fields_at:])

    def fill(self, txn: lmdb.Transaction, device: str, lines: Iterable[bytes], now_ns: int) -> None:
        """Keep values read back from the database (line protocol, one reading per line)."""
        prefix = device.encode() + SEPARATOR
        for line in lines:
            series, fields, ts = line.rsplit(b" ", 2)
            self._put(txn, prefix + series, int(ts), (0, 0, now_ns, FROM_DATABASE), fields)

    def _put(
        self,
        txn: lmdb.Transaction,
        key: bytes,
        ts_ns: int,
        origin: tuple[int, int, int, int],
        fields: bytes,
    ) -> None:
        old = txn.get(key, db=self._latest)
        if old is not None:
            old_ts, old_update = ENTRY.unpack_from(old)[:2]
            if ts_ns < old_ts:
                return  # a late reading does not replace a newer one
            txn.delete(U64.pack(old_update), db=self._lru)
        last = txn.cursor(db=self._lru)
        update = U64.unpack(last.key())[0] + 1 if last.last() else 1
        entry = ENTRY.pack(ts_ns, update, *origin) + fields
        txn.put(key, entry, db=self._latest)
        txn.put(U64.pack(update), key, db=self._lru)
        if old is None:
            self._evict(txn)

    def _evict(self, txn: lmdb.Transaction) -> None:
        excess = txn.stat(self._latest)["entries"] - self.bound
        if excess <= 0:
            return
        cursor = txn.cursor(db=self._lru)
        cursor.first()
        for _ in range(excess):
            txn.delete(cursor.value(), db=self._latest)
            cursor.delete()

    def device(
        self, txn: lmdb.Transaction, device: str, states: Mapping[int, DeviceState]
    ) -> list[Latest]:
        """The latest reading of each series of `device`; `states`: FIFO number -> state."""
        prefix = device.encode() + SEPARATOR
        cursor = txn.cursor(db=self._latest)
        found = []
        if cursor.set_range(prefix):
            for key, value in cursor:
                name = bytes(key)
                if not name.startswith(prefix):
                    break
                found.append(_decode(device, name[len(prefix) :], value, states))
        return found

    def devices(self, txn: lmdb.Transaction) -> Iterator[tuple[str, int]]:
        """(device, last updated ns) of every device in the table."""
        last: tuple[str, int] | None = None
        for key, value in txn.cursor(db=self._latest):
            device = bytes(key).partition(SEPARATOR)[0].decode()
            updated_ns = ENTRY.unpack_from(value)[4]
            if last is not None and last[0] != device:
                yield last
                last = None
            if last is None or updated_ns > last[1]:
                last = (device, updated_ns)
        if last is not None:
            yield last


def _decode(
    device: str, series: bytes, value: bytes | memoryview, states: Mapping[int, DeviceState]
) -> Latest:
    ts_ns, _, number, seq, updated_ns, source = ENTRY.unpack_from(value)
    fields = bytes(value[ENTRY.size :])
    ((measurement, tags, field_values, _),) = parse_lines(
        (bytes(series) + b" " + fields + b" %d" % ts_ns).decode()
    )
    state = states.get(number)
    buffered = (
        source == FROM_INGEST and state is not None and state.readings > 0 and seq >= state.head
    )
    return Latest(
        device=device,
        measurement=measurement,
        tags=dict(tags),
        fields=dict(field_values),
        ts_ns=ts_ns,
        updated_ns=updated_ns,
        buffered=buffered,
        from_database=source == FROM_DATABASE,
    )
