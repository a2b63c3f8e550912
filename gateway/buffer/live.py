"""Where a live-first drain splits each FIFO: its backlog before the mark, its live stream after.

After an outage, what is appended from the database's return on is sent ahead of what was
buffered before it; each stream keeps its own order. The live stream of a FIFO is read from
its cursor (the end of what of it was delivered, which is the FIFO's one gap), and only
readings newer than everything in the backlog go ahead: a backfilled reading can then never
overwrite a live one of the same series and timestamp (DESIGN invariant 10). The first reading
that is not newer stops the live stream of its FIFO until the backlog before it is delivered;
then the FIFO is one FIFO again, read from its head. Pure: the store holds the marks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.buffer.core.ledger import NEWEST_UNKNOWN

if TYPE_CHECKING:
    from gateway.buffer.core.ledger import DeviceState


@dataclass(frozen=True, slots=True)
class LiveMark:
    """A FIFO's split, and what its live stream may carry.

    `first`: the live stream's first sequence; `newer_than_ns`: the newest timestamp of the
    backlog when the split was made, which the live stream's readings must be newer than.
    """

    first: int
    newer_than_ns: int


def mark_of(state: DeviceState) -> LiveMark | None:
    """The split of a FIFO at its tail now, or None if it cannot take one.

    Not for a FIFO without readings (it has no backlog to go ahead of), with a gap (a drop
    behind a flush; the live stream needs the FIFO's one gap), or whose backlog's newest
    timestamp is unknown (a buffer from before it was kept).
    """
    if not state.readings or state.gap_end > state.gap_start:
        return None
    if state.newest_ts_ns == NEWEST_UNKNOWN:
        return None
    return LiveMark(state.next, state.newest_ts_ns)


def cursor(state: DeviceState, mark: LiveMark) -> int:
    """The first reading of the live stream not yet delivered."""
    return state.gap_end if state.gap_end > state.gap_start else mark.first


def live_waiting(state: DeviceState, mark: LiveMark) -> int:
    """Readings of the live stream still buffered."""
    return max(0, state.next - cursor(state, mark))


def is_over(state: DeviceState | None, mark: LiveMark) -> bool:
    """Whether the backlog before the mark is all gone, so the FIFO is read from its head."""
    return state is None or not state.readings or state.head >= mark.first
