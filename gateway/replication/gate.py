"""A sync primary's acknowledgements, held until its standby confirmed the commit they follow.

Pure. The committer hands every group commit's PUBACKs here with the newest journal record at
that commit. In `sync` mode, while the standby follows, they wait until the standby confirmed
that record (applied and committed on its disk), then go out in the order they came, as MQTT
requires. A standby that confirms nothing for `confirm_timeout_s`, or is known to be away (its
will said offline, or it is catching up), leaves the primary with local durability only: with
`standby_away = "local"` everything held goes out and new acks go right after the commit, and
the state says so (a metric, the status page, a log line, an alert); with "hold" nothing goes
out until the standby is back, so the broker keeps the messages. `async` mode never holds.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway.config.replication import Mode, StandbyAway

# "sync": acks wait for the standby; "degraded": a sync primary whose standby is away;
# "async": acks never wait.
Durability = Literal["sync", "degraded", "async"]


@dataclass(slots=True)
class _Held:
    record: int
    since: float
    send: Callable[[], None]


class AckGate:
    """See the module docstring."""

    def __init__(
        self,
        mode: Mode,
        standby_away: StandbyAway,
        confirm_timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """A gate with no standby following yet (degraded until one does, in sync mode)."""
        self.mode = mode
        self.standby_away = standby_away
        self.confirm_timeout_s = confirm_timeout_s
        self._clock = clock
        self._held: deque[_Held] = deque()
        self.following = False
        self.confirmed = -1
        # Acks sent without the standby's confirmation while it was away (sync mode).
        self.unconfirmed_acks = 0

    @property
    def durability(self) -> Durability:
        """What an acknowledgement means now."""
        if self.mode == "async":
            return "async"
        return "sync" if self.following else "degraded"

    def _holds(self) -> bool:
        if self.mode == "async":
            return False
        return self.following or self.standby_away == "hold"

    def submit(self, record: int, send: Callable[[], None]) -> None:
        """Send (now or once `record` is confirmed) the acks of a commit; `record`: its newest."""
        if not self._held and (record <= self.confirmed or not self._holds()):
            if self.mode == "sync" and record > self.confirmed:
                self.unconfirmed_acks += 1
            send()
            return
        self._held.append(_Held(record, self._clock(), send))

    def confirm(self, record: int) -> None:
        """The standby has every record up to `record` on its disk."""
        self.confirmed = max(self.confirmed, record)
        held = self._held
        while held and held[0].record <= self.confirmed:
            held.popleft().send()

    def follow(self) -> None:
        """The standby follows: from now on acks wait for it (sync mode)."""
        self.following = True

    def away(self) -> None:
        """The standby is away or catching up: acks no longer wait for it, unless told to hold."""
        self.following = False
        if self.standby_away == "local":
            while self._held:
                self._held.popleft().send()
                self.unconfirmed_acks += 1

    def overdue(self) -> bool:
        """Whether the oldest held ack waited longer than the standby may take to confirm."""
        return bool(
            self.following
            and self._held
            and self._clock() - self._held[0].since > self.confirm_timeout_s
        )

    def drop(self) -> int:
        """Forget every held ack (the connection they belong to is gone); returns how many."""
        n = len(self._held)
        self._held.clear()
        return n

    @property
    def held(self) -> int:
        """Commits whose acks wait for the standby."""
        return len(self._held)

    def oldest_wait_s(self) -> float:
        """How long the oldest held ack has waited (0 if none)."""
        return self._clock() - self._held[0].since if self._held else 0.0
