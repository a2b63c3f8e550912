"""A standby's replica in the cases that broke it once (gateway/buffer/replica.py).

Each test drives a primary buffer and a standby's replica by hand, as the replication shipper
and follower do, into one case a review found, and checks what the model machine checks
(tests/unit/buffer/test_buffer_model.py `ReplicaMachine`): the replica holds every reading the
primary holds undelivered, none the primary no longer holds, and its accounting matches what
it reads, also once reopened as a takeover opens it.
"""

from __future__ import annotations

import contextlib
from collections import deque
from typing import TYPE_CHECKING

import pytest

from gateway.buffer import checkpoint, transaction
from gateway.buffer.core.admission import Rules
from gateway.buffer.replica import ReplicaGapError
from gateway.buffer.store import DEFAULT_LANE, Buffer
from gateway.replication import roles
from gateway.replication.protocol import TERM_NOTE
from tests.unit.buffer.checks import assert_counts_match, reading
from tests.unit.buffer.test_buffer_model import COMPACTING, sealing

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

MIB = 1 << 20


class Pair:
    """A primary and its standby's replica, and the wire between them."""

    def __init__(self, root: Path, capacity: int = MIB) -> None:
        self.root, self.capacity = root, capacity
        self.wire: deque[tuple[str, int, bytes]] = deque()
        self.delivered: set[bytes] = set()
        self.clock = 0
        self.primary = self._primary()
        self.standby = self._standby()

    def _primary(self) -> Buffer:
        buffer = Buffer(self.root / "primary", self.capacity)
        buffer.ship_moves()
        buffer.on_journal = lambda record, value: self.wire.append(("record", record, value))
        return buffer

    def _standby(self) -> Buffer:
        buffer = Buffer(self.root / "standby", self.capacity)
        buffer.follow()
        return buffer

    def admit(self, devices: list[str]) -> None:
        items = []
        for device in devices:
            self.clock += 1
            items.append((device, reading(device, self.clock), DEFAULT_LANE))
        self.primary.admit(items, Rules(budget_bytes=self.primary.budget_bytes))

    def deliver(self, device: str, n: int) -> None:
        for span in self.primary.read([(device, n)]):
            self.primary.delete([(span.device, span.first_seq, len(span.values))])
            self.delivered.update(span.values)

    def ship_states(self) -> None:
        moved = self.primary.unshipped_states()
        if moved is not None:
            self.wire.append(("states", *moved))

    def apply_wire(self) -> None:
        while self.wire:
            kind, after, value = self.wire.popleft()
            if kind == "record":
                self.standby.apply_replicated(after, value)
            else:
                self.standby.apply_replicated_states(after, value)

    def catch_up(self) -> None:
        """As the shipper answers a hello: the journal from there, then every FIFO's state."""
        self.wire.clear()
        records = self.primary.journal_since(self.standby.last_record() + 1, 1 << 30)
        assert records is not None, "the journal should still hold them"
        for number, value in records:
            assert self.standby.apply_replicated(number, value)
        every = self.primary.unshipped_states(every=True)
        assert every is not None
        self.standby.apply_replicated_states(*every, complete=True)

    def crash_primary(self) -> None:
        self.primary.abandon()
        self.primary = self._primary()

    def crash_standby(self) -> None:
        self.standby.abandon()
        self.standby = self._standby()

    def assert_replica_holds_what_is_undelivered(self) -> None:
        """The replica as it runs, then as a takeover opens it."""
        self._check(self.standby)
        self.standby.close()
        reopened = Buffer(self.root / "standby", self.capacity)
        try:
            self._check(reopened)
        finally:
            reopened.close()
            self.standby = self._standby()

    def _check(self, replica: Buffer) -> None:
        primary = self.primary.devices()
        for fifo, state in primary.items():
            mine = self.primary.readings_of(fifo) if state.readings else []
            theirs = replica.readings_of(fifo)
            assert mine[len(mine) - len(theirs) :] == theirs, fifo
            assert all(v in self.delivered for v in mine[: len(mine) - len(theirs)]), fifo
        for fifo, state in replica.devices().items():
            assert not state.readings or fifo in primary, fifo
        assert_counts_match(replica)

    def close(self) -> None:
        for buffer in (self.primary, self.standby):
            with contextlib.suppress(Exception):
                buffer.close()


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    saved = checkpoint.CHECKPOINT_INTERVAL_S
    checkpoint.CHECKPOINT_INTERVAL_S = 1e9
    made = Pair(tmp_path)
    yield made
    made.close()
    checkpoint.CHECKPOINT_INTERVAL_S = saved


@pytest.fixture
def few_idle_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Idle FIFOs are forgotten at a handful of entries, not at 10,000."""
    monkeypatch.setattr(transaction, "PRUNE_FLOOR_ENTRIES", 4)
    monkeypatch.setattr(checkpoint, "PRUNE_FLOOR_ENTRIES", 4)


@pytest.mark.parametrize("seal", [False, True])
def test_a_restarted_primary_delivering_again_never_moves_the_replicas_head_back(
    pair: Pair, *, seal: bool
) -> None:
    """Its replay after a crash too: a seal may have taken the readings behind the head."""
    pair.admit(["x"] * 10)
    pair.apply_wire()
    pair.deliver("x", 5)
    pair.ship_states()
    pair.apply_wire()
    with sealing() if seal else contextlib.nullcontext():
        pair.standby.checkpoint()
    pair.crash_primary()  # the delivery was in no record: the primary has x from 0 again
    pair.deliver("x", 2)
    pair.admit(["y"])  # carries x at head 2, behind the replica's 5
    pair.apply_wire()
    assert pair.standby.devices()["x"].head == 5
    pair.crash_standby()
    assert pair.standby.devices()["x"].head == 5
    pair.catch_up()
    pair.assert_replica_holds_what_is_undelivered()


@pytest.mark.usefixtures("few_idle_entries")
def test_fifos_the_primary_forgot_are_emptied_on_a_replica_that_missed_their_deliveries(
    pair: Pair,
) -> None:
    devices = [f"d{i}" for i in range(12)]
    pair.admit(devices)
    pair.apply_wire()
    pair.standby.checkpoint()
    for device in devices:
        pair.deliver(device, 1)
    pair.ship_states()
    pair.apply_wire()
    pair.crash_standby()  # before its checkpoint: the deliveries are lost to it
    assert pair.standby.totals().readings == len(devices)
    checkpoint.CHECKPOINT_INTERVAL_S = 0.0
    pair.primary.checkpoint()
    pair.primary.maintain()
    checkpoint.CHECKPOINT_INTERVAL_S = 1e9
    assert not pair.primary.devices()  # forgotten: no record says so
    pair.catch_up()
    assert pair.standby.totals().readings == 0
    pair.assert_replica_holds_what_is_undelivered()


def test_delivered_records_the_standby_lacks_stay_in_the_journal_for_its_catch_up(
    pair: Pair,
) -> None:
    pair.admit(["a"])
    pair.apply_wire()
    pair.primary.keep_journal_from(pair.standby.last_record() + 1)
    for device in ("b", "c", "d"):
        pair.admit([device])
    pair.wire.clear()  # lost on the way
    pair.deliver("c", 1)  # record 2 holds nothing buffered any more
    pair.primary.checkpoint()
    records = pair.primary.journal_since(1, 1 << 30)
    assert records is not None
    assert [number for number, _ in records] == [1, 2, 3]
    pair.catch_up()
    pair.assert_replica_holds_what_is_undelivered()
    # Once a seal took them, they go, and the journal is bounded again.
    with sealing():
        pair.primary.checkpoint()
    assert pair.primary.journal_since(1, 1 << 30) is None


def test_without_a_standby_delivered_records_leave_the_journal(pair: Pair) -> None:
    for device in ("a", "b"):
        pair.admit([device])
    pair.deliver("a", 1)
    pair.primary.checkpoint()
    assert pair.primary.journal_since(0, 1 << 30) is None  # a hole: record 0 is gone


@pytest.mark.usefixtures("few_idle_entries")
def test_a_fifo_a_commit_empties_and_forgets_is_carried_empty(pair: Pair) -> None:
    """A compaction step that summarises a device's last readings and forgets its FIFO in
    one transaction: the replica (and the primary's own restart) must not bring them back."""
    idle = [f"idle{i}" for i in range(8)]
    pair.admit([*idle, "x", "x", "x"])
    for device in idle:
        pair.deliver(device, 1)
    pair.ship_states()
    pair.apply_wire()
    rules = Rules(budget_bytes=1 << 40, default_lane=COMPACTING)
    for _ in range(200):
        done = pair.primary.compact(rules, force=True)
        if done is not None and done.summarised:
            break
    assert pair.primary.devices().get("x") is None or not pair.primary.devices()["x"].readings
    pair.apply_wire()
    assert not pair.standby.devices().get("x") or not pair.standby.devices()["x"].readings
    pair.assert_replica_holds_what_is_undelivered()
    pair.crash_primary()
    state = pair.primary.devices().get("x")
    assert state is None or not state.readings


def test_a_gap_changes_nothing_and_a_copy_of_an_applied_record_is_ignored(pair: Pair) -> None:
    pair.admit(["a"])
    pair.admit(["b"])
    (_, first, one), (_, second, two) = pair.wire
    with pytest.raises(ReplicaGapError):
        pair.standby.apply_replicated(second, two)
    assert pair.standby.last_record() == -1
    assert pair.standby.apply_replicated(first, one)
    assert not pair.standby.apply_replicated(first, one)
    assert pair.standby.apply_replicated(second, two)
    assert pair.standby.totals().readings == 2


@pytest.mark.parametrize(
    "value",
    [b"", b"\x00", b"\x00\x00\x00\x00", b"\x00" * 40, bytes(range(256))],
)
def test_a_shipped_record_that_is_not_one_changes_nothing(pair: Pair, value: bytes) -> None:
    with pytest.raises((ValueError, *checkpoint.DECODE_ERRORS)):
        pair.standby.apply_replicated(0, value)
    assert pair.standby.last_record() == -1
    assert pair.standby.totals().readings == 0


def test_a_chunk_of_states_carrying_appends_is_refused(pair: Pair) -> None:
    pair.admit(["a"])
    (_, number, value) = pair.wire.popleft()
    pair.standby.apply_replicated(number, value)
    pair.admit(["a"])
    (_, _, appends) = pair.wire.popleft()
    with pytest.raises(ValueError, match="carries appends"):
        pair.standby.apply_replicated_states(number, appends)
    assert pair.standby.totals().readings == 1


def test_a_buffer_without_fsync_per_commit_serves_each_start_under_a_new_term(
    tmp_path: Path,
) -> None:
    """A power cut may have lost records its standby has; their numbers must not be reused
    under the term the standby knows."""
    with Buffer(tmp_path, MIB, "none") as buffer:
        first = roles.primary_term(buffer, took_over=False, fresh=True)
        again = roles.primary_term(buffer, took_over=False, fresh=True)
        kept = roles.primary_term(buffer, took_over=False)
        assert first.term != again.term
        assert kept.term == again.term == buffer.notes(TERM_NOTE)[TERM_NOTE]
        assert (first.epoch, again.epoch) == (0, 0)
        assert roles.primary_term(buffer, took_over=True).epoch == 1
