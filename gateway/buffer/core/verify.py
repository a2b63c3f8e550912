"""Buffer integrity: compare the stored accounting with what a scan of the data finds.

Pure: the buffer supplies both sides. LMDB commits data and accounting atomically, so a mismatch
means a bug or a damaged disk; the buffer repairs it from the scan rather than trust either blindly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

    from gateway.buffer.core.ledger import DeviceState


@dataclass(slots=True)
class Found:
    """What a scan found for one device number."""

    readings: int = 0
    nbytes: int = 0
    first_seq: int = -1
    last_seq: int = -1
    oldest_ts_ns: int = 0


@dataclass(slots=True)
class Report:
    """The outcome of a comparison: empty `problems` means consistent."""

    problems: list[str] = field(default_factory=list)
    orphan_numbers: list[int] = field(default_factory=list)

    @property
    def is_consistent(self) -> bool:
        """True when the accounting matches the data."""
        return not self.problems


def compare(
    states: Mapping[str, DeviceState], totals: tuple[int, int], found: Mapping[int, Found]
) -> Report:
    """Every difference between stored accounting and scanned data, one line each."""
    report = Report()
    numbers = {state.number: name for name, state in states.items()}
    for name, state in sorted(states.items()):
        seen = found.get(state.number, Found())
        expected_first = state.head if state.readings else -1
        # Dropping readings behind a flush in flight can leave a gap and take the newest, so
        # the last stored sequence is at most the one before `next`.
        last_bound = state.next - 1 if state.readings else -1
        for what, stored, scanned in (
            ("readings", state.readings, seen.readings),
            ("bytes", state.nbytes, seen.nbytes),
            ("first sequence", expected_first, seen.first_seq),
            ("last sequence", last_bound, max(seen.last_seq, last_bound)),
            ("oldest timestamp", state.oldest_ts_ns if state.readings else 0, seen.oldest_ts_ns),
        ):
            if stored != scanned:
                report.problems.append(f"device {name!r}: {what} stored {stored}, found {scanned}")
    for number in sorted(set(found) - set(numbers)):
        report.orphan_numbers.append(number)
        report.problems.append(
            f"device number {number}: {found[number].readings} readings belong to no device"
        )
    scanned_totals = (
        sum(f.readings for f in found.values()),
        sum(f.nbytes for f in found.values()),
    )
    if totals != scanned_totals:
        report.problems.append(f"totals (readings, bytes): stored {totals}, found {scanned_totals}")
    return report


def is_plausible(states: Mapping[str, DeviceState], totals: tuple[int, int]) -> bool:
    """The cheap start-up check: the per-device accounting adds up to the totals.

    Each FIFO's readings fit between its head and its tail, less its gap, which lies inside
    them: a gap that covers readings still counted shows here.
    """
    return totals == (
        sum(s.readings for s in states.values()),
        sum(s.nbytes for s in states.values()),
    ) and all(map(_fits, states.values()))


def _fits(state: DeviceState) -> bool:
    room = state.next - state.head
    if state.gap_end > state.gap_start:
        if not state.head <= state.gap_start < state.gap_end <= state.next:
            return False
        room -= state.gap_end - state.gap_start
    return 0 <= state.readings <= room
