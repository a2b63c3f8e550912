"""Admission inside the real buffer: random admits, flushes in flight, deliveries and restarts.

The model knows each FIFO's readings and how many of them the flusher holds (leased). After
every step the buffer must agree with the model on what is left, and the drops must be what the
policies allow: never a leased reading, never a critical or a reject lane's reading, only the
oldest ones, and the fill never above the high watermark.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import deque
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from gateway.buffer.core.admission import Lane, Policy, Rules
from gateway.buffer.core.ledger import fifo_name
from gateway.buffer.store import Buffer
from gateway.errors import CapacityError
from gateway.points.model import Reading
from gateway.points.record import pack

LANES = {
    "default": Lane("default", Policy.DROP_OLDEST),
    "tele": Lane("tele", Policy.SHED, priority=1),
    "status": Lane("status", Policy.SHED, priority=5),
    "alarm": Lane("alarm", Policy.SHED, priority=9, critical=True),
    "strict": Lane("strict", Policy.REJECT),
}
RULES = Rules(
    budget_bytes=4000,
    high=0.9,
    low=0.8,
    device_share=0.4,
    max_devices=8,
    lanes=LANES,
    default_lane=LANES["default"],
)
DEVICES = ("a", "b", "c")
FIFOS = tuple(fifo_name(d, c) for d in DEVICES for c in LANES)
KEY_BYTES = 12


def stored_values(buffer: Buffer) -> dict[str, list[bytes]]:
    """Every FIFO's readings in order, read without leasing them."""
    found = {fifo: buffer.readings_of(fifo) for fifo in buffer.devices()}
    return {fifo: values for fifo, values in found.items() if values}


class AdmissionMachine(RuleBasedStateMachine):
    """The buffer against a model of FIFOs with leased prefixes."""

    def __init__(self) -> None:
        super().__init__()
        self.path = Path(tempfile.mkdtemp(prefix="buffer-admission-"))
        self.buffer = Buffer(self.path, 1 << 20)
        self.model: dict[str, deque[bytes]] = {f: deque() for f in FIFOS}
        self.leased: dict[str, int] = dict.fromkeys(FIFOS, 0)
        self.clock = 0
        self.dropped_total = 0
        self.paused = 0

    def teardown(self) -> None:
        self.buffer.close()
        shutil.rmtree(self.path)

    @rule(
        batch=st.lists(
            st.tuples(st.sampled_from(DEVICES), st.sampled_from(list(LANES)), st.integers(0, 120)),
            min_size=1,
            max_size=12,
        )
    )
    def admit(self, batch: list[tuple[str, str, int]]) -> None:
        items = []
        for device, device_class, padding in batch:
            self.clock += 1
            reading = Reading(
                device, "m", (("device", device),), (("v", self.clock), ("p", "x" * padding)), 1
            )
            items.append((fifo_name(device, device_class), pack(reading), LANES[device_class]))
        before = stored_values(self.buffer)
        try:
            admitted = self.buffer.admit(items, RULES)
        except CapacityError:
            self.paused += 1
            assert stored_values(self.buffer) == before  # nothing of a paused batch stays
            return
        after = stored_values(self.buffer)
        assert admitted.stored + sum(admitted.refused.values()) == len(items)
        dropped = 0
        for fifo in FIFOS:
            old = list(self.model[fifo])
            held = self.leased[fifo]
            now = after.get(fifo, [])
            new = [value for f, value, _ in items if f == fifo]
            # The leased prefix is untouched; what follows is a suffix of the rest of the old
            # readings and the new ones, so only the oldest unleased readings were dropped.
            assert now[:held] == old[:held]
            rest = old[held:] + new
            tail = now[held:]
            kept = [v for v in rest if v in set(tail)]
            assert kept == tail
            first_kept = rest.index(tail[0]) if tail else len(rest)
            lost_old = [v for v in rest[:first_kept] if v in set(old)]
            if LANES[fifo.partition("\x1f")[2] or "default"].critical or fifo.endswith("strict"):
                assert not lost_old
            dropped += len(old) - held - sum(1 for v in tail if v in set(old))
            dropped += sum(1 for v in rest[:first_kept] if v in set(new))
            self.model[fifo] = deque(now)
        stored_and_kept = sum(len(v) for v in after.values())
        assert stored_and_kept == sum(len(v) for v in before.values()) + admitted.stored - sum(
            admitted.dropped.values()
        )
        self.dropped_total += sum(admitted.dropped.values())

    @rule(fifo=st.sampled_from(FIFOS), n=st.integers(1, 6))
    def lease(self, fifo: str, n: int) -> None:
        """The flusher reads a batch: those readings are in flight."""
        if self.leased[fifo]:
            return  # one batch per FIFO at a time, as the flusher does
        spans = self.buffer.read([(fifo, n)])
        values = [v for s in spans for v in s.values]
        assert values == list(self.model[fifo])[: len(values)]
        self.leased[fifo] = len(values)

    @precondition(lambda self: any(self.leased.values()))
    @rule(data=st.data(), delivered=st.booleans())
    def finish(self, data: st.DataObject, delivered: bool) -> None:
        """A batch in flight lands (and is deleted) or fails (and is released)."""
        fifo = data.draw(st.sampled_from([f for f, n in self.leased.items() if n]))
        n = self.leased[fifo]
        if delivered:
            head = self.buffer.devices()[fifo].head
            assert self.buffer.delete([(fifo, head, n)]) == n
            for _ in range(n):
                self.model[fifo].popleft()
        else:
            self.buffer.release([fifo])
        self.leased[fifo] = 0

    @rule()
    def reopen(self) -> None:
        """A restart: the accounting survives, the leases (in memory) do not."""
        self.buffer.close()
        self.buffer = Buffer(self.path, 1 << 20)
        self.leased = dict.fromkeys(FIFOS, 0)

    @invariant()
    def buffer_matches_model(self) -> None:
        totals = self.buffer.totals()
        assert totals.readings == sum(len(q) for q in self.model.values())
        assert totals.nbytes == sum(KEY_BYTES + len(v) for q in self.model.values() for v in q)
        assert totals.nbytes <= RULES.high_bytes
        assert totals.devices == sum(1 for q in self.model.values() if q) <= RULES.max_devices
        for fifo, state in self.buffer.devices().items():
            if not LANES[fifo.partition("\x1f")[2] or "default"].critical:
                assert state.nbytes <= (RULES.share_bytes or 0)

    @invariant()
    def full_scan_agrees(self) -> None:
        assert self.buffer.verify().is_consistent


TestAdmission = AdmissionMachine.TestCase
TestAdmission.settings = settings(max_examples=80, stateful_step_count=40, deadline=None)
