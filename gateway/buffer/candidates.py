"""The devices a compaction step may take a run from, kept between steps.

Looking at every FIFO in every step would cost a step tens of milliseconds with ten thousand
devices (their summary levels multiply the FIFOs), so the candidates are kept here: a rolling
scan looks at `SCAN_FIFOS` FIFO states per step and installs what it found when it has seen them
all (until the first scan is done, a step does nothing else), and after each step the
device stepped on is looked at again at once. Between scans a
candidate's figures may be stale; the step itself works on the FIFOs' real states, and a device
that turns out to have nothing to give is passed over (gateway/buffer/compaction.py).

Candidates are taken largest first from a heap of (droppable bytes, device); an entry whose
figure no longer matches the device's is stale and skipped.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING

from gateway.buffer.core.compaction import Group
from gateway.buffer.core.ledger import LEVEL_SEPARATOR, fifo_class, level_fifo, raw_fifo
from gateway.buffer.reads import lease_of

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

    from gateway.buffer.core.admission import Lane, Rules
    from gateway.buffer.core.ledger import DeviceState
    from gateway.buffer.reads import Reads

# FIFO states a step looks at to renew the candidates (about a millisecond's worth).
SCAN_FIFOS = 500


class Candidates:
    """Compact devices with their bytes by level; see the module docstring."""

    def __init__(self) -> None:
        """No candidate: the first step scans every FIFO."""
        self.groups: dict[str, tuple[Group, Lane]] = {}
        self._heap: list[tuple[int, str]] = []
        self._rules: Rules | None = None
        self._names: list[str] = []
        self._at = 0
        self._found: dict[str, tuple[Group, Lane]] = {}
        self._lanes: dict[str, Lane] = {}
        # The names of each compact device's FIFOs by level, 0 (raw) first.
        self._names_of: dict[str, tuple[str, ...]] = {}
        self._ready = False

    def renew(self, states: Mapping[str, DeviceState], rules: Rules, reads: Reads) -> bool:
        """Go on with the scan; returns whether there are candidates to choose from yet.

        The first scan (and the first after new rules) has none until it has seen every FIFO,
        over as many steps as that takes.
        """
        if rules is not self._rules:
            self._rules, self._lanes, self._names_of = rules, {}, {}
            self._names, self._at, self._found, self._ready = [], 0, {}, False
            self.groups, self._heap = {}, []
        if self._at >= len(self._names):
            self._names, self._at, self._found = list(states), 0, {}
        end = self._at + SCAN_FIFOS
        found = self._found
        for name in self._names[self._at : end]:
            raw = raw_fifo(name) if LEVEL_SEPARATOR in name else name
            if raw not in found:
                group = self._group(raw, states.get, reads)
                if group is not None:
                    found[raw] = group
        self._at = end
        if self._at >= len(self._names):
            self.groups = found
            self._heap = [(-_free(group), raw) for raw, (group, _) in found.items()]
            heapq.heapify(self._heap)
            self._ready = True
        return self._ready

    def largest(self) -> Iterator[tuple[Group, Lane]]:
        """The candidates, most droppable bytes first (each taken off the heap as it goes)."""
        while self._heap:
            key, raw = heapq.heappop(self._heap)
            found = self.groups.get(raw)
            if found is not None and -key == _free(found[0]):
                yield found

    def look_again(
        self, raw: str, state_of: Callable[[str], DeviceState | None], reads: Reads
    ) -> None:
        """Take a device's FIFOs as they are now (after a step on it, or passing it over)."""
        found = self._group(raw, state_of, reads)
        # A scan under way may have seen the device before this step: it takes this too.
        if raw in self._found:
            if found is None:
                del self._found[raw]
            else:
                self._found[raw] = found
        if found is None:
            self.groups.pop(raw, None)
            return
        self.groups[raw] = found
        heapq.heappush(self._heap, (-_free(found[0]), raw))

    def _group(
        self, raw: str, state_of: Callable[[str], DeviceState | None], reads: Reads
    ) -> tuple[Group, Lane] | None:
        names = self._names_of.get(raw)
        if names is None:
            lane = self._lane(raw)
            if lane is None:
                return None
            names = self._names_of[raw] = tuple(
                level_fifo(raw, level) for level in range(len(lane.steps_ns) + 1)
            )
        nbytes, droppable = [0] * len(names), [0] * len(names)
        leases, live_leases = reads.leases, reads.live_leases
        for level, name in enumerate(names):
            state = state_of(name)
            if state is None or not state.readings:
                continue
            leased = 0
            if name in leases or name in live_leases:
                _, leased = lease_of(name, leases, live_leases, reads.live_from)
            nbytes[level] = state.nbytes
            droppable[level] = max(0, state.nbytes - leased)
        if not any(droppable):
            return None
        return Group(raw, tuple(nbytes), tuple(droppable)), self._lanes[fifo_class(raw)]

    def _lane(self, raw: str) -> Lane | None:
        """The lane of a raw FIFO when it is a compact one."""
        device_class = fifo_class(raw)
        lane = self._lanes.get(device_class)
        if lane is None:
            if self._rules is None:
                return None
            lane = self._lanes[device_class] = self._rules.lane(device_class)
        return lane if lane.is_compactable else None


def _free(group: Group) -> int:
    return sum(group.droppable)
