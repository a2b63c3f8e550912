"""Episodes: a stream of counted events told as one start and one end, not one line per event.

Pure; time is a parameter. An episode of a key starts with its first event and ends once no
event of that key has come for `quiet_s`. The shell logs the transitions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K")


@dataclass(slots=True)
class Episode:
    """One running episode: when it started, its last event and how many events it had."""

    started: float
    last: float
    count: int


class Episodes(Generic[K]):
    """Episodes per key; see the module docstring."""

    def __init__(self, quiet_s: float) -> None:
        """End an episode after `quiet_s` without events."""
        self._quiet_s = quiet_s
        self._running: dict[K, Episode] = {}

    def record(self, key: K, count: int, now: float) -> bool:
        """Count `count` events of `key`; True when they start a new episode."""
        episode = self._running.get(key)
        if episode is None:
            self._running[key] = Episode(now, now, count)
            return True
        episode.last = now
        episode.count += count
        return False

    def ended(self, now: float) -> list[tuple[K, Episode]]:
        """The episodes that have been quiet for `quiet_s`, removed from the running ones."""
        done = [(k, e) for k, e in self._running.items() if now - e.last >= self._quiet_s]
        for key, _ in done:
            del self._running[key]
        return done

    @property
    def running(self) -> int:
        """How many episodes are running."""
        return len(self._running)
