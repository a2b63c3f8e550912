"""Which run the compact policy summarises next: the device, and the level of its FIFOs.

Pure. A device's readings of a compact lane live in its raw FIFO (level 0) and its summaries in
one sibling FIFO per level of the lane's ladder (gateway/buffer/core/ledger.py `level_fifo`). A
compaction step takes the oldest droppable run of one of them and appends its summaries one level
up (gateway/buffer/compaction.py); the coarsest level has nowhere to go, so its oldest summaries
are dropped instead. The choice:

- the device whose FIFOs hold the most droppable bytes (not in flight, not in a live stream);
- within it, the finest summary level (below the coarsest) past its share of the device's
  bytes: each level keeps about `level_share` of them, so the longer the pressure lasts the
  more history moves up the ladder, and the oldest is always the coarsest;
- else the raw readings, so that raw keeps the newest data;
- else the finest summary level with something to give, and only with nothing else the
  coarsest level's oldest summaries.

A (FIFO, level) whose last step would have freed nothing (every reading a series of its own in
its window) is `spent` for a while and not chosen: the caller keeps that set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Container, Iterable


@dataclass(frozen=True, slots=True)
class Group:
    """One device's FIFOs of a compact lane: bytes and droppable bytes by level (0 = raw).

    `nbytes` and `droppable` have one entry per level of the lane's ladder and the raw one
    (`levels + 1`); `fifo` is the raw FIFO's name.
    """

    fifo: str
    nbytes: tuple[int, ...]
    droppable: tuple[int, ...]

    @property
    def levels(self) -> int:
        """The coarsest level of the lane's ladder."""
        return len(self.nbytes) - 1


@dataclass(frozen=True, slots=True)
class Choice:
    """The run to take: from `fifo`'s level `level`; `drop` when it is the coarsest level."""

    fifo: str
    level: int
    drop: bool = False


def choose(
    groups: Iterable[Group], level_share: float, spent: Container[tuple[str, int]] = ()
) -> Choice | None:
    """The run the next compaction step takes, None when no group has anything to give."""
    best: Group | None = None
    best_bytes = 0
    for group in groups:
        free = sum(b for level, b in enumerate(group.droppable) if (group.fifo, level) not in spent)
        if free > best_bytes:
            best, best_bytes = group, free
    if best is None:
        return None
    return _level_of(best, level_share, spent)


def _level_of(group: Group, level_share: float, spent: Container[tuple[str, int]]) -> Choice:
    """The level of `group` to take from; the group has droppable bytes outside `spent`."""
    top = group.levels
    total = sum(group.nbytes)

    def free(level: int) -> bool:
        return group.droppable[level] > 0 and (group.fifo, level) not in spent

    for level in range(1, top):
        if group.nbytes[level] > level_share * total and free(level):
            return Choice(group.fifo, level)
    for level in range(top):
        if free(level):
            return Choice(group.fifo, level)
    return Choice(group.fifo, top, drop=True)
