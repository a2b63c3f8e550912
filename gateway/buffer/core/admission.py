"""Admission near capacity: which readings the buffer takes, which it refuses, what it drops.

Pure. The buffer asks `decide` about each reading inside the transaction that would store it,
and `victim` which device's oldest readings to drop when the decision is to make room; it carries
out the answers and reports what it did. Quantities are bytes of buffered readings, compared with
`Rules.budget_bytes`.

A reading belongs to a lane: its subscription's device class with that class's policy, priority
and criticality. Readings are only ever dropped to make room for readings of the same policy:
- `reject`: at the high watermark intake pauses (the shell leaves the broker, which keeps QoS 1
  messages) until the fill is below the low watermark; `Watermarks` is that hysteresis.
- `drop_oldest`: the oldest readings of the largest device of a drop_oldest lane make room.
- `shed`: the oldest readings of the lowest-priority shed lane at or below the reading's own
  priority make room; with none left, a non-critical reading is itself shed and a critical one
  falls back to `reject`. Critical lanes are never dropped, by any policy.
- `compact`: never drops a reading; the buffer replaces the oldest readings of the largest
  compact device by per-series summaries (gateway/buffer/compaction.py), and when nothing is
  left to compact a reading of the lane waits as under `reject`. Critical lanes are never
  compacted.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import TYPE_CHECKING, NamedTuple

from gateway.config.mqtt import DEFAULT_DEVICE_CLASS as DEFAULT_CLASS

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from gateway.config.settings import Settings

# Reasons, as metric labels. A reading is refused (acknowledged, never stored) or dropped
# (stored, then removed before delivery).
MAX_DEVICES = "max_devices"
DEVICE_SHARE = "device_share"
SHED = "shed"
DROPPED_OLDEST = "dropped_oldest"
# Room is made in steps of at least this fraction of the budget, so that a full buffer takes
# the slow path (a search for a victim) once per step rather than once per reading.
ROOM_STEP_FRACTION = 0.001


class Policy(StrEnum):
    """What a lane does when the buffer is at its high watermark."""

    REJECT = "reject"
    DROP_OLDEST = "drop_oldest"
    SHED = "shed"
    COMPACT = "compact"


@dataclass(frozen=True, slots=True)
class Lane:
    """How admission treats the readings of one device class."""

    device_class: str = DEFAULT_CLASS
    policy: Policy = Policy.REJECT
    priority: int = 0
    critical: bool = False
    # The compact policy's summary steps, finest first (empty for other policies).
    steps_ns: tuple[int, ...] = ()
    level_share: float = 0.25

    @property
    def is_droppable(self) -> bool:
        """Whether readings of this lane may be dropped to make room or keep a share."""
        return not self.critical and self.policy in (Policy.DROP_OLDEST, Policy.SHED)

    @property
    def is_compactable(self) -> bool:
        """Whether readings of this lane may be replaced by summaries."""
        return not self.critical and self.policy is Policy.COMPACT and bool(self.steps_ns)


@dataclass(frozen=True, slots=True)
class Rules:
    """The configured limits and the lanes by device class."""

    budget_bytes: int
    high: float = 1.0
    low: float = 0.99
    device_share: float = 1.0
    max_devices: int = 2**32
    lanes: Mapping[str, Lane] = field(default_factory=dict)
    default_lane: Lane = Lane()

    @property
    def high_bytes(self) -> int:
        """Fill at which the policies act."""
        return int(self.high * self.budget_bytes)

    @property
    def low_bytes(self) -> int:
        """Fill below which a paused intake resumes."""
        return int(self.low * self.budget_bytes)

    @property
    def share_bytes(self) -> int | None:
        """The most one device may hold, or None without a share limit."""
        return None if self.device_share >= 1 else int(self.device_share * self.budget_bytes)

    @property
    def room_step_bytes(self) -> int:
        """The least that one step of making room frees."""
        return max(1, int(self.budget_bytes * ROOM_STEP_FRACTION))

    def lane(self, device_class: str) -> Lane:
        """The lane of a device class; a class no longer configured gets the default lane."""
        return self.lanes.get(device_class, self.default_lane)


class Verdict(Enum):
    """What becomes of one reading."""

    STORE = "store"
    REFUSE = "refuse"
    PAUSE = "pause"


@dataclass(frozen=True, slots=True)
class Decision:
    """A verdict, the reason for a refusal, and the room to make before storing."""

    verdict: Verdict
    reason: str = ""
    # Bytes to drop from the reading's own device first (it is over its share).
    drop_own_bytes: int = 0
    # Bytes to drop from devices chosen by `victim` (the buffer is at its high watermark).
    make_room_bytes: int = 0


STORE = Decision(Verdict.STORE)
PAUSE = Decision(Verdict.PAUSE)


class Fifo(NamedTuple):
    """What `decide` needs to know of the reading's own device FIFO.

    A named tuple, not a frozen dataclass: one is made per decided reading, and a frozen
    dataclass costs three times as much to make.
    """

    nbytes: int
    droppable_bytes: int  # bytes not in flight to the database
    is_new: bool  # holds no reading yet: one more device in the buffer


def decide(lane: Lane, size: int, *, fifo: Fifo, used: int, active: int, rules: Rules) -> Decision:
    """Decide one reading of `size` bytes for a buffer holding `used` bytes in `active` FIFOs."""
    if fifo.is_new and active >= rules.max_devices:
        return Decision(Verdict.REFUSE, MAX_DEVICES)
    drop_own = 0
    share = rules.share_bytes
    if share is not None and not lane.critical and fifo.nbytes + size > share:
        if not lane.is_droppable:
            return Decision(Verdict.REFUSE, DEVICE_SHARE)
        drop_own = max(fifo.nbytes + size - share, min(rules.room_step_bytes, fifo.nbytes))
        if drop_own > fifo.droppable_bytes:
            return Decision(Verdict.REFUSE, DEVICE_SHARE)
    over = used - drop_own + size - rules.high_bytes
    if over <= 0:
        return Decision(Verdict.STORE, drop_own_bytes=drop_own) if drop_own else STORE
    if lane.policy is Policy.REJECT:
        return PAUSE
    return Decision(
        Verdict.STORE,
        drop_own_bytes=drop_own,
        make_room_bytes=max(over, rules.room_step_bytes),
    )


def when_no_room(lane: Lane) -> Decision:
    """The decision once no victim is left to make room for a reading of `lane`."""
    if lane.policy is Policy.SHED and not lane.critical:
        return Decision(Verdict.REFUSE, SHED)
    return PAUSE


def drop_reason(lane: Lane) -> str:
    """The reason counted for readings dropped to make room for a reading of `lane`."""
    return SHED if lane.policy is Policy.SHED else DROPPED_OLDEST


@dataclass(frozen=True, slots=True)
class Candidate:
    """A device FIFO that might give up its oldest readings."""

    name: str
    lane: Lane
    droppable_bytes: int


def victim(lane: Lane, candidates: Iterable[Candidate]) -> Candidate | None:
    """The FIFO whose oldest readings make room for a reading of `lane`, if any may.

    `drop_oldest` takes the largest drop_oldest FIFO; `shed` the largest FIFO of the lowest
    priority among shed lanes at or below the reading's priority (any priority for a critical
    reading). Critical lanes and readings in flight are never candidates.
    """
    if lane.policy in (Policy.REJECT, Policy.COMPACT):
        return None
    best: Candidate | None = None
    best_key: tuple[int, int] = (0, 0)
    for candidate in candidates:
        other = candidate.lane
        if (
            candidate.droppable_bytes <= 0
            or other.policy is not lane.policy
            or not other.is_droppable
            or (lane.policy is Policy.SHED and not lane.critical and other.priority > lane.priority)
        ):
            continue
        rank = -other.priority if lane.policy is Policy.SHED else 0
        key = (rank, candidate.droppable_bytes)
        if best is None or key > best_key:
            best, best_key = candidate, key
    return best


class Transition(Enum):
    """A change of the reject policy's state worth one log line."""

    START_REJECTING = "start"
    STOP_REJECTING = "stop"


@dataclass
class Watermarks:
    """Hysteresis of the `reject` policy: paused at `high_bytes`, resumed below `low_bytes`."""

    high_bytes: int
    low_bytes: int
    rejecting: bool = False

    def update(self, used_bytes: int) -> Transition | None:
        """Feed the current fill; returns a transition when the state changes."""
        if not self.rejecting and used_bytes >= self.high_bytes:
            self.rejecting = True
            return Transition.START_REJECTING
        if self.rejecting and used_bytes < self.low_bytes:
            self.rejecting = False
            return Transition.STOP_REJECTING
        return None


def lanes_of(settings: Settings) -> dict[str, Lane]:
    """The admission lane of each device class the subscriptions name."""
    return {
        sub.device_class: _with_steps(
            settings,
            Lane(
                device_class=sub.device_class,
                policy=Policy(sub.policy or settings.buffer.policy),
                priority=sub.priority,
                critical=sub.critical,
            ),
        )
        for sub in settings.mqtt.subscriptions
    }


def _with_steps(settings: Settings, lane: Lane) -> Lane:
    """The lane with the compact policy's steps when it is a compact one."""
    if lane.policy is not Policy.COMPACT:
        return lane
    b = settings.buffer
    steps_ns = tuple(step * 1_000_000_000 for step in b.compact_steps_s)
    return dataclasses.replace(lane, steps_ns=steps_ns, level_share=b.compact_level_share)


def rules_of(settings: Settings, budget_bytes: int) -> Rules:
    """The admission rules for a buffer whose readings may take `budget_bytes`."""
    b = settings.buffer
    return Rules(
        budget_bytes=budget_bytes,
        high=b.high_watermark,
        low=b.low_watermark,
        device_share=b.device_share,
        max_devices=b.max_devices,
        lanes=lanes_of(settings),
        default_lane=_with_steps(settings, Lane(policy=Policy(b.policy))),
    )
