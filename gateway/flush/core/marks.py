"""When each device's readings came, coarsely: which of them a sink's `max_lag_s` gives up.

Every `step_s` the flusher notes, per FIFO that grew, (now, the sequence its next reading will
get): a reading with a sequence below a mark's was accepted before the mark's time. A sink past
its `max_lag_s` gives up, in each FIFO, the readings below the newest mark older than the limit:
never one accepted within the limit, and at most one step's worth fewer than all that are past
it. Marks older than the one that decides are forgotten, so a FIFO keeps about
`max_lag_s / step_s` of them. Readings found in the buffer at start are marked at the start: a
restart alone must not give up a sink's backlog. Pure: time and the FIFOs' states are given.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping


class Marks:
    """Per FIFO, (time, next sequence then), oldest first; see the module docstring."""

    def __init__(self, keep_s: float) -> None:
        """Keep what decides a limit of `keep_s` seconds."""
        self._keep_s = keep_s
        self._marks: dict[str, deque[tuple[float, int]]] = {}
        # The FIFO number each FIFO's marks are of: one forgotten and made again (a new
        # number, its sequences from 0) starts its marks afresh.
        self._numbers: dict[str, int] = {}

    def __len__(self) -> int:
        """How many marks are kept, all FIFOs together."""
        return sum(len(found) for found in self._marks.values())

    def note(self, nexts: Mapping[str, tuple[int, int]], now: float) -> None:
        """Mark each FIFO's (number, next sequence) at `now`, where it moved since its last mark."""
        marks, numbers = self._marks, self._numbers
        cutoff = now - self._keep_s
        for fifo, (number, seq) in nexts.items():
            found = marks.get(fifo)
            if found is None or numbers[fifo] != number or seq < found[-1][1]:
                marks[fifo] = deque([(now, seq)])
                numbers[fifo] = number
                continue
            if found[-1][1] != seq:
                found.append((now, seq))
            # Only the newest mark at or before the cutoff can decide: the older ones go.
            while len(found) > 1 and found[1][0] <= cutoff:
                found.popleft()
        for fifo in [f for f in marks if f not in nexts]:
            del marks[fifo]
            del numbers[fifo]

    def overdue(self, before: float) -> dict[str, int]:
        """Per FIFO, the sequence below which every reading was accepted before `before`."""
        found = {}
        for fifo, marks in self._marks.items():
            below = None
            for at, seq in marks:
                if at > before:
                    break
                below = seq
            if below is not None:
                found[fifo] = below
        return found
