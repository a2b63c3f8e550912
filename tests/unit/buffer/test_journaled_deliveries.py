"""Deliveries and drops reach the disk with the next group commit's journal record.

A kill -9 (`abandon`) then brings back only what was taken out after the last group commit (or
checkpoint): never readings delivered or dropped before it.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from gateway.buffer import checkpoint
from gateway.buffer.core.admission import Lane, Policy, Rules
from gateway.buffer.core.chunk import (
    Segment,
    encode_journal,
    journal_contents,
    journal_header,
)
from gateway.buffer.store import Buffer
from gateway.points.model import Reading
from gateway.points.record import pack

if TYPE_CHECKING:
    from collections.abc import Iterator

import pytest

MIB = 1 << 20
DEVICES = ("a", "b", "c")
DROPPING = Lane(policy=Policy.DROP_OLDEST)


def rec(device: str, ts: int) -> tuple[str, bytes]:
    return device, pack(Reading(device, "m", (("device", device),), (("v", ts),), ts))


@pytest.fixture
def no_timed_checkpoints() -> Iterator[None]:
    """Checkpoints only when a test asks (or the buffer closes)."""
    saved = checkpoint.CHECKPOINT_INTERVAL_S
    checkpoint.CHECKPOINT_INTERVAL_S = 1e9
    yield
    checkpoint.CHECKPOINT_INTERVAL_S = saved


@pytest.mark.usefixtures("no_timed_checkpoints")
def test_delivered_readings_do_not_come_back_after_kill(tmp_path: Path) -> None:
    """Readings delivered before a group commit stay delivered across kill -9."""
    buf = Buffer(tmp_path, 16 * MIB)
    buf.checkpoint()
    first = [rec("a", ts) for ts in range(1, 11)] + [rec("b", ts) for ts in range(1, 6)]
    buf.append(first)
    spans = buf.read([("a", 7), ("b", 5)])
    assert buf.delete([(s.device, s.first_seq, len(s.values)) for s in spans]) == 12
    buf.append([rec("c", 100)])  # a group commit: carries a's and b's states
    checkpoints = buf.checkpoints
    buf.abandon()
    assert checkpoints == 1, "no checkpoint wrote the deliveries"

    buf = Buffer(tmp_path, 16 * MIB)
    try:
        assert buf.readings_of("a") == [v for _, v in first[7:10]]
        assert buf.readings_of("b") == []
        assert buf.totals().readings == 4
        assert buf.verify().is_consistent
        # The head moved past the first journal record's segments: nothing reads them again.
        assert [s.first_seq for s in buf.read([("a", 10)])] == [7]
    finally:
        buf.close()


@pytest.mark.usefixtures("no_timed_checkpoints")
def test_deliveries_after_the_last_commit_come_back(tmp_path: Path) -> None:
    """What was delivered after the last group commit is buffered again (delivered twice)."""
    buf = Buffer(tmp_path, 16 * MIB)
    items = [rec("a", ts) for ts in range(1, 6)]
    buf.append(items)
    (span,) = buf.read([("a", 3)])
    buf.delete([("a", span.first_seq, 3)])
    buf.abandon()
    buf = Buffer(tmp_path, 16 * MIB)
    try:
        assert buf.readings_of("a") == [v for _, v in items]
    finally:
        buf.close()


def test_journal_record_carries_states_behind_a_flag() -> None:
    """States ride in the record's frame; records without them read as before."""
    state = (3, 10, 20, 9, 900, 5, 12, 13, 77)
    with_states = encode_journal([Segment(3, 19, 1, 100, 9)], [[b"r"]], [], [], [state])
    segments, groups, states = journal_contents(with_states)
    assert (segments, groups, states) == ([Segment(3, 19, 1, 100, 9)], [[b"r"]], [state])
    assert journal_header(with_states).has_states
    plain = encode_journal([Segment(3, 19, 1, 100, 9)], [[b"r"]])
    assert journal_contents(plain)[2] == []
    assert not journal_header(plain).has_states


class CrashMachine(RuleBasedStateMachine):
    """After any appends, reads, deliveries, drops and checkpoints, a crash brings back exactly
    what was buffered at the last group commit or checkpoint, whichever came last."""

    def __init__(self) -> None:
        super().__init__()
        self.path = Path(tempfile.mkdtemp(prefix="journaled-"))
        self.saved = (checkpoint.CHECKPOINT_INTERVAL_S, checkpoint.SEAL_READINGS)
        checkpoint.CHECKPOINT_INTERVAL_S = 1e9
        checkpoint.SEAL_READINGS = 40
        self.buffer = Buffer(self.path, MIB)
        self.model: dict[str, deque[bytes]] = {d: deque() for d in DEVICES}
        # The model as the disk has it: after the last journal record or checkpoint.
        self.durable = {d: list(q) for d, q in self.model.items()}
        self.checkpoints = self.buffer.checkpoints
        self.clock = 0

    def teardown(self) -> None:
        self.buffer.close()
        shutil.rmtree(self.path)
        checkpoint.CHECKPOINT_INTERVAL_S, checkpoint.SEAL_READINGS = self.saved

    def _made_durable(self, *, committed: bool) -> None:
        if committed or self.buffer.checkpoints != self.checkpoints:
            self.checkpoints = self.buffer.checkpoints
            self.durable = {d: list(q) for d, q in self.model.items()}

    def _items(self, devices: list[str]) -> list[tuple[str, bytes]]:
        items = []
        for device in devices:
            self.clock += 1
            items.append(rec(device, self.clock))
        return items

    @rule(devices=st.lists(st.sampled_from(DEVICES), min_size=1, max_size=6))
    def append(self, devices: list[str]) -> None:
        """A group commit."""
        items = self._items(devices)
        self.buffer.append(items)
        for device, value in items:
            self.model[device].append(value)
        self._made_durable(committed=True)

    @rule(device=st.sampled_from(DEVICES), n=st.integers(1, 8))
    def deliver(self, device: str, n: int) -> None:
        """A delivered batch: taken out in memory, on disk with the next commit."""
        spans = self.buffer.read([(device, n)])
        if spans:
            count = len(spans[0].values)
            assert self.buffer.delete([(device, spans[0].first_seq, count)]) == count
            for _ in range(count):
                self.model[device].popleft()
        self._made_durable(committed=False)

    @rule(device=st.sampled_from(DEVICES), n=st.integers(1, 4), store=st.booleans())
    def drop(self, device: str, n: int, store: bool) -> None:
        """Admission drops a device's oldest readings to store others (or stores nothing)."""
        budget = self.buffer.budget_bytes
        share = max(1e-6, (self.buffer.devices().get(device) or _empty()).nbytes / budget)
        items = self._items([device] * n) if store else []
        rules = Rules(budget_bytes=budget, device_share=share * 0.5, default_lane=DROPPING)
        admitted = self.buffer.admit([(d, v, DROPPING) for d, v in items], rules)
        for _, _, _, value in admitted.placed:
            self.model[device].append(value)
        for _ in range(sum(admitted.dropped.values())):
            self.model[device].popleft()
        assert self.buffer.readings_of(device) == list(self.model[device])
        self._made_durable(committed=admitted.stored > 0)

    @rule()
    def save(self) -> None:
        """A checkpoint."""
        self.buffer.checkpoint()
        self._made_durable(committed=False)

    @rule()
    def crash(self) -> None:
        """kill -9 and reopen."""
        self.buffer.abandon()
        self.buffer = Buffer(self.path, MIB)
        for device in DEVICES:
            assert self.buffer.readings_of(device) == self.durable[device]
        self.model = {d: deque(v) for d, v in self.durable.items()}
        self.checkpoints = self.buffer.checkpoints

    @invariant()
    def accounting_agrees(self) -> None:
        totals = self.buffer.totals()
        assert totals.readings == sum(len(q) for q in self.model.values())
        assert self.buffer.verify().is_consistent


def _empty() -> object:
    class _State:
        nbytes = 0

    return _State()


TestCrashMachine = CrashMachine.TestCase
TestCrashMachine.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)
