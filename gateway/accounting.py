"""Every reading accounted for (DESIGN invariant 5), in counts that always add up.

The counts change together under one lock, and readers take a snapshot under it, so any
snapshot (a Prometheus scrape) satisfies both identities exactly:

    received  == invalid + accepted
    accepted + recovered == delivered + dead_lettered + buffered

`recovered` is what this process found in the buffer at start (accepted by an earlier run).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

OUTCOMES = ("received", "invalid", "accepted", "delivered", "dead_lettered", "recovered")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Counts at one instant."""

    outcomes: dict[str, int]
    buffered: int


class Accounting:
    """The counts of invariant 5; see the module docstring."""

    def __init__(self, recovered: int = 0) -> None:
        """Start from the readings already buffered by an earlier run."""
        self._lock = threading.Lock()
        self._outcomes = dict.fromkeys(OUTCOMES, 0)
        self._outcomes["recovered"] = recovered
        self._buffered = recovered

    def committed(self, accepted: int, invalid: int) -> None:
        """A group commit stored `accepted` readings; `invalid` were refused with it."""
        with self._lock:
            self._outcomes["received"] += accepted + invalid
            self._outcomes["invalid"] += invalid
            self._outcomes["accepted"] += accepted
            self._buffered += accepted

    def removed(self, delivered: int, dead_lettered: int) -> None:
        """Readings left the buffer: confirmed by the database or moved to the dead letters."""
        with self._lock:
            self._outcomes["delivered"] += delivered
            self._outcomes["dead_lettered"] += dead_lettered
            self._buffered -= delivered + dead_lettered

    def snapshot(self) -> Snapshot:
        """All counts at one instant."""
        with self._lock:
            return Snapshot(dict(self._outcomes), self._buffered)
