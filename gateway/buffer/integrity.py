"""Buffer integrity: scan the data, compare it with the accounting, rebuild the accounting.

A concern of its own: the start-up check and `gateway verify-buffer`, never the hot path. The
comparison itself is pure, in gateway/buffer/core/verify.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.buffer.core.ledger import KEY, TOTALS, U32, DeviceState, Ledger
from gateway.buffer.core.verify import Found, Report, compare
from gateway.buffer.transaction import read_ledger
from gateway.points.record import timestamp_of

if TYPE_CHECKING:
    import lmdb

    from gateway.buffer.transaction import Tables


def scan(env: lmdb.Environment, tables: Tables) -> dict[int, Found]:
    """Walk every stored reading: what each device number really holds."""
    found: dict[int, Found] = {}
    with env.begin() as txn:
        for key, value in txn.cursor(db=tables.data):
            number, seq = KEY.unpack(key)
            entry = found.get(number)
            if entry is None:
                entry = found[number] = Found(first_seq=seq, oldest_ts_ns=timestamp_of(value))
            entry.readings += 1
            entry.nbytes += KEY.size + len(value)
            entry.last_seq = seq
    return found


def verify(env: lmdb.Environment, tables: Tables, ledger: Ledger) -> Report:
    """Compare the committed accounting with a full scan of the data."""
    return compare(dict(ledger.states), (ledger.readings, ledger.nbytes), scan(env, tables))


def repair(env: lmdb.Environment, tables: Tables, ledger: Ledger) -> tuple[Report, Ledger]:
    """Rebuild the accounting from a full scan; what was wrong before, and the new ledger.

    Readings whose device number has no device entry are kept under a device named
    `orphan-<number>`: their records still carry their own device tag.
    """
    found = scan(env, tables)
    report = compare(ledger.states, (ledger.readings, ledger.nbytes), found)
    if report.is_consistent:
        return report, ledger
    states = {name: DeviceState(*state.pack_fields()) for name, state in ledger.states.items()}
    for number in report.orphan_numbers:
        states[f"orphan-{number}"] = DeviceState(number, 0, 0, 0, 0, 0)
    with env.begin(write=True) as txn:
        for name, state in states.items():
            seen = found.get(state.number, Found())
            if seen.readings:
                state.head = seen.first_seq
                state.next = max(state.next, seen.last_seq + 1)
            else:
                state.head = state.next = max(state.next, state.head)
            state.readings, state.nbytes = seen.readings, seen.nbytes
            state.oldest_ts_ns = seen.oldest_ts_ns
            txn.put(name.encode(), state.pack(), db=tables.devices)
        totals = (sum(f.readings for f in found.values()), sum(f.nbytes for f in found.values()))
        txn.put(b"totals", TOTALS.pack(*totals), db=tables.meta)
        next_number = max([s.number for s in states.values()], default=-1) + 1
        raw = txn.get(b"next_device", db=tables.meta)
        if not raw or U32.unpack(raw)[0] < next_number:
            txn.put(b"next_device", U32.pack(next_number), db=tables.meta)
    with env.begin() as txn:
        return report, read_ledger(txn, tables)
