"""Every reading accounted for (DESIGN invariant 5), in counts that always add up.

The counts change together under one lock, and readers take a snapshot under it, so any
snapshot (a Prometheus scrape) satisfies both identities exactly:

    received  == invalid + refused + accepted
    accepted + recovered == delivered + dead_lettered + dropped + buffered

`refused` readings were valid and acknowledged but never stored (admission refused them);
`dropped` ones were stored and then removed by admission to make room, or lost with a damaged
chunk of the buffer (reason `damaged`). Both are also kept by
(reason, device class), and those add up to the totals. `recovered` is what this process found
in the buffer at start (accepted by an earlier run).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

OUTCOMES = (
    "received",
    "invalid",
    "refused",
    "accepted",
    "delivered",
    "dead_lettered",
    "dropped",
    "recovered",
)
# (reason, device class)
Breakdown = Mapping[tuple[str, str], int]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Counts at one instant."""

    outcomes: dict[str, int]
    buffered: int
    refused: dict[tuple[str, str], int]
    dropped: dict[tuple[str, str], int]


class Accounting:
    """The counts of invariant 5; see the module docstring."""

    def __init__(self, recovered: int = 0) -> None:
        """Start from the readings already buffered by an earlier run."""
        self._lock = threading.Lock()
        self._outcomes = dict.fromkeys(OUTCOMES, 0)
        self._outcomes["recovered"] = recovered
        self._buffered = recovered
        self._refused: Counter[tuple[str, str]] = Counter()
        self._dropped: Counter[tuple[str, str]] = Counter()

    def committed(
        self,
        accepted: int,
        invalid: int,
        refused: Breakdown | None = None,
        dropped: Breakdown | None = None,
    ) -> None:
        """A group commit stored `accepted` readings and dropped `dropped` buffered ones.

        `invalid` and `refused` readings came with it and were acknowledged unstored.
        """
        refused = refused or {}
        dropped = dropped or {}
        refused_total = sum(refused.values())
        dropped_total = sum(dropped.values())
        with self._lock:
            o = self._outcomes
            o["received"] += accepted + invalid + refused_total
            o["invalid"] += invalid
            o["refused"] += refused_total
            o["accepted"] += accepted
            o["dropped"] += dropped_total
            self._refused.update(refused)
            self._dropped.update(dropped)
            self._buffered += accepted - dropped_total

    def damaged(self, lost: Breakdown) -> None:
        """Buffered readings were lost with a damaged chunk: dropped, by (`damaged`, class)."""
        total = sum(lost.values())
        with self._lock:
            self._outcomes["dropped"] += total
            self._dropped.update(lost)
            self._buffered -= total

    def removed(self, delivered: int, dead_lettered: int) -> None:
        """Readings left the buffer: confirmed by the database or moved to the dead letters."""
        with self._lock:
            self._outcomes["delivered"] += delivered
            self._outcomes["dead_lettered"] += dead_lettered
            self._buffered -= delivered + dead_lettered

    def snapshot(self) -> Snapshot:
        """All counts at one instant."""
        with self._lock:
            return Snapshot(
                dict(self._outcomes), self._buffered, dict(self._refused), dict(self._dropped)
            )
