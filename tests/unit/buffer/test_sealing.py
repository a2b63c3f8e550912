"""Sealing in steps: each journal record read once, bounded steps, failures and crashes mid-seal."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import lmdb
import pytest

from gateway.buffer import checkpoint, sealing
from gateway.buffer.store import Buffer
from gateway.errors import StorageError
from gateway.points.model import Reading
from gateway.points.record import pack

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

MIB = 1 << 20


def reading(device: str, ts: int, fields: int) -> bytes:
    values = tuple((f"field_{i:02d}", ts * 1.5 + i) for i in range(fields))
    return pack(Reading(device, "machine", (("device", device), ("site", "north")), values, ts))


def fill(
    buf: Buffer, devices: int, rounds: int, fields: int = 20, seed: int = 1
) -> dict[str, list[bytes]]:
    """Group commits of one reading per device each, devices in a shuffled order per commit."""
    rng = random.Random(seed)
    names = [f"dev-{n:04d}" for n in range(devices)]
    sent: dict[str, list[bytes]] = {name: [] for name in names}
    ts = 0
    for _ in range(rounds):
        rng.shuffle(names)
        items = []
        for name in names:
            ts += 1
            value = reading(name, ts, rng.choice((0, 1, fields)) or 1)
            items.append((name, value))
            sent[name].append(value)
        buf.append(items)
    return sent


@pytest.fixture
def small_seals() -> Iterator[None]:
    saved = checkpoint.SEAL_READINGS, checkpoint.SEAL_RECORDS, checkpoint.CHECKPOINT_INTERVAL_S
    checkpoint.SEAL_READINGS, checkpoint.SEAL_RECORDS = 20_000, 4096
    checkpoint.CHECKPOINT_INTERVAL_S = 1e9
    yield
    checkpoint.SEAL_READINGS, checkpoint.SEAL_RECORDS, checkpoint.CHECKPOINT_INTERVAL_S = saved


def test_a_seal_reads_each_journal_record_once_in_bounded_steps(
    tmp_path: Path, small_seals: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A seal of big readings from many devices decompresses each record once, over many steps."""
    decoded: list[int] = []
    real = sealing.journal_records

    def counting(value: bytes):
        found = real(value)
        decoded.append(sum(len(g) for g in found[1]))
        return found

    monkeypatch.setattr(sealing, "journal_records", counting)
    monkeypatch.setattr(sealing, "STEP_BYTES", 256 << 10)
    buf = Buffer(tmp_path, 256 * MIB)
    sent = fill(buf, devices=1000, rounds=19)  # 19 records, 19,000 readings: not due yet
    assert buf._ledger.sealed_through == -1
    fill(buf, devices=1000, rounds=2, seed=2)  # due: the seal starts with the next change
    steps_before = buf._checkpointer.sealing
    assert steps_before is not None
    while buf.maintain():
        pass
    assert buf._ledger.sealed_through >= 19
    # Every record up to the cut read exactly once (the record holding 1,000 readings each).
    assert len(decoded) == buf._ledger.sealed_through + 1
    assert steps_before.steps > 10
    for name in ("dev-0000", "dev-0999"):
        got = buf.readings_of(name)
        assert got[: len(sent[name])] == sent[name]
    assert buf.verify().is_consistent
    buf.close()


def test_each_step_does_a_bounded_share_of_the_work(tmp_path: Path, small_seals: None) -> None:
    """No single step copies more than its budget plus one record, whatever the reading size."""
    buf = Buffer(tmp_path, 256 * MIB)
    fill(buf, devices=300, rounds=70, fields=40)
    sealing_ = buf._checkpointer.sealing
    assert sealing_ is not None
    written: list[int] = []
    while buf._checkpointer.sealing is not None:
        before = sealing_._next
        buf.maintain()
        written.append(sealing_._next - before)
    assert max(written) <= 1 + sealing.STEP_BYTES // (300 * 100)
    assert buf._ledger.sealed_through >= 0
    assert buf.verify().is_consistent
    buf.close()


def test_a_crash_mid_seal_loses_nothing_and_the_next_seal_starts_over(
    tmp_path: Path, small_seals: None
) -> None:
    """kill -9 halfway through a seal: every reading comes back once, the leftovers go."""
    buf = Buffer(tmp_path, 256 * MIB)
    sent = fill(buf, devices=500, rounds=45)
    assert buf._checkpointer.sealing is not None
    for _ in range(3):
        buf.maintain()
    assert buf._checkpointer.sealing is not None
    buf.abandon()
    buf = Buffer(tmp_path, 256 * MIB)
    assert buf.verify().is_consistent
    buf.checkpoint()  # runs the seal due to its end
    assert buf._ledger.sealed_through >= 0
    for name, values in sent.items():
        assert buf.readings_of(name) == values
    buf.close()
    buf = Buffer(tmp_path, 256 * MIB)
    assert buf.verify().is_consistent
    assert buf.totals().readings == sum(len(v) for v in sent.values())
    buf.close()


class _FailingDeletes:
    """The journal environment, whose write transactions fail while `failing` is set."""

    def __init__(self, env: lmdb.Environment) -> None:
        self.env = env
        self.failing = False

    def begin(self, *, write: bool = False, **kwargs: object) -> lmdb.Transaction:
        if write and self.failing:
            raise lmdb.DiskError("injected: no space left on device")
        return self.env.begin(write=write, **kwargs)

    def __getattr__(self, name: str) -> object:
        return getattr(self.env, name)


def test_a_failed_journal_deletion_after_a_seal_breaks_no_later_checkpoint(
    tmp_path: Path, small_seals: None
) -> None:
    """The seal's store commit is its point of no return; the deletion is tried again later."""
    buf = Buffer(tmp_path, 256 * MIB)
    journal = _FailingDeletes(buf._journal)
    buf._journal = journal
    buf._checkpointer._journal = journal
    sent = fill(buf, devices=200, rounds=105)
    seal = buf._ledger.next_seal
    journal.failing = True
    # Steps read the journal only; the deletion after the completing checkpoint fails.
    while buf._checkpointer.sealing is not None:
        buf._checkpoint_if_due()
        buf._checkpointer._retry_at = 0.0
    assert buf._ledger.next_seal == seal + 1
    assert buf._index.has_dead
    journal.failing = False
    buf.checkpoint()
    assert not buf._index.has_dead
    more = fill(buf, devices=200, rounds=105, seed=3)
    buf.checkpoint()  # a second seal: "out of order" on the old code
    assert buf._ledger.next_seal == seal + 2
    for name in sent:
        assert buf.readings_of(name) == sent[name] + more[name]
    buf.abandon()
    buf = Buffer(tmp_path, 256 * MIB)
    assert buf.verify().is_consistent
    assert buf.totals().readings == 2 * 200 * 105
    buf.close()


def test_a_failed_checkpoint_backs_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a failure the next try waits, instead of redoing the work with every change."""
    buf = Buffer(tmp_path, 16 * MIB)
    tries: list[int] = []

    def failing(*args: object, **kwargs: object) -> None:
        tries.append(1)
        raise StorageError("injected")

    monkeypatch.setattr(buf._checkpointer, "write", failing)
    monkeypatch.setattr(checkpoint, "CHECKPOINT_INTERVAL_S", 0.0)  # due after every change
    for ts in range(50):
        buf.append([("a", reading("a", ts + 1, 1))])
    assert len(tries) == 1
    buf._checkpointer._retry_at = 0.0
    buf.append([("a", reading("a", 99, 1))])
    assert len(tries) == 2
    assert buf._checkpointer._backoff_s == 2 * 0.5
    monkeypatch.undo()
    buf.close()
