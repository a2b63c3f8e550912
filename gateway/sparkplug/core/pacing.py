"""Pacing per key: a rebirth request or a log line at most once per interval for each edge node.

Pure: time is a parameter. The table is bounded, since the keys come from topics any client
may make up.
"""

from __future__ import annotations


class Pacer:
    """Lets each key through at most once per interval; holds at most `most` keys."""

    def __init__(self, interval_s: float, most: int) -> None:
        """No key has been through yet."""
        self._interval_s = interval_s
        self._most = most
        self._next: dict[tuple[str, ...], float] = {}

    def allows(self, key: tuple[str, ...], now_s: float) -> bool:
        """Whether `key` may go through at `now_s` (monotonic seconds); if so, it went."""
        if now_s < self._next.get(key, 0.0):
            return False
        if len(self._next) >= self._most:
            # Bounded like the state: what has expired goes, and if nothing has, everything.
            self._next = {k: t for k, t in self._next.items() if t > now_s}
            if len(self._next) >= self._most:
                self._next.clear()
        self._next[key] = now_s + self._interval_s
        return True
