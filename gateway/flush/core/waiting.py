"""The readings waiting for the database, by commit: the write-behind lag and the linger timer.

Each group commit is remembered as (when, how many readings not yet delivered), oldest first;
deliveries and drops consume the oldest first. That gives the age of the oldest waiting reading
without a clock per reading. Once commits have waited `linger_s`, only "due" matters, not
exactly since when, so they merge: the queue stays at about one linger period of commits,
however long the database is away. Pure: time is a parameter.
"""

from __future__ import annotations

import math
from collections import deque


class Waiting:
    """Commits whose readings the database has not confirmed yet."""

    def __init__(self, recovered: int) -> None:
        """`recovered`: readings found in the buffer at start; they count as old."""
        self._commits: deque[list[float]] = deque()
        self._count = 0
        if recovered:
            self._commits.append([-math.inf, recovered])
            self._count = recovered

    def __bool__(self) -> bool:
        """Whether any reading waits."""
        return bool(self._commits)

    def __len__(self) -> int:
        """How many readings wait."""
        return self._count

    def committed(self, readings: int, now: float, linger_s: float) -> bool:
        """Remember a commit; True when it is the only one waiting (it arms the linger timer)."""
        commits = self._commits
        while len(commits) > 1 and commits[1][0] + linger_s <= now:
            oldest = commits.popleft()
            commits[0][0], commits[0][1] = oldest[0], commits[0][1] + oldest[1]
        commits.append([now, readings])
        self._count += readings
        return len(commits) == 1

    def delivered(self, count: int) -> int:
        """`count` of the oldest waiting readings left the buffer (delivered or dropped).

        Returns how many of them this did not hold: the caller counted them on the wrong
        stream, and they must come off the other one, or readings gone from the buffer would
        wait here for ever.
        """
        commits = self._commits
        while count and commits:
            front = commits[0]
            taken = min(count, int(front[1]))
            front[1] -= taken
            count -= taken
            self._count -= taken
            if not front[1]:
                commits.popleft()
        return count

    def linger_left(self, now: float, linger_s: float) -> float:
        """How long until the oldest waiting reading has lingered `linger_s`.

        0 when none is known to wait: the caller asks because the buffer holds readings, and
        readings whose age this lost track of (dropped counts taken off the wrong stream, a
        live-first drain ended early) are overdue, not to wait for ever.
        """
        if not self._commits:
            return 0.0
        return max(0.0, self._commits[0][0] + linger_s - now)

    def oldest_since(self) -> float:
        """When the oldest waiting commit was made (-inf for readings found at start)."""
        return self._commits[0][0]
