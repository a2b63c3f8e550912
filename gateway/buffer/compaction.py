"""The compact policy carried out: one bounded step turns a run of readings into summaries.

The choice of the run is pure (gateway/buffer/core/compaction.py), and so are the summaries
(gateway/buffer/core/summary.py); this reads the run, has it summarised and writes the change
into one `FifoTransaction`: the run leaves its FIFO the way a drop takes readings (after what is
in flight, before a live-first drain's live stream, widening the one gap behind a lease), and its
summaries append to the sibling FIFO one level coarser. The store commits both in one journal
record with the next compaction number (`NEXT_NOTE`), so a crash sees all of it or none, and no
number is used twice. The coarsest level has nowhere to go: its oldest summaries are dropped.

A step reads at most `STEP_BYTES` of records (and one more), so it holds the event loop for a
few milliseconds whatever the backlog; the service calls it again and again while the fill is
past the start of compaction, until it is below the low watermark (`Compactor.due`).

`GATEWAY_FAULT_COMPACT=before_commit|after_commit:LEVEL:NTH` (fault tests only) kills the
process with SIGKILL at the NTH step that makes summaries of LEVEL, just before or just after its
commit. Unset, as in production, there is no hook.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING

from gateway.buffer.candidates import Candidates
from gateway.buffer.core.chunk import reading_bytes
from gateway.buffer.core.compaction import Choice, choose
from gateway.buffer.core.ledger import (
    U64,
    Compacted,
    fifo_class,
    level_fifo,
)
from gateway.buffer.core.summary import Ladder, summarise
from gateway.buffer.reads import lease_of
from gateway.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from gateway.buffer.core.admission import Lane, Rules
    from gateway.buffer.core.fence import Fence
    from gateway.buffer.core.ledger import DeviceState
    from gateway.buffer.reads import Reads
    from gateway.buffer.transaction import FifoTransaction

# Bytes of records one step reads at most (and a few records more): about 400 readings of
# 75 B, a few milliseconds of parsing and summarising.
STEP_BYTES = 32 << 10
# The journal note holding the next compaction number.
NEXT_NOTE = b"compact/next"
# How long a FIFO level whose run was not worth summarising (no fewer bytes after) is left
# alone, and one that had nothing to give (all in flight, or a live stream).
SPENT_NS = 60_000_000_000
EMPTY_NS = 1_000_000_000
# A step gives up after this many FIFO levels that had nothing to give, or this many devices
# looked at; the store after this many runs not worth summarising (each was read: a step's
# cost).
TRIES = 4
LOOKS = 64
RETRIES = 2
FAULT_ENV = "GATEWAY_FAULT_COMPACT"
FAULT_POINTS = ("before_commit", "after_commit")


class NoStep(Exception):
    """Nothing to take, or nothing worth taking: the caller aborts the journal transaction.

    `retry`: another FIFO may be worth it, in a new transaction. `busy`: the step looked for
    candidates and is to be called again.
    """

    def __init__(self, *, retry: bool = False, busy: bool = False) -> None:
        """Say whether trying again may find something."""
        super().__init__("retry" if retry else "busy" if busy else "nothing")
        self.retry, self.busy = retry, busy


@dataclass(slots=True)
class Step:
    """A step ready to commit: what it did, its journal note, and the level it made."""

    compacted: Compacted
    notes: list[tuple[bytes, bytes]]
    # The level of the summaries made (0: none, the coarsest level's oldest were dropped).
    level: int
    # The FIFO the run was taken from.
    source: str


class Compactor:
    """The compaction state between steps: number, hysteresis, spent FIFO levels."""

    def __init__(self, next_no: int) -> None:
        """Start at compaction number `next_no` (the buffer's `NEXT_NOTE`)."""
        self.next_no = next_no
        self.compacting = False
        # (raw FIFO, level) -> monotonic ns until which it is not chosen.
        self.spent: dict[tuple[str, int], int] = {}
        self._fault = fault_from_environment()
        self._candidates = Candidates()
        self._rules: Rules | None = None
        self._any_lane = False

    def due(self, rules: Rules, used_bytes: int, *, pressed: bool = False) -> bool:
        """Whether to compact at fill `used_bytes`; `pressed`: the map's pages near the guard.

        From midway between the watermarks on, until below the low watermark. Readings that
        compress less than the budget assumes fill the map's pages first: the page guard would
        then pause intake, and refuse the steps too, long before the fill reaches the
        watermarks. So pages near the guard (`PageGuard.under_pressure`) start compaction too.
        """
        if rules is not self._rules:
            self._rules = rules
            lanes: Iterable[Lane] = (rules.default_lane, *rules.lanes.values())
            self._any_lane = any(lane.is_compactable for lane in lanes)
        if not self._any_lane:
            self.compacting = False
            return False
        start = (rules.high_bytes + rules.low_bytes) // 2
        if used_bytes >= start or pressed:
            self.compacting = True
        elif used_bytes < rules.low_bytes:
            self.compacting = False
        return self.compacting

    def step(
        self,
        w: FifoTransaction,
        states: Mapping[str, DeviceState],
        rules: Rules,
        reads: Reads,
        now_ns: int,
        *,
        fence: Fence | None = None,
    ) -> Step:
        """Take one run into `w` and append its summaries; `states`: the committed ones.

        `fence`: readings the broker may deliver again stay raw (gateway/buffer/core/fence.py).

        Raises:
            NoStep: nothing could be taken, or the summaries would take as many bytes as the
                run (then the FIFO level is spent for a while); `w` may hold a change, which
                the caller must abort.
        """
        self.spent = {k: t for k, t in self.spent.items() if t > now_ns}
        candidates = self._candidates
        if not candidates.renew(states, rules, reads):
            raise NoStep(busy=True)
        looked: list[str] = []
        found: Step | None = None
        empties = 0
        try:
            for group, lane in islice(candidates.largest(), LOOKS):
                looked.append(group.fifo)
                choice = choose([group], lane.level_share, self.spent.keys())
                if choice is None:
                    continue
                found = self._take(w, choice, (lane, reads), now_ns, fence)
                if found is not None:
                    return found
                self.spent[choice.fifo, choice.level] = now_ns + EMPTY_NS
                empties += 1
                if empties >= TRIES:
                    break
            raise NoStep
        finally:
            changed = w.changed

            def state_of(name: str) -> DeviceState | None:
                if found is not None and name in changed:
                    return changed[name]
                return states.get(name)

            for raw in looked:
                candidates.look_again(raw, state_of, reads)

    def _take(
        self,
        w: FifoTransaction,
        choice: Choice,
        where: tuple[Lane, Reads],
        now_ns: int,
        fence: Fence | None,
    ) -> Step | None:
        lane, reads = where
        source = level_fifo(choice.fifo, choice.level)
        lease_end, _ = lease_of(source, reads.leases, reads.live_leases, reads.live_from)
        limit = reads.live_from.get(source)
        state = w.state(source)
        stop = None
        if fence is not None and state is not None and not choice.level:
            stop = fence.limit(state.number)
        done = Compacted()
        notes = [(NEXT_NOTE, U64.pack(self.next_no + 1))]
        if choice.drop:
            count, _ = w.drop(source, lease_end, need_bytes=STEP_BYTES, limit=limit)
            if not count:
                return None
            done.dropped_summaries[choice.level] = count
            return Step(done, notes, 0, source)
        values: list[bytes] = []
        count, freed = w.drop(
            source, lease_end, need_bytes=STEP_BYTES, limit=limit, stop=stop, taken=values
        )
        if not count:
            return None
        level = choice.level + 1
        made = summarise(
            values, level=level, ladder=Ladder(lane.steps_ns), compaction_no=self.next_no
        )
        sizes = [reading_bytes(value) for value in made]
        if sum(sizes) >= freed:
            self.spent[choice.fifo, choice.level] = now_ns + SPENT_NS
            raise NoStep(retry=True)
        target = level_fifo(choice.fifo, level)
        for value, size in zip(made, sizes, strict=True):
            w.store(target, value, size)
        if choice.level:
            done.resummarised[choice.level] = count
        else:
            done.summarised[fifo_class(source)] = count
        done.made[level] = len(made)
        done.appended = len(made)
        return Step(done, notes, level, source)

    def committed(self) -> None:
        """The step's journal record committed: its number is used."""
        self.next_no += 1

    def fault(self, point: str, step: Step) -> None:
        """The fault hook at `point` of a step's commit, if one is set."""
        if self._fault is not None:
            self._fault(point, step.level)


def fault_from_environment() -> Callable[[str, int], None] | None:
    """The hook `GATEWAY_FAULT_COMPACT` asks for, or None.

    Raises:
        ConfigError: the variable is set but malformed.
    """
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return None
    point, _, rest = spec.partition(":")
    level_text, _, nth_text = rest.partition(":")
    if point not in FAULT_POINTS or not level_text.isdigit() or not nth_text.isdigit():
        raise ConfigError([f"{FAULT_ENV}: expected {'|'.join(FAULT_POINTS)}:LEVEL:NTH"])
    level, nth = int(level_text), int(nth_text)
    seen = 0

    def inject(at: str, made: int) -> None:
        nonlocal seen
        if made != level:
            return
        if at == FAULT_POINTS[0]:
            seen += 1
        if at == point and seen == nth:
            os.kill(os.getpid(), signal.SIGKILL)

    return inject
