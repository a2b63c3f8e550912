"""What a damaged chunk takes out of a FIFO's accounting.

Pure. A chunk that fails its checksum (gateway/buffer/core/chunk.py) held a run of sequences of
one FIFO (a sealed chunk) or of several (a journal chunk); its readings are lost, and the FIFO's
accounting must drop the ones it still counted as buffered, so that `accepted == delivered +
buffered + dropped` keeps holding with the loss counted under the reason `damaged`.

The bytes those readings counted cannot be read back from a damaged chunk. When the loss is all
the FIFO holds they are its bytes; otherwise the loss is taken at the smallest size a reading can
have, so that the FIFO's bytes never fall below what its remaining readings really count (a
delivery would otherwise take them below zero); the little left over when the FIFO empties is
taken out then (`settle_empty`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.buffer.core.chunk import READING_OVERHEAD
from gateway.points.record import HEADER

if TYPE_CHECKING:
    from gateway.buffer.core.ledger import DeviceState

DAMAGED = "damaged"
# Key prefixes of the store's `damaged` table: a set-aside chunk is kept under its kind and its
# key in its own database, with its raw bytes.
SEALED_KIND = b"s"
JOURNAL_KIND = b"j"
# The fewest bytes a stored reading counts: its overhead and a record header with no field.
MIN_READING_BYTES = READING_OVERHEAD + HEADER.size


def live_in(state: DeviceState, lo: int, hi: int) -> int:
    """How many of sequences `lo` to `hi - 1` the FIFO counts as buffered."""
    lo, hi = max(lo, state.head), min(hi, state.next)
    if hi <= lo:
        return 0
    gap = max(0, min(hi, state.gap_end) - max(lo, state.gap_start))
    return min(hi - lo - gap, state.readings)


def take_range(state: DeviceState, lo: int, hi: int) -> tuple[int, int]:
    """Take the buffered readings among sequences `lo` to `hi - 1` out of `state`.

    Returns the (readings, bytes) taken. When no buffered reading lies before `lo`, the head
    moves past the range (and past the gap, if it lands in it); the caller then finds the new
    head's timestamp.
    """
    lost = live_in(state, lo, hi)
    at_head = live_in(state, state.head, lo) == 0
    if not lost and not (at_head and hi > state.head):
        return 0, 0
    whole = lost >= state.readings
    freed = state.nbytes if whole else min(state.nbytes, lost * MIN_READING_BYTES)
    state.readings -= lost
    state.nbytes -= freed
    if not state.readings:
        state.head = state.next
        state.gap_start = state.gap_end = 0
        state.oldest_ts_ns = 0
        freed += state.nbytes
        state.nbytes = 0
    elif at_head:
        state.head = max(state.head, hi)
        if state.gap_start <= state.head < state.gap_end:
            state.head = state.gap_end
        if state.gap_end <= state.head:
            state.gap_start = state.gap_end = 0
    return lost, freed


def settle_empty(state: DeviceState) -> int:
    """Take out the bytes an emptied FIFO still counts after a loss estimated low; returns them."""
    if state.readings or not state.nbytes:
        return 0
    left, state.nbytes = state.nbytes, 0
    return left
