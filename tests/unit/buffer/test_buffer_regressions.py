"""Failing step sequences the buffer's state machine found, replayed as plain tests (issue 30).

Each `state.…` line below is a step as hypothesis printed it after shrinking
(tests/unit/buffer/test_buffer_model.py), with `draws(…)` standing for the values it drew inside
the step; `Replay` checks the machine's invariants after every step, as hypothesis does. Tests
of findings the machine cannot express (the order of fsyncs, a damaged record, decode counts)
use the buffer directly.
"""

from __future__ import annotations

import contextlib
import sys
from typing import TYPE_CHECKING, Any

import lmdb
import pytest

from gateway.buffer import checkpoint
from gateway.buffer.core import chunk
from gateway.buffer.fiforead import DecodedChunks
from gateway.buffer.store import Buffer
from gateway.points.model import Reading
from gateway.points.record import pack
from tests.unit.buffer import test_buffer_model
from tests.unit.buffer.faults import Faults
from tests.unit.buffer.test_buffer_model import BufferMachine, TinyBufferMachine

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path


class draws:  # noqa: N801 - reads as hypothesis prints `data(...)`
    """The values one step drew from its `data` strategy, in order."""

    def __init__(self, *values: object) -> None:
        self._values = list(values)

    def draw(self, _strategy: object) -> object:
        return self._values.pop(0)


class Replay:
    """A state machine whose steps are followed by its invariants."""

    def __init__(self, machine: BufferMachine) -> None:
        self.machine = machine

    def __getattr__(self, name: str) -> Callable[..., None]:
        step = getattr(self.machine, name)

        def run(**kwargs: Any) -> None:
            step(**kwargs)
            self.machine.accounting_matches_model()
            self.machine.full_scan_agrees()
            self.machine.summaries_are_exact()
            self.machine.level_counts_agree()

        return run


@contextlib.contextmanager
def replaying(machine: type[BufferMachine] = BufferMachine) -> Iterator[Replay]:
    state = machine()
    try:
        state.accounting_matches_model()
        state.full_scan_agrees()
        yield Replay(state)
    finally:
        state.teardown()


def test_finding_3_a_failed_journal_deletion_after_a_seal_breaks_later_checkpoints() -> None:
    """Finding 3: a seal's journal deletion fails after its store commit; checkpoints go on."""
    with replaying() as state:
        state.append(devices=["a"], shape=(0, 0, 0))
        state.fail_journal_deletion(error=lmdb.Error, seal=True, write=None)
        state.seal()


def test_finding_3_a_failed_journal_deletion_after_a_seal_loses_readings() -> None:
    """Finding 3: after a seal's failed journal deletion, the next checkpoint must not lose what
    the seal holds (the memory kept the old seal number and no sealed chunk for the FIFO)."""
    with replaying() as state:
        state.append(devices=["a"], shape=(0, 0, 0))
        state.fail_journal_deletion(error=lmdb.Error, seal=True, write=None)
        state.reopen()


# Finding 9: with deliveries recorded in the next group commit's journal record, only the
# deliveries since the last such record come back after kill -9.


def test_finding_9_a_crash_brings_back_only_deliveries_after_the_last_group_commit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Finding 9: deliveries before the last group commit stay delivered after kill -9."""
    monkeypatch.setattr(test_buffer_model, "DELIVERIES_IN_JOURNAL", True)
    with replaying() as state:
        state.append(devices=["a", "b"], shape=(0, 0, 0))
        state.read(data=draws("a"), n=1)
        state.finish(data=draws("a"), dead=False)
        state.append(devices=["a"], shape=(0, 0, 0))
        state.crash()


def reading(device: str, ts: int, fields: int = 1) -> tuple[str, bytes]:
    values = tuple((f"f{i}", f"{device}-{ts}-{i:04d}" * 3) for i in range(fields))
    return device, pack(Reading(device, "m", (("device", device),), values, ts))


def test_finding_5_admit_stores_nothing_when_it_raises_after_the_journal_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Finding 5: a seal meeting a damaged journal record inside `admit` must not make the
    call raise with its readings stored (the committer would store them a second time)."""
    caplog.errors_expected = True  # type: ignore[attr-defined] - a damaged record is logged
    with Buffer(tmp_path, 1 << 20) as buffer:
        buffer.append([reading("a", ts) for ts in range(1, 40)])
    env = lmdb.open(str(tmp_path / "journal.mdb"), subdir=False, map_size=1 << 20)
    with env.begin(write=True) as txn:
        key, value = next(iter(txn.cursor()))
        txn.put(key, bytes(value)[:-4])  # the end of its compressed frame rots away
    env.close()
    monkeypatch.setattr(checkpoint, "SEAL_RECORDS", 1)
    buffer = Buffer(tmp_path, 1 << 20)
    try:
        before = buffer.totals().readings
        try:
            buffer.append([reading("b", 100)])
        except Exception:  # noqa: BLE001 - whatever it raised, it must have stored nothing
            assert buffer.totals().readings <= before
            assert "b" not in {d for d, s in buffer.devices().items() if s.readings}
        else:
            assert buffer.readings_of("b") == [reading("b", 100)[1]]
    finally:
        buffer.abandon()


@pytest.mark.parametrize("sync", ["interval", "none"])
def test_finding_8_the_store_is_durable_before_journal_records_are_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sync: str
) -> None:
    """Finding 8: in `interval`/`none`, a seal's store commit reaches the disk before the
    journal records it replaces are deleted, and `sync()` flushes the store first."""
    monkeypatch.setattr(checkpoint, "SEAL_RECORDS", 1)
    buffer = Buffer(tmp_path, 1 << 20, sync)  # type: ignore[arg-type]
    try:
        faults = Faults(buffer)
        buffer.append([reading("a", ts) for ts in range(1, 10)])
        buffer.checkpoint()  # the seal runs in steps: to its end
        flags = buffer._env.flags()
        durable_store = flags["sync"] and flags["metasync"]
        events = faults.events
        store_commit = events.index(("store", "commit"))
        deletion = events.index(("journal", "commit"), store_commit)
        assert durable_store or ("store", "sync") in events[store_commit:deletion]

        del events[:]
        buffer.sync()
        syncs = [env for env, what in events if what == "sync"]
        assert syncs[:1] == ["store"]
        assert "journal" in syncs
    finally:
        buffer.abandon()


def test_finding_2_a_seal_decodes_each_journal_record_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 2: a seal decodes each journal record once, however many devices share it and
    however small the cache of decoded chunks."""
    records, devices = 30, 20
    with Buffer(tmp_path, 16 << 20) as buffer:
        for ts in range(records):
            buffer.append([reading(f"d{d:02d}", ts + 1, fields=12) for d in range(devices)])
    buffer = Buffer(tmp_path, 16 << 20)
    try:
        buffer._decoded = DecodedChunks(64 << 10)  # far less than the journal holds decoded
        decoded = 0
        original = chunk.journal_records

        def counted(value: bytes) -> Any:
            nonlocal decoded
            decoded += 1
            return original(value)

        for module in list(sys.modules.values()):
            if (
                module
                and module.__name__.startswith("gateway.buffer")
                and getattr(module, "journal_records", None) is original
            ):
                monkeypatch.setattr(module, "journal_records", counted)
        monkeypatch.setattr(checkpoint, "SEAL_RECORDS", 0)
        buffer.checkpoint()
        assert buffer.verify().is_consistent
        assert decoded <= records
    finally:
        buffer.close()


@pytest.mark.parametrize("restart", [False, True])
def test_finding_7_an_empty_small_buffer_with_many_devices_accepts_readings(
    tmp_path: Path, restart: bool
) -> None:
    """Finding 7 (scaled down from 4 MiB and 4,400 devices): a 1 MiB buffer that held a
    reading of each of 600 devices, all delivered since, takes a reading, also after a restart."""
    buffer = Buffer(tmp_path, 1 << 20, latest_series=300)
    try:
        for start in range(0, 600, 100):
            buffer.append([reading(f"dev-{d}", d + 1) for d in range(start, start + 100)])
        for device in list(buffer.devices()):
            (span,) = buffer.read([(device, 10)])
            assert buffer.delete([(device, span.first_seq, len(span.values))]) == 1
        assert buffer.totals().readings == 0
        if restart:
            buffer.close()
            buffer = Buffer(tmp_path, 1 << 20, latest_series=300)
        buffer.append([reading("a", 1000)])
        assert buffer.totals().readings == 1
    finally:
        buffer.abandon()


def test_finding_4_the_page_guard_leaves_the_checkpoint_room() -> None:
    """Finding 4 (and 7): a group commit the page guard accepted leaves room for the
    checkpoint after it; closing a 256 KiB buffer could not checkpoint (map full)."""
    with replaying(TinyBufferMachine) as state:
        state.append_many(count=289, shape=(12, 19, 0), start=0)
        state.reopen()


def test_finding_6_admission_drops_a_live_batch_in_flight_once_its_split_ended() -> None:
    """Finding 6: drops empty the backlog of a split FIFO with a live batch in flight, which
    ends the split; the next drop must not take that batch."""
    with replaying() as state:
        state.append(devices=["a", "b"], shape=(0, 0, 0))
        state.split()
        state.append(devices=["a"], shape=(0, 0, 0))
        state.read_live(data=draws("a"), n=1)
        state.over_share(data=draws("a"), extra=0, shape=(0, 0, 0))
        state.over_share(data=draws("a"), extra=0, shape=(0, 0, 0))
        state.finish(data=draws("a"), dead=False)


def test_finding_1_a_drop_behind_a_shorter_lease_swallows_readings() -> None:
    """Finding 1: a drop behind a lease of 4 leaves a gap; released and re-read shorter (1), the
    next drop behind it must not take the readings between the new lease and the gap."""
    with replaying() as state:
        state.append(devices=["a", "a", "a", "a", "b", "c"], shape=(0, 0, 0))
        state.append(devices=["a"], shape=(0, 0, 0))
        state.read(data=draws("a"), n=4)
        state.read(data=draws("b"), n=1)
        state.read(data=draws("c"), n=0)
        state.append(devices=["a"], shape=(0, 0, 0))
        state.over_share(data=draws("a"), extra=0, shape=(0, 0, 0))
        for _ in range(18):
            state.append(devices=["a"], shape=(0, 0, 0))
        state.reread(data=draws("a"), n=1)
        for _ in range(9):
            state.append(devices=["a"], shape=(0, 0, 0))
        state.over_share(data=draws("a"), extra=0, shape=(0, 0, 0))


def test_finding_1_the_issue_s_own_case() -> None:
    """Finding 1, as the issue saw it: 200 buffered, lease 100, drop 1, release, lease 10,
    drop 1 must leave 198 readable."""
    with replaying() as state:
        for _ in range(10):
            state.append(devices=["a"] * 20, shape=(0, 0, 0))
        state.read(data=draws("a"), n=100)
        state.over_share(data=draws("a"), extra=0, shape=(0, 0, 0))
        state.reread(data=draws("a"), n=10)
        state.over_share(data=draws("a"), extra=0, shape=(0, 0, 0))


# Findings of the compact rule (issue 33).


def test_a_split_summary_fifo_holds_summaries_appended_after_the_split() -> None:
    """Summaries a compaction appends to a level FIFO split by a live-first drain stand for
    old readings: a live read holds them until the backlog is delivered."""
    with replaying() as state:
        state.append_series(count=3, devices=["a"])
        state.compact(steps=1)
        state.append(
            devices=["a", "a", "a", "a", "a", "c", "d-with-a-longer-name"], shape=(0, 0, 0)
        )
        state.over_budget(devices=["b"], shape=(0, 0, 0), slack=0)
        state.fail_dead_letters(
            data=draws("d-with-a-longer-name"), error=lmdb.Error, n=1, write=None
        )
        state.over_share(data=draws("a"), extra=0, shape=(0, 0, 17))
        state.append_series(count=173, devices=["a", "c", "c"])
        state.read(data=draws("a"), n=1)
        state.append_series(count=100, devices=["b", "d-with-a-longer-name"])
        state.compact(steps=8)
        state.reread(data=draws("d-with-a-longer-name"), n=1)
        state.over_budget(devices=["a", "a", "c"], shape=(0, 0, 0), slack=0)
        state.finish(data=draws("a"), dead=False)
        state.split()
        state.append_series(count=4, devices=["a", "a", "d-with-a-longer-name"])
        state.deliver(data=draws("a"), dead=False, n=1)
        state.append_series(count=1, devices=["b"])
        state.fail_compact(error=lmdb.Error, txn=0, write=0)
        state.deliver_live(data=draws("d-with-a-longer-name\x1e1"), n=1)


def test_readings_are_never_admitted_to_a_summary_fifo() -> None:
    """The model admits readings to raw FIFOs only, as ingest does; a crash after a step
    keeps the statistics exact."""
    with replaying() as state:
        state.append_series(count=3, devices=["a"])
        state.compact(steps=1)
        state.over_share(data=draws("a\x1e1"), extra=0, shape=(0, 0, 0))
        state.crash()
