"""When a paused intake goes back to the broker: the decision behind `Ingest._pause`. Pure.

Intake pauses (leaves the broker, which keeps QoS 1 messages in the session) when the buffer
refuses a group commit, for one of three causes, each with its own end:
- `watermark`: the `reject` policy met its high watermark; the fill must fall below the low one;
- `disk_budget`: the page guard or a full LMDB map refused the commit. The buffer's pages are at
  their limit while its fill may be far below any watermark (readings that compress poorly), so
  the fill is no measure of room; what frees pages is a delivery (or a drop), seen as the fill
  falling below what it was at the refusal;
- `disk_full`: the disk itself is full; free space must come back.

A resumed intake meets the same refusal again if what was freed is not enough, as the buffer
cannot say how many pages a commit will need. So the pauses of one episode (from the first
refusal to the first commit that goes through) last at least a doubling time, capped, and a
`disk_budget` pause without any delivery ends at the cap to look again (a checkpoint may free
pages without a delivery): reconnects stay rare whatever the cause, never a loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.errors import CapacityError

# The shortest pause; consecutive pauses of an episode double it.
PAUSE_INITIAL_S = 1.0
# The longest pause between two attempts: at most this long, a `disk_budget` pause waits for a
# delivery before looking again.
PAUSE_MAX_S = 30.0
# How often a pause looks at the fill while no delivery wakes it (watermark, disk budget).
FILL_RECHECK_S = 1.0
# How often a full disk is looked at again: free space has no event to wait on.
DISK_FULL_RECHECK_S = 2.0
# Doubling stops here: 2**16 times the shortest pause is far past the longest.
MOST_DOUBLINGS = 16


class Cause(StrEnum):
    """Why intake paused; the `cause` label of `gateway_intake_pauses_total`."""

    WATERMARK = "watermark"
    DISK_BUDGET = "disk_budget"
    DISK_FULL = "disk_full"


def cause_of(error: CapacityError) -> Cause:
    """The cause of a pause, from the refusal the buffer raised."""
    if error.disk_full:
        return Cause.DISK_FULL
    if error.at_item is not None:
        # Admission paused at a reading: only the `reject` policy at its watermark does.
        return Cause.WATERMARK
    return Cause.DISK_BUDGET


@dataclass(frozen=True, slots=True)
class Pause:
    """One pause: its cause, when it began, the fill then, and the least it lasts."""

    cause: Cause
    started: float
    fill_bytes: int
    min_s: float
    # The first pause of its episode (logged at WARNING; later ones are not).
    is_first: bool

    def wait_s(
        self,
        *,
        fill_bytes: int,
        low_bytes: int,
        free_disk_bytes: int,
        min_free_bytes: int,
        now: float,
    ) -> float:
        """How long to wait before looking again; 0.0 when intake may resume now.

        `fill_bytes`: the readings buffered now; `low_bytes`: the `reject` policy's low
        watermark; `free_disk_bytes`: free space on the buffer's disk now (read only for
        `disk_full`); `min_free_bytes`: what a full disk must have free again.
        """
        elapsed = now - self.started
        if elapsed < self.min_s:
            return self.min_s - elapsed
        if self.cause is Cause.WATERMARK:
            return 0.0 if fill_bytes < low_bytes else FILL_RECHECK_S
        if self.cause is Cause.DISK_FULL:
            return 0.0 if free_disk_bytes >= min_free_bytes else DISK_FULL_RECHECK_S
        if fill_bytes < self.fill_bytes or elapsed >= PAUSE_MAX_S:
            return 0.0
        return min(FILL_RECHECK_S, PAUSE_MAX_S - elapsed)


@dataclass(frozen=True, slots=True)
class Episode:
    """Pauses from a first refusal to the first commit that went through, for one log line."""

    causes: tuple[Cause, ...]
    started: float
    ended: float


class Pauses:
    """The pauses of the current episode; see the module docstring."""

    def __init__(self) -> None:
        """No episode yet."""
        self._causes: list[Cause] = []
        self._started = 0.0

    @property
    def running(self) -> bool:
        """Whether an episode runs: a pause since the last commit that went through."""
        return bool(self._causes)

    def begin(self, cause: Cause, fill_bytes: int, now: float) -> Pause:
        """A refusal: the pause it starts, longer the more refusals came before it."""
        if not self._causes:
            self._started = now
        self._causes.append(cause)
        doublings = min(len(self._causes) - 1, MOST_DOUBLINGS)
        min_s = min(PAUSE_MAX_S, PAUSE_INITIAL_S * 2**doublings)
        return Pause(cause, now, fill_bytes, min_s, is_first=len(self._causes) == 1)

    def committed(self, now: float) -> Episode | None:
        """A commit went through: the episode it ends, if one ran."""
        if not self._causes:
            return None
        episode = Episode(tuple(self._causes), self._started, now)
        self._causes = []
        return episode
