"""Admission carried out: one buffer transaction storing, refusing and dropping readings.

The decisions come from gateway/buffer/core/admission.py; this applies them to a `FifoTransaction`,
so the drops commit together with the stores they made room for. Readings leased to the flusher (on
their way to the database) are never dropped.
"""

from __future__ import annotations

from itertools import count as count_from
from itertools import repeat
from typing import TYPE_CHECKING

from gateway.buffer.core.admission import (
    DEVICE_SHARE,
    Candidate,
    Fifo,
    Lane,
    Rules,
    Verdict,
    decide,
    drop_reason,
    victim,
    when_no_room,
)
from gateway.buffer.core.chunk import READING_OVERHEAD, reading_bytes
from gateway.buffer.core.ledger import LEVEL_SEPARATOR, Admitted, fifo_class
from gateway.buffer.reads import lease_of
from gateway.errors import CapacityError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from gateway.buffer.transaction import FifoTransaction


class Admitter:
    """Admits readings into one transaction; see the module docstring."""

    def __init__(
        self,
        w: FifoTransaction,
        rules: Rules,
        leases: Mapping[str, tuple[int, int]],
        live_from: Mapping[str, int] | None = None,
        live_leases: Mapping[str, tuple[int, int]] | None = None,
    ) -> None:
        """`leases`: FIFO -> (first sequence after the leased readings, leased bytes).

        `live_from`: FIFO -> where the live stream of a live-first drain begins; drops take
        from the readings before it only. `live_leases`: the leases of live-stream reads, as
        `leases`: a live batch stays in flight after its split ended (its backlog delivered),
        and then its readings are the FIFO's oldest.
        """
        self._w = w
        self._rules = rules
        self._leases = leases
        self._live_from = live_from or {}
        self._live_leases = live_leases or {}
        self._admitted = Admitted()
        self._levels: int | None = None

    def _summary_fifos(self) -> int:
        """FIFOs holding summaries (gateway/buffer/compaction.py): not devices of `max_devices`.

        A compact device's summary levels would otherwise take up to as many places as its
        ladder has steps, refusing readings of a fleet no larger than the limit, even of a
        device whose raw readings were all summarised. Memory stays bounded: at most one per
        step of the ladder per device. Counted only at the limit (a pass over the FIFOs), once
        per admission, which never stores to them.
        """
        if self._levels is None:
            self._levels = sum(1 for name, _ in self._w.active_states() if LEVEL_SEPARATOR in name)
        return self._levels

    def _lease(self, fifo: str) -> tuple[int, int]:
        """(first sequence a drop may take, bytes in flight) of a FIFO, both reads counted."""
        return lease_of(fifo, self._leases, self._live_leases, self._live_from)

    def admit(self, items: Sequence[tuple[str, bytes, Lane]]) -> Admitted:
        """Admit (FIFO, packed record, lane) triples in order; returns what was done.

        Raises:
            CapacityError: a reading is to pause intake; `at_item` is its index.
        """
        w, admitted = self._w, self._admitted
        touched = w.changed
        high_bytes = self._rules.high_bytes
        unlimited_share = self._rules.share_bytes is None
        index, count = 0, len(items)
        while index < count:
            fifo = items[index][0]
            end = index + 1
            # The common case, a run of readings (a message's) for a FIFO this transaction
            # already appends to, with room below the watermark, skips the decision per
            # reading: it is most of the cost.
            state = touched.get(fifo)
            if state is not None and state.readings and unlimited_share:
                while end < count and items[end][0] == fifo:
                    end += 1
                values = [item[1] for item in items[index:end]]
                size = sum(map(len, values)) + READING_OVERHEAD * len(values)
                if w.nbytes + size <= high_bytes:
                    first = state.next
                    w.append_run(state, values, size)
                    admitted.stored += len(values)
                    admitted.placed.extend(
                        zip(repeat(fifo), repeat(state.number), count_from(first), values)
                    )
                    index = end
                    continue
            for at in range(index, end):
                if not self._admit_one(items[at]):
                    raise CapacityError(
                        f"readings budget of {self._rules.budget_bytes} bytes is at its high "
                        f"watermark ({w.nbytes} bytes buffered)",
                        at_item=at,
                    )
            index = end
        return admitted

    def _admit_one(self, item: tuple[str, bytes, Lane]) -> bool:
        """Decide one reading and carry the decision out; False when it is to pause intake."""
        w, admitted = self._w, self._admitted
        fifo, value, lane = item
        size = reading_bytes(value)
        state = w.state(fifo)
        lease_end, leased_bytes = self._lease(fifo)
        if state is None or not state.readings:
            view = Fifo(0, 0, is_new=True)
        else:
            view = Fifo(state.nbytes, state.nbytes - leased_bytes, is_new=False)
        active = w.active
        if view.is_new and active >= self._rules.max_devices:
            active -= self._summary_fifos()
        decision = decide(lane, size, fifo=view, used=w.nbytes, active=active, rules=self._rules)
        if decision.drop_own_bytes:
            count, _ = w.drop(
                fifo,
                lease_end,
                need_bytes=decision.drop_own_bytes,
                limit=self._live_from.get(fifo),
            )
            admitted.dropped[DEVICE_SHARE, lane.device_class] += count
        if decision.make_room_bytes and not self._make_room(lane, decision.make_room_bytes):
            decision = when_no_room(lane)
        if decision.verdict is Verdict.PAUSE:
            return False
        if decision.verdict is Verdict.REFUSE:
            admitted.refused[decision.reason, lane.device_class] += 1
        else:
            w.store(fifo, value, size)
            admitted.stored += 1
            state = w.changed[fifo]
            admitted.placed.append((fifo, state.number, state.next - 1, value))
        return True

    def _make_room(self, lane: Lane, need: int) -> bool:
        """Drop victims' oldest readings until `need` bytes are free; False if none are left."""
        w, rules = self._w, self._rules
        reason = drop_reason(lane)
        freed = 0
        # FIFOs that had nothing to give (their oldest readings are in flight before a live
        # stream): not chosen again in this decision.
        spent: set[str] = set()
        while freed < need:
            candidates = (
                Candidate(
                    name,
                    rules.lane(fifo_class(name)),
                    state.nbytes - self._lease(name)[1],
                )
                for name, state in w.active_states()
                if name not in spent
            )
            chosen = victim(lane, candidates)
            if chosen is None:
                return False
            lease_end = self._lease(chosen.name)[0]
            count, nbytes = w.drop(
                chosen.name,
                lease_end,
                need_bytes=need - freed,
                limit=self._live_from.get(chosen.name),
            )
            if not count:
                spent.add(chosen.name)
            self._admitted.dropped[reason, chosen.lane.device_class] += count
            freed += nbytes
        return True
