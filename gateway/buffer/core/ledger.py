"""The buffer's ledger: FIFO names, each FIFO's accounting, the totals, and their encoding.

Pure: plain values and `struct` layouts, shared by the store, its transactions and its
integrity check (gateway/buffer/store.py gives the database layout). The `Ledger` is the
committed accounting mirrored in memory; a transaction works on a copy of what it touches and
hands back a `LedgerChange`, which the store has the ledger adopt only after LMDB committed, so
the mirror never runs ahead of the disk.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gateway.config.mqtt import DEFAULT_DEVICE_CLASS as DEFAULT_CLASS

if TYPE_CHECKING:
    from gateway.buffer.core.chunk import Segment

# A sealed chunk's key: (seal number, FIFO number, first sequence). Seals are numbered in the
# order they happen, so a seal's chunks append at the right edge of the `sealed` B-tree.
SEALED_KEY = struct.Struct(">IIQ")
DEVICE = struct.Struct(">IQQQQqQQIq")
# The same without the newest timestamp, as buffers written before it store it.
DEVICE_WITHOUT_NEWEST = struct.Struct(">IQQQQqQQI")
TOTALS = struct.Struct(">QQ")
U32 = struct.Struct(">I")
U64 = struct.Struct(">Q")
U32_MAX = 2**32 - 1
# A FIFO's `sealed_from` when no sealed chunk holds any of its readings.
NO_SEAL = U32_MAX
# A FIFO's `newest_ts_ns` when it is not known (a buffer from before it was kept): every
# timestamp must be taken as possibly older.
NEWEST_UNKNOWN = 2**63 - 1
# ... and while nothing was appended since the FIFO was last empty.
NEWEST_NONE = -(2**63)
# A FIFO's name is the device, with the device class appended for other classes than the default.
_CLASS_SEPARATOR = "\x1f"
# The summaries of a FIFO's readings at one compaction level live in a sibling FIFO: the raw
# FIFO's name, this separator, the level (1 = the finest step). Level 0 is the raw FIFO.
LEVEL_SEPARATOR = "\x1e"
# The longest device name ingest takes, in UTF-8. No real device needs more, and it keeps a
# FIFO's name, with a device class (at most 32) and a compaction level, and most of its series'
# last-value keys within LMDB's 511-byte keys (longer ones take a detour: gateway/buffer/core/
# devicekeys.py, gateway/buffer/latest.py).
MAX_DEVICE_BYTES = 400
# LMDB's key limit as py-lmdb builds it (`lmdb.Environment.max_key_size()`).
MAX_KEY_BYTES = 511


def fifo_name(device: str, device_class: str) -> str:
    """The FIFO of a device's readings of one device class.

    Device names hold no control character (gateway/points/names.py), so the separator is free.
    """
    if device_class == DEFAULT_CLASS:
        return device
    return f"{device}{_CLASS_SEPARATOR}{device_class}"


def fifo_device(fifo: str) -> str:
    """The device a FIFO belongs to."""
    return raw_fifo(fifo).partition(_CLASS_SEPARATOR)[0]


def fifo_class(fifo: str) -> str:
    """The device class of a FIFO."""
    return raw_fifo(fifo).partition(_CLASS_SEPARATOR)[2] or DEFAULT_CLASS


def level_fifo(fifo: str, level: int) -> str:
    """The FIFO holding the summaries of `fifo`'s readings at `level` (0: `fifo` itself)."""
    raw = raw_fifo(fifo)
    return raw if level == 0 else f"{raw}{LEVEL_SEPARATOR}{level}"


def fifo_level(fifo: str) -> int:
    """The compaction level of a FIFO: 0 for raw readings, 1 and up for summaries."""
    _, separator, level = fifo.rpartition(LEVEL_SEPARATOR)
    return int(level) if separator else 0


def raw_fifo(fifo: str) -> str:
    """The FIFO of raw readings a FIFO of summaries belongs to (a raw FIFO itself)."""
    return fifo.partition(LEVEL_SEPARATOR)[0]


@dataclass(slots=True)
class DeviceState:
    """Accounting of one device's FIFO."""

    number: int
    head: int  # sequence of the oldest buffered reading
    next: int  # sequence the next appended reading gets
    readings: int
    nbytes: int
    oldest_ts_ns: int
    # Readings dropped behind a flush in flight: sequences gap_start to gap_end - 1 are gone
    # while the ones before them are leased. Reads stop at the gap, so there is at most one.
    gap_start: int = 0
    gap_end: int = 0
    # The oldest seal that may still hold a chunk of this FIFO (NO_SEAL: none does), so that a
    # read or a deletion looks at the seals from there on only.
    sealed_from: int = NO_SEAL
    # The newest reading timestamp appended since the FIFO was last empty (an upper bound of
    # what it holds): a live-first drain sends ahead only readings newer than its backlog.
    newest_ts_ns: int = NEWEST_NONE

    def pack_fields(self) -> tuple[int, int, int, int, int, int, int, int, int, int]:
        """The fields in record order: `DeviceState(*state.pack_fields())` is a copy."""
        return (
            self.number,
            self.head,
            self.next,
            self.readings,
            self.nbytes,
            self.oldest_ts_ns,
            self.gap_start,
            self.gap_end,
            self.sealed_from,
            self.newest_ts_ns,
        )

    @property
    def read_limit(self) -> int:
        """The sequence a read stops before: the gap's start, or the tail."""
        return self.gap_start if self.gap_end > self.gap_start else self.next

    def is_live(self, seq: int) -> bool:
        """Whether the reading with this sequence is still buffered."""
        return self.head <= seq < self.next and not self.gap_start <= seq < self.gap_end

    def pack(self) -> bytes:
        """Serialize for the `devices` database."""
        return DEVICE.pack(*self.pack_fields())

    @classmethod
    def unpack(cls, value: bytes) -> DeviceState:
        """Read a `devices` record, of this layout or of the one before the newest timestamp."""
        if len(value) == DEVICE_WITHOUT_NEWEST.size:
            state = cls(*DEVICE_WITHOUT_NEWEST.unpack(value))
            state.newest_ts_ns = NEWEST_UNKNOWN
            return state
        return cls(*DEVICE.unpack(value))

    def note_newest(self, ts_ns: int) -> None:
        """Take an appended reading's timestamp into `newest_ts_ns`."""
        self.newest_ts_ns = max(self.newest_ts_ns, ts_ns)


@dataclass(slots=True)
class LedgerChange:
    """What one committed transaction did to the ledger."""

    changed: dict[str, DeviceState]
    pruned: set[str]
    new_numbers: set[int]
    readings: int
    nbytes: int
    active: int
    next_device: int = 0
    # The journal chunk the transaction wrote, by segment; None when it appended nothing.
    segments: list[Segment] | None = None


class Ledger:
    """The committed accounting: every FIFO's state, the totals, the device numbers in use.

    Besides, what the next checkpoint must write: the FIFOs changed and forgotten since the
    last one, and the journal positions (`applied`: the newest journal record whose appends the
    stored accounting includes; `sealed_through`: the newest record sealed, -1 for none).
    """

    __slots__ = (
        "active",
        "applied",
        "dirty",
        "forgotten",
        "nbytes",
        "next_device",
        "next_record",
        "next_seal",
        "numbers",
        "readings",
        "retired",
        "sealed_through",
        "states",
    )

    def __init__(self, states: dict[str, DeviceState], readings: int, nbytes: int) -> None:
        """Start from what the `devices` and `meta` databases hold."""
        self.states = states
        self.readings = readings
        self.nbytes = nbytes
        # Kept up to date by adopt: scrapes and every group commit ask for them, and counting
        # would walk every device's state each time.
        self.active = sum(1 for state in states.values() if state.readings)
        self.numbers = {state.number for state in states.values()}
        self.next_device = 0
        self.applied = -1
        self.sealed_through = -1
        self.next_record = 0
        self.next_seal = 0
        self.dirty: set[str] = set()
        self.forgotten: set[str] = set()
        # Numbers of forgotten FIFOs, with the oldest seal that may hold a chunk of theirs: not
        # given out again before a seal has taken their journal segments out of use.
        self.retired: dict[int, int] = {}

    def adopt(self, change: LedgerChange) -> None:
        """Take a committed transaction's change."""
        for fifo in change.pruned:
            state = self.states.pop(fifo, None)
            if state is not None:
                self.numbers.discard(state.number)
                self.retired[state.number] = state.sealed_from
            self.dirty.discard(fifo)
            self.forgotten.add(fifo)
        self.states.update(change.changed)
        self.dirty.update(change.changed)
        self.forgotten.difference_update(change.changed)
        self.numbers |= change.new_numbers
        self.readings, self.nbytes, self.active = change.readings, change.nbytes, change.active
        self.next_device = change.next_device
        if change.segments is not None:
            self.next_record += 1

    def totals(self) -> Totals:
        """Buffer-wide accounting."""
        return Totals(self.readings, self.nbytes, self.active)

    def copy(self) -> Ledger:
        """A ledger that can adopt a change without touching this one."""
        other = Ledger.__new__(Ledger)
        for name in Ledger.__slots__:
            value = getattr(self, name)
            setattr(other, name, value.copy() if isinstance(value, (dict, set)) else value)
        return other


@dataclass(frozen=True, slots=True)
class Span:
    """A run of one device's buffered readings, as read for a batch."""

    device: str
    first_seq: int
    values: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A point the database refused, with its reason."""

    id: int
    device: str
    reason: str
    line: str


@dataclass(slots=True)
class Admitted:
    """What one `admit` did: readings stored, and refused and dropped by (reason, class)."""

    stored: int = 0
    refused: Counter[tuple[str, str]] = field(default_factory=Counter)
    dropped: Counter[tuple[str, str]] = field(default_factory=Counter)
    # (FIFO, FIFO number, sequence, packed record) of each reading stored, for the latest values.
    placed: list[tuple[str, int, int, bytes]] = field(default_factory=list)


@dataclass(slots=True)
class Compacted:
    """What one compaction step did.

    Raw readings summarised by device class; summaries made, summarised again and dropped (the
    coarsest level has nowhere to go) by level; and the summaries appended, which a flusher
    waiting for work must hear of.
    """

    summarised: Counter[str] = field(default_factory=Counter)
    made: Counter[int] = field(default_factory=Counter)
    resummarised: Counter[int] = field(default_factory=Counter)
    dropped_summaries: Counter[int] = field(default_factory=Counter)
    appended: int = 0


@dataclass(frozen=True, slots=True)
class Totals:
    """Buffer-wide accounting."""

    readings: int
    nbytes: int
    devices: int  # devices with at least one buffered reading
