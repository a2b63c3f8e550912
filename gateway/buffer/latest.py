"""The last-value table: per series, the newest reading the gateway accepted or read back.

Kept in the buffer's store environment. A group commit only notes its newest values in memory;
the buffer's checkpoint writes them (gateway/buffer/checkpoint.py), and a restart notes again
what the journal holds past the last checkpoint, so what `/api/v1/devices/{device}/latest` shows
is exactly what was acknowledged without a write per series and commit. Two databases:
- `latest`: key device, 0x1f, series (`measurement,tag=value,...` as encoded for the database)
  -> `>qQIQqB` (timestamp ns, update number, FIFO number, sequence, updated at ns, source) and
  the encoded fields.
- `latest_lru`: key `>Q` update number -> the `latest` key. The lowest number is the series
  updated least recently, evicted first when the table holds more than its bound.

A reading is still buffered while its FIFO (by number) has not moved its head past its
sequence; values read back from the database (source `database`) are delivered by definition.

A device and series whose key is longer than LMDB allows (`MAX_KEY_BYTES`, 511 bytes) are not kept:
valid names can reach that length, and a key LMDB refuses would fail every checkpoint. Their
readings are buffered and delivered as any other; only the read API has no latest value for them.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.buffer.core.ledger import MAX_KEY_BYTES, U64, DeviceState, fifo_device
from gateway.points.lineparse import parse_lines
from gateway.points.record import HEADER

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping

    import lmdb

ENTRY = struct.Struct(">qQIQqB")
SEPARATOR = b"\x1f"
# A line's series: measurement and tags, where a backslash escapes the next byte (a space too).
_SERIES = re.compile(rb"(?:[^ \\]|\\.)*")
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


# What a noted value waits to be written as: timestamp, origin (FIFO number, sequence, updated
# at, source) and the encoded fields.
Noted = tuple[int, tuple[int, int, int, int], bytes]


class LatestTable:
    """Reads and writes the two databases inside the caller's transactions."""

    def __init__(self, latest: Any, lru: Any, bound: int) -> None:  # noqa: ANN401 - LMDB handles
        """`latest` and `lru`: the opened LMDB databases; `bound`: the most series kept."""
        self._latest = latest
        self._lru = lru
        self.bound = bound
        self.noted: dict[bytes, Noted] = {}

    @property
    def databases(self) -> tuple[Any, ...]:
        """The table's LMDB handles, for counting the pages it takes."""
        return (self._latest, self._lru)

    def note(self, placed: Iterable[Placed], now_ns: int) -> None:
        """Make each series' newest reading among `placed` its latest, once `write` runs."""
        # Per reading only the header is read and the series sliced: this runs in every commit.
        newest: dict[tuple[str, bytes], tuple[int, int, int, bytes, int]] = {}
        header, start = HEADER.unpack_from, HEADER.size
        key: tuple[str, bytes] = ("", b"")
        for fifo, number, seq, value in placed:
            ts_ns, series_len = header(value)
            # Readings come in runs of one device's series: compared in place, the key of the
            # last one is kept without slicing the series out of every reading.
            if not (
                fifo == key[0] and series_len == len(key[1]) and value.startswith(key[1], start)
            ):
                key = (fifo, value[start : start + series_len])
            kept = newest.get(key)
            if kept is None or ts_ns >= kept[0]:
                newest[key] = (ts_ns, number, seq, value, start + series_len)
        devices: dict[str, bytes] = {}
        for (fifo, series), (ts_ns, number, seq, value, fields_at) in newest.items():
            device = devices.get(fifo)
            if device is None:
                device = devices[fifo] = fifo_device(fifo).encode() + SEPARATOR
            name = device + series
            if len(name) > MAX_KEY_BYTES:
                continue
            kept_noted = self.noted.get(name)
            if kept_noted is None or ts_ns >= kept_noted[0]:
                # Re-inserted, so that `write` updates series in the order they were updated.
                self.noted.pop(name, None)
                self.noted[name] = (ts_ns, (number, seq, now_ns, FROM_INGEST), value[fields_at:])

    def write(self, txn: lmdb.Transaction) -> None:
        """Write what was noted into the table."""
        for key, (ts_ns, origin, fields) in self.noted.items():
            self._put(txn, key, ts_ns, origin, fields)
        self.noted.clear()
        # A lower bound than the table was filled under (a configuration change) applies now,
        # not only once a new series arrives in a commit the page guard might refuse.
        self._evict(txn)

    def fill(self, txn: lmdb.Transaction, device: str, lines: Iterable[bytes], now_ns: int) -> None:
        """Keep values read back from the database (line protocol, one reading per line)."""
        prefix = device.encode() + SEPARATOR
        for line in lines:
            # The series ends at its first unescaped space; a string field may hold spaces.
            series = _SERIES.match(line).group()  # type: ignore[union-attr]
            fields, ts = line[len(series) + 1 :].rsplit(b" ", 1)
            if len(prefix) + len(series) > MAX_KEY_BYTES:
                continue
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

    def is_over_bound(self, txn: lmdb.Transaction) -> bool:
        """Whether the table holds more series than its bound (it was filled under a higher)."""
        entries: int = txn.stat(self._latest)["entries"]
        return entries > self.bound

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
        entries: dict[bytes, bytes] = {}
        if len(prefix) < MAX_KEY_BYTES and cursor.set_range(prefix):
            for key, value in cursor:
                name = bytes(key)
                if not name.startswith(prefix):
                    break
                entries[name] = bytes(value)
        for name, (ts_ns, origin, fields) in self.noted.items():
            kept = entries.get(name)
            if name.startswith(prefix) and (kept is None or ts_ns >= ENTRY.unpack_from(kept)[0]):
                entries[name] = ENTRY.pack(ts_ns, 0, *origin) + fields
        return [
            _decode(device, name[len(prefix) :], value, states)
            for name, value in sorted(entries.items())
        ]

    def devices(self, txn: lmdb.Transaction) -> dict[str, int]:
        """Device -> last updated ns, of every device in the table or noted."""
        found = dict(self._stored_devices(txn))
        for key, (_, origin, _) in self.noted.items():
            device = key.partition(SEPARATOR)[0].decode()
            found[device] = max(found.get(device, 0), origin[2])
        return found

    def devices_from(self, txn: lmdb.Transaction, start: str, count: int) -> dict[str, int]:
        """Device -> last updated ns of the first `count` devices named `start` or after.

        Walks the series of those devices only, so a page costs its own length.
        """
        found: dict[str, int] = {}
        cursor = txn.cursor(db=self._latest)
        # Cut to what LMDB can seek to: keys it holds are no longer, and the names before
        # `start` that this lets through are skipped below.
        if count <= 0 or not cursor.set_range(start.encode()[:MAX_KEY_BYTES]):
            return found
        for key, value in cursor:
            device = bytes(key).partition(SEPARATOR)[0].decode()
            # A key of a shorter name can sort after `start` when `start` holds a control
            # character (it is a cursor from a client, not a name): skipped, at most its length.
            if device < start:
                continue
            if device not in found:
                if len(found) == count:
                    break
                found[device] = 0
            found[device] = max(found[device], ENTRY.unpack_from(value)[4])
        return found

    def device_names(self, txn: lmdb.Transaction) -> set[str]:
        """The names of the devices in the table (written values only), keys alone read."""
        names: set[str] = set()
        last = b""
        for key in txn.cursor(db=self._latest).iternext(keys=True, values=False):
            device = bytes(key).partition(SEPARATOR)[0]
            if device != last:
                names.add(device.decode())
                last = device
        return names

    def _stored_devices(self, txn: lmdb.Transaction) -> Iterator[tuple[str, int]]:
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
