"""The buffer against a plain model: random append / read / deliver / reopen sequences."""

from __future__ import annotations

import shutil
import tempfile
from collections import deque
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from gateway.buffer.store import Buffer
from gateway.points.model import Reading
from gateway.points.record import pack
from tests.points import unpack

DEVICES = ("a", "b", "c", "d-with-a-longer-name")
CAPACITY = 1 << 20
KEY_BYTES = 12


class BufferMachine(RuleBasedStateMachine):
    """Each rule acts on the real buffer and on a dict of deques; they must always agree."""

    def __init__(self) -> None:
        super().__init__()
        self.path = Path(tempfile.mkdtemp(prefix="buffer-model-"))
        self.buffer = Buffer(self.path, CAPACITY)
        self.model: dict[str, deque[bytes]] = {d: deque() for d in DEVICES}
        self.clock = 0

    def teardown(self) -> None:
        self.buffer.close()
        shutil.rmtree(self.path)

    @rule(devices=st.lists(st.sampled_from(DEVICES), min_size=1, max_size=8))
    def append(self, devices: list[str]) -> None:
        """One group commit of readings from several devices."""
        items = []
        for device in devices:
            self.clock += 1
            value = pack(
                Reading(device, "m", (("device", device),), (("v", self.clock),), self.clock)
            )
            items.append((device, value))
        self.buffer.append(items)
        for device, value in items:
            self.model[device].append(value)

    @rule(device=st.sampled_from(DEVICES), n=st.integers(0, 10))
    def read(self, device: str, n: int) -> None:
        """Reading returns the oldest n in order and removes nothing."""
        spans = self.buffer.read([(device, n)])
        expected = list(self.model[device])[:n]
        assert [v for s in spans for v in s.values] == expected

    @rule(device=st.sampled_from(DEVICES), n=st.integers(1, 10), dead=st.booleans())
    def deliver(self, device: str, n: int, dead: bool) -> None:
        """A delivered (or dead-lettered) batch leaves exactly its readings."""
        spans = self.buffer.read([(device, n)])
        if not spans:
            return
        span = spans[0]
        lines = [(device, "HTTP 400", "m v=1i 1")] if dead else []
        assert self.buffer.delete([(device, span.first_seq, len(span.values))], lines) == len(
            span.values
        )
        for _ in span.values:
            self.model[device].popleft()

    @rule()
    def reopen(self) -> None:
        """Closing and reopening (what a restart sees) changes nothing."""
        self.buffer.close()
        self.buffer = Buffer(self.path, CAPACITY)

    @invariant()
    def accounting_matches_model(self) -> None:
        totals = self.buffer.totals()
        assert totals.readings == sum(len(q) for q in self.model.values())
        assert totals.nbytes == sum(KEY_BYTES + len(v) for q in self.model.values() for v in q)
        assert totals.devices == sum(1 for q in self.model.values() if q)
        assert self.buffer.backlog() == {d: len(q) for d, q in self.model.items() if q}
        for device, state in self.buffer.devices().items():
            queue = self.model[device]
            oldest = unpack(device, queue[0]).ts_ns if queue else 0
            assert state.oldest_ts_ns == oldest

    @invariant()
    def full_scan_agrees(self) -> None:
        assert self.buffer.verify().is_consistent


TestBufferModel = BufferMachine.TestCase
TestBufferModel.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
