"""Progress of long commands (`verify-buffer`, `bench`): one line a second on stderr.

Work that ends within the first second prints nothing, so short runs and scripts stay quiet;
stdout keeps the result alone, for a pipe.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from collections.abc import Callable

# Often enough to show the work moves, rarely enough to stay readable in a journal.
INTERVAL_S = 1.0


class Ticker:
    """Prints `label: text` at most once per `interval_s`, starting after the first interval."""

    def __init__(
        self,
        label: str,
        *,
        out: TextIO | None = None,
        interval_s: float = INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`clock` is a parameter for the tests."""
        self._label = label
        self._out = out
        self._interval_s = interval_s
        self._clock = clock
        self._next = clock() + interval_s
        self.lines = 0

    def tell(self, text: str) -> None:
        """Show `text` if a line is due."""
        now = self._clock()
        if now < self._next:
            return
        self._next = now + self._interval_s
        self.lines += 1
        print(f"{self._label}: {text}", file=self._out or sys.stderr, flush=True)


def scan_progress(ticker: Ticker) -> Callable[[int, int, int], None]:
    """A buffer scan's progress callback that tells `ticker`."""

    def tell(done: int, total: int, readings: int) -> None:
        ticker.tell(f"{done:,} of {total:,} devices scanned, {readings:,} readings")

    return tell
