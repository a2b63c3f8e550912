"""Buffer integrity: scan the data, compare it with the accounting, rebuild the accounting.

A mixin of `Buffer`, kept apart because it is a concern of its own: the start-up check and
`gateway verify-buffer`, never the hot path. The comparison itself is pure, in gateway/verify.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.fifos import KEY, TOTALS, U32, DeviceState
from gateway.record import timestamp_of
from gateway.verify import Found, Report, compare

if TYPE_CHECKING:
    import threading

    import lmdb


class IntegrityMixin:
    """Scan, verify and repair; `Buffer` provides the environment and the accounting."""

    _env: lmdb.Environment
    _data: Any  # py-lmdb's database handle type is private
    _devices: Any
    _meta: Any
    _lock: threading.Lock
    _states: dict[str, DeviceState]
    _totals: tuple[int, int]

    def _load_accounting(self) -> None:
        raise NotImplementedError

    def scan(self) -> dict[int, Found]:
        """Walk every stored reading: what each device number really holds."""
        found: dict[int, Found] = {}
        with self._env.begin() as txn:
            for key, value in txn.cursor(db=self._data):
                number, seq = KEY.unpack(key)
                entry = found.get(number)
                if entry is None:
                    entry = found[number] = Found(first_seq=seq, oldest_ts_ns=timestamp_of(value))
                entry.readings += 1
                entry.nbytes += KEY.size + len(value)
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
                        state.head = seen.first_seq
                        state.next = max(state.next, seen.last_seq + 1)
                    else:
                        state.head = state.next = max(state.next, state.head)
                    state.readings, state.nbytes = seen.readings, seen.nbytes
                    state.oldest_ts_ns = seen.oldest_ts_ns
                    txn.put(name.encode(), state.pack(), db=self._devices)
                totals = (
                    sum(f.readings for f in found.values()),
                    sum(f.nbytes for f in found.values()),
                )
                txn.put(b"totals", TOTALS.pack(*totals), db=self._meta)
                next_number = max([s.number for s in states.values()], default=-1) + 1
                raw = txn.get(b"next_device", db=self._meta)
                if not raw or U32.unpack(raw)[0] < next_number:
                    txn.put(b"next_device", U32.pack(next_number), db=self._meta)
            self._load_accounting()
            return report
