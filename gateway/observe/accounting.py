"""Every reading accounted for (DESIGN invariant 5), in counts that always add up.

The counts change together under one lock, and readers take a snapshot under it, so any
snapshot (a Prometheus scrape) satisfies the three identities exactly:

    received  == invalid + refused + suppressed + accepted
    accepted + recovered == delivered + dead_lettered + dropped + summarised + buffered
    summaries_made + summaries_recovered == summaries_delivered + summaries_dead_lettered
        + summaries_resummarised + summaries_dropped + summaries_buffered

`suppressed` readings were within their deadband (gateway/ingest/core/deadband.py), or were
redelivered copies of readings the buffer held (gateway/ingest/redelivery.py), and acknowledged
unstored; `summarised` ones were stored, then replaced by summaries under the
`compact` policy. Summaries are points of their own, counted by level (1: the finest step): made
by a compaction, then delivered, dead-lettered, summarised again at the next level, or dropped
(the coarsest level has nowhere to go, or a damaged chunk held them).
`refused` readings were valid and acknowledged but never stored (admission refused them);
`dropped` ones were stored and then removed by admission to make room, or lost with a damaged
chunk of the buffer (reason `damaged`). Both are also kept by
(reason, device class), and those add up to the totals. `recovered` is what this process found
in the buffer at start (accepted by an earlier run), and `summaries_recovered` the summaries.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.buffer.core.ledger import Compacted

OUTCOMES = (
    "received",
    "invalid",
    "refused",
    "suppressed",
    "accepted",
    "delivered",
    "dead_lettered",
    "dropped",
    "summarised",
    "recovered",
)
SUMMARY_OUTCOMES = (
    "made",
    "recovered",
    "delivered",
    "dead_lettered",
    "resummarised",
    "dropped",
)
# (reason, device class)
Breakdown = Mapping[tuple[str, str], int]
# By level (1 and up).
ByLevel = Mapping[int, int]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Counts at one instant."""

    outcomes: dict[str, int]
    buffered: int
    refused: dict[tuple[str, str], int]
    dropped: dict[tuple[str, str], int]
    # By device class.
    suppressed: dict[str, int]
    summarised: dict[str, int]
    # Outcome (SUMMARY_OUTCOMES) -> level -> summaries; buffered summaries by level.
    summaries: dict[str, dict[int, int]]
    summaries_buffered: dict[int, int]


def step_label(level: int, steps_s: Sequence[int]) -> str:
    """How metrics and status name a summary level: by its step, "60s".

    A level past the configured steps (the ladder was shortened while summaries were buffered)
    keeps its number, "level 3".
    """
    if 1 <= level <= len(steps_s):
        return f"{steps_s[level - 1]}s"
    return f"level {level}"


class Accounting:
    """The counts of invariant 5; see the module docstring."""

    def __init__(self, recovered: int = 0, summaries_recovered: ByLevel | None = None) -> None:
        """Start from the readings and summaries already buffered by an earlier run."""
        self._lock = threading.Lock()
        self._outcomes = dict.fromkeys(OUTCOMES, 0)
        self._outcomes["recovered"] = recovered
        self._buffered = recovered
        self._refused: Counter[tuple[str, str]] = Counter()
        self._dropped: Counter[tuple[str, str]] = Counter()
        self._suppressed: Counter[str] = Counter()
        self._summarised: Counter[str] = Counter()
        self._summaries: dict[str, Counter[int]] = {name: Counter() for name in SUMMARY_OUTCOMES}
        self._summaries["recovered"].update(summaries_recovered or {})
        self._summaries_buffered: Counter[int] = Counter(summaries_recovered or {})

    def committed(
        self,
        accepted: int,
        invalid: int,
        refused: Breakdown | None = None,
        dropped: Breakdown | None = None,
        suppressed: Mapping[str, int] | None = None,
    ) -> None:
        """A group commit stored `accepted` readings and dropped `dropped` buffered ones.

        `invalid`, `refused` and `suppressed` (by device class) readings came with it and were
        acknowledged unstored.
        """
        refused = refused or {}
        dropped = dropped or {}
        suppressed = suppressed or {}
        refused_total = sum(refused.values())
        dropped_total = sum(dropped.values())
        suppressed_total = sum(suppressed.values())
        with self._lock:
            o = self._outcomes
            o["received"] += accepted + invalid + refused_total + suppressed_total
            o["invalid"] += invalid
            o["refused"] += refused_total
            o["suppressed"] += suppressed_total
            o["accepted"] += accepted
            o["dropped"] += dropped_total
            self._refused.update(refused)
            self._dropped.update(dropped)
            self._suppressed.update(suppressed)
            self._buffered += accepted - dropped_total

    def compacted(self, step: Compacted) -> None:
        """A compaction step replaced buffered readings or summaries by coarser summaries."""
        summarised = sum(step.summarised.values())
        with self._lock:
            self._outcomes["summarised"] += summarised
            self._summarised.update(step.summarised)
            self._buffered -= summarised
            self._summaries["made"].update(step.made)
            self._summaries["resummarised"].update(step.resummarised)
            self._summaries["dropped"].update(step.dropped_summaries)
            self._summaries_buffered.update(step.made)
            self._summaries_buffered.subtract(step.resummarised)
            self._summaries_buffered.subtract(step.dropped_summaries)

    def damaged(self, lost: Breakdown, summaries_lost: ByLevel | None = None) -> None:
        """Buffered readings were lost with a damaged chunk: dropped, by (`damaged`, class).

        Summaries lost with it are dropped summaries of their level.
        """
        total = sum(lost.values())
        with self._lock:
            self._outcomes["dropped"] += total
            self._dropped.update(lost)
            self._buffered -= total
            self._summaries["dropped"].update(summaries_lost or {})
            self._summaries_buffered.subtract(summaries_lost or {})

    def removed(
        self,
        delivered: int,
        dead_lettered: int,
        summaries_delivered: ByLevel | None = None,
        summaries_dead_lettered: ByLevel | None = None,
    ) -> None:
        """Readings and summaries left the buffer: confirmed by the database or dead-lettered."""
        with self._lock:
            self._outcomes["delivered"] += delivered
            self._outcomes["dead_lettered"] += dead_lettered
            self._buffered -= delivered + dead_lettered
            self._summaries["delivered"].update(summaries_delivered or {})
            self._summaries["dead_lettered"].update(summaries_dead_lettered or {})
            self._summaries_buffered.subtract(summaries_delivered or {})
            self._summaries_buffered.subtract(summaries_dead_lettered or {})

    def snapshot(self) -> Snapshot:
        """All counts at one instant."""
        with self._lock:
            return Snapshot(
                dict(self._outcomes),
                self._buffered,
                dict(self._refused),
                dict(self._dropped),
                dict(self._suppressed),
                dict(self._summarised),
                {name: dict(+counts) for name, counts in self._summaries.items()},
                {level: n for level, n in self._summaries_buffered.items() if n},
            )
