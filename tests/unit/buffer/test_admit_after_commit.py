"""A failure after the journal commit: `admit` reports what it stored and the buffer goes on.

The journal commit is `admit`'s point of no return. What follows it (the ledger, the decoded
chunk cache, the latest values, a due checkpoint that may seal) must not raise out of `admit`:
a caller that saw an exception would take stored readings for unstored ones and store them again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from gateway.buffer import checkpoint
from gateway.buffer.core.admission import Lane, Rules
from gateway.buffer.store import Buffer
from gateway.errors import StorageError
from gateway.points.model import Reading
from gateway.points.record import pack
from tests.points import unpack

if TYPE_CHECKING:
    from pathlib import Path

MIB = 1 << 20


def items(device: str, first: int, n: int) -> list[tuple[str, bytes, Lane]]:
    return [
        (device, pack(Reading(device, "m", (("device", device),), (("v", float(ts)),), ts)), Lane())
        for ts in range(first, first + n)
    ]


def timestamps(buf: Buffer, device: str) -> list[int]:
    return [unpack(device, v).ts_ns for v in buf.readings_of(device)]


def damaged(*_args: object, **_kwargs: object) -> None:
    """Stands for a seal meeting a damaged chunk: LMDB has no checksums, SD cards rot."""
    raise ValueError("damaged chunk")


def test_a_checkpoint_raising_after_the_commit_leaves_the_admission_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The readings are stored and reported once; the failed checkpoint is retried later."""
    caplog.errors_expected = True  # type: ignore[attr-defined]
    monkeypatch.setattr(checkpoint, "CHECKPOINT_INTERVAL_S", 0.0)  # due at every change
    buf = Buffer(tmp_path, 16 * MIB, sync="none")
    rules = Rules(budget_bytes=buf.budget_bytes)
    try:
        monkeypatch.setattr(buf._checkpointer, "write", damaged)
        admitted = buf.admit(items("a", 0, 5), rules)
        assert admitted.stored == 5
        assert buf.totals().readings == 5
        assert buf.after_commit_failures == 1
        assert timestamps(buf, "a") == [0, 1, 2, 3, 4]
        again = buf.admit(items("a", 5, 5), rules)
        assert again.stored == 5
        assert buf.after_commit_failures == 2  # counted each time, logged once
        logged = [r for r in caplog.records if "after the journal commit" in r.getMessage()]
        assert len(logged) == 1

        monkeypatch.delattr(buf._checkpointer, "write")  # the chunk is readable again
        checkpoints = buf.checkpoints
        buf.admit(items("a", 10, 1), rules)
        assert buf.checkpoints == checkpoints + 1  # retried with the next change
        assert "succeed again" in caplog.text
    finally:
        buf.close()
    with Buffer(tmp_path, 16 * MIB, sync="none") as reopened:
        assert reopened.totals().readings == 11
        assert timestamps(reopened, "a") == list(range(11))


def test_latest_values_failing_after_the_commit_leave_the_admission_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A failure to note the latest values costs the latest values only, never the readings."""
    caplog.errors_expected = True  # type: ignore[attr-defined]
    with Buffer(tmp_path, 16 * MIB, sync="none") as buf:
        assert buf.latest is not None
        monkeypatch.setattr(buf.latest, "note", damaged)
        admitted = buf.admit(items("a", 0, 3), Rules(budget_bytes=buf.budget_bytes))
        assert admitted.stored == 3
        assert buf.totals().readings == 3
        assert buf.after_commit_failures == 1
        assert timestamps(buf, "a") == [0, 1, 2]


def test_a_committed_change_the_ledger_cannot_take_is_a_storage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not an admission bug (the caller would store it again): the journal keeps it for a reopen."""
    buf = Buffer(tmp_path, 16 * MIB, sync="none")
    monkeypatch.setattr(buf, "_adopt", damaged)
    with pytest.raises(StorageError, match="could not be accounted"):
        buf.admit(items("a", 0, 4), Rules(budget_bytes=buf.budget_bytes))
    buf.abandon()
    with Buffer(tmp_path, 16 * MIB, sync="none") as reopened:
        assert timestamps(reopened, "a") == [0, 1, 2, 3]
