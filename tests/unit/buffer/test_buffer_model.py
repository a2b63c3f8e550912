"""The buffer against a plain model: a FIFO per device through random appends, reads, deliveries,
drops, live-first splits and live deliveries, checkpoints, sealing, clean restarts and crashes.

A crash closes the environments without the checkpoint a clean close writes, as kill -9 would:
every appended reading must come back, and deliveries and drops since the last checkpoint come
back as buffered (they are delivered again, which the design allows).
"""

from __future__ import annotations

import shutil
import tempfile
from collections import deque
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from gateway.buffer import checkpoint
from gateway.buffer.core.admission import DEVICE_SHARE, Lane, Policy, Rules
from gateway.buffer.store import Buffer
from gateway.points.model import Reading
from gateway.points.record import pack
from tests.points import unpack

DEVICES = ("a", "b", "c", "d-with-a-longer-name")
CAPACITY = 1 << 20
KEY_BYTES = 12
DROPPING = Lane(policy=Policy.DROP_OLDEST)


class BufferMachine(RuleBasedStateMachine):
    """Each rule acts on the real buffer and on a dict of deques; they must always agree."""

    def __init__(self) -> None:
        super().__init__()
        self.path = Path(tempfile.mkdtemp(prefix="buffer-model-"))
        # Small enough that runs seal the journal often; checkpoints only when a rule asks,
        # a journal seals, a dead letter moves or the buffer closes.
        self.saved = (
            checkpoint.SEAL_READINGS,
            checkpoint.SEAL_RECORDS,
            checkpoint.CHECKPOINT_INTERVAL_S,
        )
        checkpoint.SEAL_READINGS, checkpoint.SEAL_RECORDS = 24, 6
        checkpoint.CHECKPOINT_INTERVAL_S = 1e9
        self.buffer = Buffer(self.path, CAPACITY)
        self.model: dict[str, deque[bytes]] = {d: deque() for d in DEVICES}
        # Readings taken out since the last checkpoint, by device, oldest first.
        self.unsaved: dict[str, list[bytes]] = {d: [] for d in DEVICES}
        self.leased: dict[str, int] = dict.fromkeys(DEVICES, 0)
        # Split devices (a live-first drain): how many of their oldest readings are backlog.
        self.backlog: dict[str, int] = {}
        self.checkpoints_seen = 0
        self.clock = 0

    def teardown(self) -> None:
        self.buffer.close()
        shutil.rmtree(self.path)
        checkpoint.SEAL_READINGS, checkpoint.SEAL_RECORDS, checkpoint.CHECKPOINT_INTERVAL_S = (
            self.saved
        )

    def _readings(self, devices: list[str]) -> list[tuple[str, bytes]]:
        items = []
        for device in devices:
            self.clock += 1
            items.append(
                (
                    device,
                    pack(
                        Reading(
                            device, "m", (("device", device),), (("v", self.clock),), self.clock
                        )
                    ),
                )
            )
        return items

    def _take_out(self, device: str, start: int, count: int) -> None:
        queue = self.model[device]
        taken = [queue[start + i] for i in range(count)]
        for _ in range(count):
            del queue[start]
        self.unsaved[device].extend(taken)

    def _took_backlog(self, device: str, count: int) -> None:
        if device in self.backlog:
            self.backlog[device] -= count
            if not self.backlog[device]:
                del self.backlog[device]

    def _after(self) -> None:
        if self.buffer.checkpoints != self.checkpoints_seen:
            self.checkpoints_seen = self.buffer.checkpoints
            self.unsaved = {d: [] for d in DEVICES}

    @rule(devices=st.lists(st.sampled_from(DEVICES), min_size=1, max_size=8))
    def append(self, devices: list[str]) -> None:
        """One group commit of readings from several devices."""
        items = self._readings(devices)
        self.buffer.append(items)
        for device, value in items:
            self.model[device].append(value)
        self._after()

    @rule(device=st.sampled_from(DEVICES), n=st.integers(0, 10))
    def read(self, device: str, n: int) -> None:
        """Reading returns the oldest n in order, removes nothing and leases them."""
        spans = self.buffer.read([(device, n)])
        got = [v for s in spans for v in s.values]
        assert got == list(self.model[device])[: len(got)]
        reachable = self.backlog.get(device, len(self.model[device]))
        assert len(got) == min(n, reachable) or self.buffer.devices()[device].gap_end
        self.leased[device] = len(got)

    @rule(device=st.sampled_from(DEVICES), n=st.integers(1, 10), dead=st.booleans())
    def deliver(self, device: str, n: int, dead: bool) -> None:
        """A delivered (or dead-lettered) batch leaves exactly its readings."""
        spans = self.buffer.read([(device, n)])
        self.leased[device] = 0
        if not spans:
            return
        span = spans[0]
        lines = [(device, "HTTP 400", "m v=1i 1")] if dead else []
        count = len(span.values)
        assert self.buffer.delete([(device, span.first_seq, count)], lines) == count
        self._take_out(device, 0, count)
        self._took_backlog(device, count)
        self._after()

    @rule()
    def split(self) -> None:
        """A live-first drain begins: what is appended from now on goes ahead of the backlog."""
        gaps = {d for d, s in self.buffer.devices().items() if s.gap_end > s.gap_start}
        self.buffer.begin_live_first()
        for device, queue in self.model.items():
            if queue and device not in self.backlog and device not in gaps:
                self.backlog[device] = len(queue)

    @rule(device=st.sampled_from(DEVICES), n=st.integers(1, 10))
    def deliver_live(self, device: str, n: int) -> None:
        """A live batch: the oldest readings after the split, taken out of the FIFO's middle."""
        spans = self.buffer.read_live([(device, n)])
        if device not in self.backlog:
            assert spans == []
            return
        queue, first = list(self.model[device]), self.backlog[device]
        got = [v for s in spans for v in s.values]
        assert got == queue[first : first + n]
        if spans:
            assert self.buffer.delete([(device, spans[0].first_seq, len(got))]) == len(got)
            self._take_out(device, first, len(got))
        self._after()

    @rule(device=st.sampled_from(DEVICES), n=st.integers(1, 6))
    def over_share(self, device: str, n: int) -> None:
        """Readings past a device's share drop its oldest ones, never the leased ones."""
        items = self._readings([device] * n)
        share = 0.1 * self.buffer.totals().nbytes / self.buffer.budget_bytes or 0.0001
        rules = Rules(
            budget_bytes=self.buffer.budget_bytes,
            device_share=min(1.0, max(share, 0.00005)),
            default_lane=DROPPING,
        )
        admitted = self.buffer.admit([(d, v, DROPPING) for d, v in items], rules)
        # A reading is refused when dropping all that is not leased would not make room.
        assert admitted.stored + sum(admitted.refused.values()) == n
        for _, _, _, value in admitted.placed:
            self.model[device].append(value)
        dropped = admitted.dropped[DEVICE_SHARE, DROPPING.device_class]
        if device in self.backlog:
            assert not (dropped and self.leased[device]), "no second gap behind a split"
            assert dropped <= self.backlog[device], "drops stop at the split"
        self._take_out(device, self.leased[device], dropped)
        self._took_backlog(device, dropped)
        self._after()

    @rule()
    def save(self) -> None:
        """A checkpoint."""
        self.buffer.checkpoint()
        self._after()

    @rule()
    def reopen(self) -> None:
        """Closing and reopening (what a restart sees) changes nothing."""
        self.buffer.close()
        self._after()
        self.buffer = Buffer(self.path, CAPACITY)
        self.checkpoints_seen = self.buffer.checkpoints
        self.leased = dict.fromkeys(DEVICES, 0)
        self.backlog = {}  # a split lives in the running process only

    @rule()
    def crash(self) -> None:
        """kill -9: what was taken out since the last checkpoint is buffered again."""
        self.buffer.abandon()
        self.buffer = Buffer(self.path, CAPACITY)
        for device, taken in self.unsaved.items():
            self.model[device] = deque(
                sorted([*taken, *self.model[device]], key=lambda v: unpack(device, v).ts_ns)
            )
        self.unsaved = {d: [] for d in DEVICES}
        self.checkpoints_seen = self.buffer.checkpoints
        self.leased = dict.fromkeys(DEVICES, 0)
        self.backlog = {}

    @invariant()
    def accounting_matches_model(self) -> None:
        totals = self.buffer.totals()
        assert totals.readings == sum(len(q) for q in self.model.values())
        assert totals.nbytes == sum(KEY_BYTES + len(v) for q in self.model.values() for v in q)
        assert totals.devices == sum(1 for q in self.model.values() if q)
        assert self.buffer.backlog() == {
            d: self.backlog.get(d, len(q)) for d, q in self.model.items() if q
        }
        assert self.buffer.live_backlog() == {
            d: len(self.model[d]) - n for d, n in self.backlog.items() if len(self.model[d]) > n
        }
        for device, state in self.buffer.devices().items():
            queue = self.model[device]
            oldest = unpack(device, queue[0]).ts_ns if queue else 0
            assert state.oldest_ts_ns == oldest
            assert self.buffer.readings_of(device) == list(queue)

    @invariant()
    def full_scan_agrees(self) -> None:
        assert self.buffer.verify().is_consistent


TestBufferModel = BufferMachine.TestCase
TestBufferModel.settings = settings(max_examples=400, stateful_step_count=50, deadline=None)
