"""Which lines of a batch the database refused, so that only those go to the dead letters.

A database refuses a batch whole (InfluxDB 1.x and 2.x, VictoriaMetrics: 400, 413, 422) or in
part (InfluxDB 3: `SinkPartial` lists the refused lines; everything else was stored). A batch
refused whole is split in halves until each refused line is alone: log2(n) writes per refused
line. A partial refusal names its lines at once: they are refused, and when the list is as long
as the database lists (`listed_max`), the lines after the last one listed are written again,
since refusals among them may have gone unlisted. Rewriting a point the database already
stored is harmless (DESIGN invariant 6).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from gateway.errors import SinkError, SinkPartial

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)


async def write_isolating(
    write: Callable[[bytes, int], Awaitable[None]], lines: list[bytes]
) -> list[tuple[int, str]]:
    """Write the lines; returns (index, the database's reason) of each refused line, in order.

    `write(body, points)` writes `points` lines, raising a `SinkError` as the database answered.

    Raises:
        SinkError: a retryable failure; nothing may be deleted.
    """
    isolation = _Isolation(lines)
    while isolation.pending:
        lo, hi = isolation.pending.pop()
        if lo >= hi:
            continue  # nothing to write: a database may refuse an empty body
        try:
            await write(b"\n".join(lines[lo:hi]), hi - lo)
        except SinkPartial as exc:
            if not isolation.reconciled(exc, lo, hi):
                isolation.split(exc, lo, hi)
        except SinkError as exc:
            if exc.retryable:
                raise
            isolation.split(exc, lo, hi)
    return sorted(isolation.refused.items())


class _Isolation:
    """The ranges of a batch still to write, and the lines found refused so far."""

    def __init__(self, lines: list[bytes]) -> None:
        self.lines = lines
        self.pending = [(0, len(lines))]
        self.refused: dict[int, str] = {}

    def reconciled(self, exc: SinkPartial, lo: int, hi: int) -> bool:
        """Take a partial refusal's lines; False when it names a line the body does not have."""
        numbers = [number for number, _ in exc.lines]
        if not numbers or min(numbers) < 1 or max(numbers) > hi - lo:
            return False
        for number, reason in exc.lines:
            self.refused[lo + number - 1] = reason
        first_number, first_reason = exc.lines[0]
        logger.error(
            "database refused %d of %d points and stored the rest; the refused ones are moved "
            "to the dead-letter store: %s (point: %.300s)",
            len(set(numbers)),
            hi - lo,
            first_reason,
            self.lines[lo + first_number - 1],
        )
        last = max(numbers)
        if len(exc.lines) >= exc.listed_max and last < hi - lo:
            self.pending.append((lo + last, hi))
        return True

    def split(self, exc: SinkError, lo: int, hi: int) -> None:
        """A range refused whole: its halves to write again, or its one line refused."""
        if hi - lo == 1:
            logger.error(
                "database refused a point; moved to the dead-letter store: %s (point: %.300s)",
                exc,
                self.lines[lo],
            )
            self.refused[lo] = str(exc)
            return
        mid = (lo + hi) // 2
        self.pending += [(mid, hi), (lo, mid)]
