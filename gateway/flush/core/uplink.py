"""The uplink budget: an average byte rate the flusher's writes may not exceed.

Each request body reserves its own transmission time on a virtual clock that runs at the
budget's rate; a body waits until the clock has caught up with the ones before it. Idle time
earns no credit, so no window longer than one body ever averages above the budget, and a
backlog simply waits on disk. Pure: the caller passes the time.
"""

from __future__ import annotations


class UplinkBudget:
    """At most `bytes_per_s` on average; None means no budget."""

    def __init__(self, bytes_per_s: float | None) -> None:
        """Start with the link free."""
        self.bytes_per_s = bytes_per_s
        self._free_at = 0.0

    def reserve(self, size: int, now: float) -> float:
        """Book `size` bytes; returns the seconds to wait before sending them."""
        if self.bytes_per_s is None:
            return 0.0
        start = max(now, self._free_at)
        self._free_at = start + size / self.bytes_per_s
        return start - now
