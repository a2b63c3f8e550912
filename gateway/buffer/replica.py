"""A standby's buffer follows its primary's: the primary's journal records, applied as they come.

The primary ships every journal record it commits (gateway/replication/primary.py). A standby
writes each into its own journal under the primary's record number and takes it into its
accounting as a restart would replay it (gateway/buffer/checkpoint.py `_Replay`): the record's
new FIFO names, its appends, then the FIFO states it carries. The standby's ledger therefore
numbers FIFOs and sequences as the primary's does, so the next record applies on top of it, and
the standby's own checkpoints and seals keep its journal bounded as the primary's keep its own.
A takeover is then an ordinary start on that directory.

A standby that (re)connects is sent the state of every FIFO the primary has: one the primary
forgot (it was emptied, then idle) is emptied on the standby, which may have missed the
states that emptied it.

Deliveries between the primary's commits travel as a record of states alone (`encode_journal`
with no segment), applied to the accounting and written by the standby's next checkpoint: lost
to a crash of the standby, they only make it deliver again what the primary had delivered, which
the database absorbs (DESIGN invariant 6).

A state never moves a FIFO's head back: a primary restarted after kill -9 may deliver again
what it had delivered and told its standby of, and the standby keeps its own state until the
primary's passes it. A standby that reconnects is sent every FIFO's state, so that deliveries
it lost to its own crash do not linger.

Pure: the change is computed against the ledger and adopted by the store like any other.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from gateway.buffer.core.chunk import journal_header
from gateway.buffer.core.ledger import LEVEL_SEPARATOR, NEWEST_NONE, DeviceState, LedgerChange
from gateway.points.record import timestamp_of

if TYPE_CHECKING:
    from gateway.buffer.core.chunk import JournalHeader, Segment, State
    from gateway.buffer.core.ledger import Ledger


def shipped_header(value: bytes, *, states_only: bool) -> JournalHeader:
    """The header of a shipped chunk, its checksum verified; a chunk of states has no appends.

    A shipped chunk must carry its checksum: one without (as chunks written before checksums
    existed) would be taken unverified.

    Raises:
        ValueError: it is damaged, has no checksum, or a chunk of states carries appends or
            names (or another of chunk.DECODE_ERRORS).
    """
    header = journal_header(value, verify=True)
    if header.body_end >= len(value):
        raise ValueError("a shipped chunk carries no checksum")
    if states_only and (header.segments or header.names or header.notes):
        raise ValueError("a chunk of states carries appends, names or notes")
    return header


class ReplicaGapError(Exception):
    """A shipped record does not follow the last one applied: the standby must catch up."""

    def __init__(self, expected: int, got: int) -> None:
        """`expected` is the record number the standby needs next."""
        super().__init__(f"record {got} shipped, record {expected} expected")
        self.expected = expected
        self.got = got


class Applier:
    """Turns shipped records into ledger changes; keeps FIFO numbers -> names between them."""

    def __init__(self, ledger: Ledger) -> None:
        """Names as the ledger has them (once: every record then keeps them up to date)."""
        self.names = {state.number: fifo for fifo, state in ledger.states.items()}

    def change(
        self,
        ledger: Ledger,
        header: JournalHeader,
        groups: list[list[bytes]],
        carried: list[State],
        *,
        numbered: bool,
        complete: bool = False,
    ) -> tuple[LedgerChange, list[tuple[str, int, int, bytes]], dict[int, str | None]]:
        """The ledger change one record makes, its placed readings and its renames.

        The change's segments are the record's live ones; None unless `numbered` (a record
        of states alone takes no journal record number). Nothing changes here: once the change is
        committed and adopted, `adopted` takes the renames.
        """
        step = _Step(ledger, self.names)
        for number, name in header.names:
            step.adopt_name(number, name)
        placed: list[tuple[str, int, int, bytes]] = []
        for segment, records in zip(header.segments, groups, strict=True):
            name, state = step.append(segment)
            if records:
                state.note_newest(max(timestamp_of(r) for r in records))
            if LEVEL_SEPARATOR not in name:  # summaries are not readings a device sent
                placed.extend(
                    (name, segment.number, segment.first + i, r) for i, r in enumerate(records)
                )
        for fields in carried:
            step.set_state(fields)
        if complete:
            step.empty_all_but({fields[0] for fields in carried})
        live = [
            s
            for s in header.segments
            if (after := step.current(step.name_of(s.number) or "")) is not None
            and s.end > after.head
        ]
        change = LedgerChange(
            {f: s for f, s in step.touched.items() if s is not None},
            step.pruned,
            step.new_numbers,
            step.readings,
            step.nbytes,
            step.active,
            next_device=step.next_device,
            segments=live if numbered else None,
        )
        return change, placed, step.renamed

    def adopted(self, renamed: dict[int, str | None]) -> None:
        """Take the renames of a change the ledger adopted."""
        for number, name in renamed.items():
            if name is None:
                self.names.pop(number, None)
            else:
                self.names[number] = name


class _Step:
    """One record's effect, on copies of the states it touches."""

    def __init__(self, ledger: Ledger, names: dict[int, str]) -> None:
        self.ledger = ledger
        self.names = names
        # Number -> name (None: forgotten) as this record leaves them; `names` stays as it was.
        self.renamed: dict[int, str | None] = {}
        self.touched: dict[str, DeviceState | None] = {}
        self.pruned: set[str] = set()
        self.new_numbers: set[int] = set()
        self.readings, self.nbytes, self.active = ledger.readings, ledger.nbytes, ledger.active
        self.next_device = ledger.next_device

    def name_of(self, number: int) -> str | None:
        if number in self.renamed:
            return self.renamed[number]
        return self.names.get(number)

    def current(self, name: str) -> DeviceState | None:
        if name in self.touched:
            return self.touched[name]
        return self.ledger.states.get(name)

    def _copy(self, name: str) -> DeviceState | None:
        state = self.current(name)
        if state is not None and name not in self.touched:
            state = replace(state)
            self.touched[name] = state
        return state

    def _drop(self, name: str) -> None:
        state = self.current(name)
        if state is None:
            return
        self.readings -= state.readings
        self.nbytes -= state.nbytes
        self.active -= bool(state.readings)
        self.renamed[state.number] = None
        self.touched[name] = None
        if name in self.ledger.states:
            self.pruned.add(name)

    def adopt_name(self, number: int, name: str) -> None:
        previous = self.name_of(number)
        if previous is not None and previous != name:
            self._drop(previous)
        old = self.current(name)
        if old is not None and old.number != number:
            self._drop(name)
            old = None
        if old is None:
            self.touched[name] = DeviceState(number, 0, 0, 0, 0, 0)
            self.new_numbers.add(number)
            self.next_device = max(self.next_device, number + 1)
        self.renamed[number] = name

    def append(self, segment: Segment) -> tuple[str, DeviceState]:
        name = self.name_of(segment.number)
        if name is None:
            # A record naming a number it never introduced: as a restart's replay, an orphan.
            name = f"orphan-{segment.number}"
            self.adopt_name(segment.number, name)
        state = self._copy(name)
        if state is None:
            raise ValueError(f"record appends to FIFO number {segment.number} it forgot")
        if not state.readings:
            state.head = segment.first
            state.gap_start = state.gap_end = 0
            state.oldest_ts_ns = segment.first_ts_ns
            state.newest_ts_ns = NEWEST_NONE
            self.active += bool(segment.count)
        state.next = segment.end
        state.readings += segment.count
        state.nbytes += segment.nbytes
        self.readings += segment.count
        self.nbytes += segment.nbytes
        return name, state

    def empty_all_but(self, numbers: set[int]) -> None:
        """Empty every FIFO with readings whose number is not in `numbers`."""
        for name, state in self.ledger.states.items():
            if state.readings and state.number not in numbers and name not in self.touched:
                copy = self._copy(name)
                if copy is None:
                    continue
                self.readings -= copy.readings
                self.nbytes -= copy.nbytes
                self.active -= 1
                copy.head, copy.readings, copy.nbytes = copy.next, 0, 0
                copy.gap_start = copy.gap_end = 0

    def set_state(self, fields: State) -> None:
        number, head, next_seq, readings, nbytes, oldest, gap_start, gap_end, newest = fields
        name = self.name_of(number)
        if name is None:
            return  # forgotten by the primary and its name given to a new number since
        state = self.current(name)
        if state is None or head < state.head:
            # The primary lost deliveries to a crash that its standby had been told of: what
            # it delivers again the standby need not hold again.
            return
        state = self._copy(name)
        if state is None:
            return
        self.readings += readings - state.readings
        self.nbytes += nbytes - state.nbytes
        self.active += bool(readings) - bool(state.readings)
        state.head, state.next = head, max(next_seq, state.next)
        state.readings, state.nbytes, state.oldest_ts_ns = readings, nbytes, oldest
        state.gap_start, state.gap_end, state.newest_ts_ns = gap_start, gap_end, newest
