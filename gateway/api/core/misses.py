"""What a cache miss of `/api/v1/devices/{device}/latest` may cost: the negative cache.

A miss reads the database, and anyone who reaches the API can ask for names without end
(500 random names were 500 queries). A name the database did not know is answered from memory
for `ttl_s`; the table holds at most `max_entries` names, the oldest dropped first, so random
names cost bounded memory. A name that gets readings later is found in the last-value table
first, and a name the buffer holds readings of is never remembered (its series may have left
the bounded last-value table), so the negative cache never hides the gateway's own readings;
only a device another writer stores in the database shows up to `ttl_s` late.
"""

from __future__ import annotations

from collections import OrderedDict


class NegativeCache:
    """Device names the database did not know, each until its deadline."""

    def __init__(self, ttl_s: float, max_entries: int) -> None:
        """`ttl_s`: how long a miss is remembered (0: never); `max_entries`: how many."""
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._until: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        """How many names are held (some may have expired)."""
        return len(self._until)

    def is_missing(self, device: str, now: float) -> bool:
        """Whether the database did not know `device` less than `ttl_s` ago."""
        until = self._until.get(device)
        if until is None:
            return False
        if now < until:
            return True
        del self._until[device]
        return False

    def remember(self, device: str, now: float) -> None:
        """Note that the database does not know `device`, as of `now`."""
        if self.ttl_s <= 0 or self.max_entries <= 0:
            return
        # Re-inserted at the end: insertion order is deadline order, as the TTL is one for all.
        self._until.pop(device, None)
        self._until[device] = now + self.ttl_s
        while len(self._until) > self.max_entries or _expired_first(self._until, now):
            self._until.popitem(last=False)

    def forget(self, device: str) -> None:
        """Drop `device` (readings of it were found after all)."""
        self._until.pop(device, None)


def _expired_first(until: OrderedDict[str, float], now: float) -> bool:
    return bool(until) and next(iter(until.values())) <= now
