"""The checkpoint's order on disk: journal, store, store flushed, then journal deletions."""

from __future__ import annotations

from typing import TYPE_CHECKING

import lmdb
import pytest

from gateway.buffer import checkpoint
from gateway.buffer.core.ledger import U64
from gateway.buffer.store import Buffer
from gateway.points.model import Reading
from gateway.points.record import pack

if TYPE_CHECKING:
    from pathlib import Path

MIB = 1 << 20


def reading(device: str, ts: int) -> bytes:
    return pack(Reading(device, "m", (("device", device),), (("v", float(ts)),), ts))


class _Recorder:
    """An LMDB environment that notes its flushes and write transactions in a shared log."""

    def __init__(self, env: lmdb.Environment, name: str, log: list[str]) -> None:
        self.env, self.name, self.log = env, name, log

    def sync(self, force: bool = False) -> None:
        self.log.append(f"{self.name}.sync")
        self.env.sync(force)

    def begin(self, *, write: bool = False, **kwargs: object) -> lmdb.Transaction:
        if write:
            self.log.append(f"{self.name}.write")
        return self.env.begin(write=write, **kwargs)

    def __getattr__(self, name: str) -> object:
        return getattr(self.env, name)


@pytest.mark.parametrize("mode", ["interval", "none"])
def test_without_sync_per_commit_the_store_is_flushed_before_journal_deletions(
    tmp_path: Path, mode: str
) -> None:
    """A power cut can never keep a journal deletion and lose the checkpoint behind it."""
    buf = Buffer(tmp_path, 16 * MIB, sync=mode)  # type: ignore[arg-type]
    for ts in range(20):
        buf.append([("a", reading("a", ts + 1)), ("b", reading("b", ts + 1))])
    spans = buf.read([("a", 20), ("b", 20)])
    buf.delete([(s.device, s.first_seq, len(s.values)) for s in spans])
    log: list[str] = []
    checkpointer = buf._checkpointer
    checkpointer._env = _Recorder(checkpointer._env, "store", log)
    checkpointer._journal = _Recorder(checkpointer._journal, "journal", log)
    buf.checkpoint()
    assert log == ["journal.sync", "store.write", "store.sync", "journal.write"]
    buf.close()


def test_in_commit_mode_a_checkpoint_adds_no_flush(tmp_path: Path) -> None:
    """Every commit is durable already: the checkpoint flushes nothing more."""
    buf = Buffer(tmp_path, 16 * MIB)
    buf.append([("a", reading("a", 1))])
    spans = buf.read([("a", 1)])
    buf.delete([("a", spans[0].first_seq, 1)])
    log: list[str] = []
    checkpointer = buf._checkpointer
    checkpointer._env = _Recorder(checkpointer._env, "store", log)
    checkpointer._journal = _Recorder(checkpointer._journal, "journal", log)
    buf.checkpoint()
    assert log == ["store.write", "journal.write"]
    buf.close()


def test_a_store_ahead_of_its_journal_is_repaired_at_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Journal records lost under a kept checkpoint: the start repairs instead of wedging."""
    caplog.errors_expected = True  # type: ignore[attr-defined]
    saved = checkpoint.CHECKPOINT_INTERVAL_S
    checkpoint.CHECKPOINT_INTERVAL_S = 1e9
    try:
        buf = Buffer(tmp_path, 16 * MIB)
        for ts in range(10):
            buf.append([("a", reading("a", ts + 1))])
        buf.append([("b", reading("b", 100))])
        buf.checkpoint()  # the store counts 11 readings in journal records 0 to 10
        buf.close()
        env = lmdb.open(str(tmp_path / "journal.mdb"), subdir=False)
        with env.begin(write=True) as txn:
            txn.delete(U64.pack(10))  # the record holding b's one reading is gone
        env.close()
        buf = Buffer(tmp_path, 16 * MIB)
        assert "did not match its data" in caplog.text
        assert buf.totals().readings == 10
        assert buf.verify().is_consistent
        spans = buf.read([("a", 100), ("b", 100)])
        assert [len(s.values) for s in spans] == [10]
        buf.append([("b", reading("b", 101))])
        assert len(buf.readings_of("b")) == 1
        buf.close()
    finally:
        checkpoint.CHECKPOINT_INTERVAL_S = saved
