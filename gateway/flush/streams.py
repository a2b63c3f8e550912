"""What waits for one sink: the live readings and, during a live-first drain, the backlog apart.

After an outage (and at start) a live-first drain sends what arrives from then on ahead of what
was buffered (gateway/buffer/live.py keeps the buffer's side of the split). The flusher counts
both streams here, by commit (gateway/flush/core/waiting.py), for the write-behind lag of each
and for the linger timer. Every reading the buffer holds must be known to wait, and none that it
does not: a commit wakes the workers only when it is the first to wait, so readings counted as
waiting after they left would keep the workers asleep with the buffer full of new ones.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from gateway.buffer.core.ledger import fifo_level
from gateway.flush.core.waiting import Waiting

if TYPE_CHECKING:
    from gateway.buffer.core.ledger import Span

logger = logging.getLogger(__name__)


class Streams:
    """The readings waiting: `live` always, `backlog` during a live-first drain."""

    def __init__(self, recovered: int) -> None:
        """`recovered`: readings found in the buffer at start; they wait from the start."""
        self.live = Waiting(recovered=recovered)
        self.backlog: Waiting | None = None
        # During a drain: each FIFO's sequence where its live stream began.
        self.split: dict[str, int] | None = None
        self._started = time.monotonic()

    def __len__(self) -> int:
        """Readings known to wait on either stream."""
        return len(self.live) + (0 if self.backlog is None else len(self.backlog))

    @property
    def oldest(self) -> Waiting:
        """The stream of the oldest readings: the backlog during a drain."""
        return self.backlog or self.live

    def lag_s(self, now: float) -> float:
        """How long the oldest waiting reading has been buffered: the write-behind lag.

        Readings found in the buffer at start count from the start.
        """
        return max(self.live_lag_s(now), self.backlog_lag_s(now))

    def live_lag_s(self, now: float) -> float:
        """The lag of the readings accepted since the last split (all, without one)."""
        return self._lag_of(self.live, now)

    def backlog_lag_s(self, now: float) -> float:
        """The lag of the readings a drain sends behind the live ones (0 without one)."""
        return 0.0 if self.backlog is None else self._lag_of(self.backlog, now)

    def _lag_of(self, waiting: Waiting, now: float) -> float:
        if not waiting:
            return 0.0
        return now - max(waiting.oldest_since(), self._started)

    def begin_drain(self, split: dict[str, int], buffered: int) -> None:
        """A live-first drain begins at `split`: what waits now is its backlog."""
        self.split = split
        self.backlog, self.live = self.live, Waiting(recovered=0)
        logger.info("live-first drain: new readings go ahead of the %d buffered ones", buffered)

    def dropped(self, readings: int) -> None:
        """Admission dropped `readings` buffered readings."""
        # Drops take the oldest readings, which during a drain are the backlog's, but of a
        # FIFO whose backlog is gone (or that was not split) they are live ones.
        left = readings if self.backlog is None else self.backlog.delivered(readings)
        self.live.delivered(left)

    def delivered(self, spans: list[Span]) -> None:
        """Take delivered spans off the waiting readings: live ones and backlog ones apart."""
        delivered = sum(len(span.values) for span in spans)
        split, backlog = self.split, self.backlog
        if split is None or backlog is None:
            self.live.delivered(delivered)
            return
        live = 0
        for span in spans:
            if fifo_level(span.device):
                continue  # summaries are appended after any split: never a live stream's
            end = span.first_seq + len(span.values)
            live += max(0, end - max(span.first_seq, split.get(span.device, 0)))
        # The split here is the flusher's guess of the buffer's (which ends a FIFO's split on
        # its own, and keeps an older one): what one stream does not hold was the other's.
        left = self.live.delivered(live)
        self.live.delivered(backlog.delivered(delivered - live + left))
        self.end_drain_if_done()

    def settle(self, buffered: int) -> None:
        """Forget waiting readings beyond the `buffered` ones, then end a finished drain.

        The streams' counts follow every commit, drop and delivery; this also covers readings
        the buffer lost otherwise (a damaged chunk set aside).
        """
        excess = len(self) - buffered
        if excess > 0:
            # The oldest first, as the buffer loses them: the backlog's before the live ones.
            backlog = self.backlog
            self.live.delivered(excess if backlog is None else backlog.delivered(excess))
        self.end_drain_if_done()

    def end_drain_if_done(self) -> None:
        """Forget the split once its backlog is all delivered."""
        if self.backlog is not None and not self.backlog:
            self.split = self.backlog = None
            logger.info("live-first drain: the backlog is delivered")
