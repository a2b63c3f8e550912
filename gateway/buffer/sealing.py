"""Sealing the journal in steps: its buffered readings copied into sealed chunks of one device each.

A seal is due when the journal has grown (gateway/buffer/checkpoint.py `is_seal_due`). It takes the
journal records up to a cut (the newest record when it starts) and, step by step, reads each of them
once, in record order, keeping per device the run of consecutive readings it has met; a run is
written as a sealed chunk (key: seal number, FIFO number, first sequence) when it reaches
`SEALED_CHUNK_READINGS`, breaks, or when the runs held in memory pass `pending_max_bytes` (the
largest first; `PENDING_MAX_BYTES` unless configured). They pass it by one journal record's
readings at most: the bound is checked before each record is read. Each step does about
`STEP_BYTES` of that work in one store transaction and returns, so the event loop, which runs
the buffer, is never held for long whatever the backlog, the reading size or the device count
(DESIGN invariant 11). The seal ends with a checkpoint
(gateway/buffer/checkpointer.py) that names the seal complete (`sealed_through`, `next_seal`, each
device's `sealed_from`), after which the sealed records are deleted from the journal.

Why steps, and why record order. The first seal walked the journal device by device through the
decoded-chunk cache; with readings past about 128 B the cache evicted every record before the next
device needed it, and one seal decompressed records 56,736 times where 656 would do, holding the
loop for 13 to 67 s. In record order each record is decompressed once, and memory is bounded by
the runs held, not by the journal.

While a seal runs, its chunks are in the store but nothing refers to them: every reading they
copy is still in the journal, which reads prefer (gateway/buffer/fiforead.py reads a device's
sealed chunks only below its first journal sequence), and appends, deliveries and drops go on. A
seal that fails or is cut short by a crash leaves chunks of a seal number that was never
completed; the next seal with that number removes them first, and so does opening the buffer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.buffer.core.chunk import DECODE_ERRORS, encode_sealed, journal_records
from gateway.buffer.core.ledger import SEALED_KEY, U32_MAX, U64
from gateway.errors import DamagedChunkError

if TYPE_CHECKING:
    from collections.abc import Mapping

    import lmdb

    from gateway.buffer.core.chunk import Segment
    from gateway.buffer.core.ledger import DeviceState

# The most readings one sealed chunk holds: a read decompresses a whole chunk.
SEALED_CHUNK_READINGS = 1024
# Work of one step, in bytes of readings read, each reading counting `READING_COST_BYTES` more for
# the per-reading handling: a few milliseconds of the loop on a small box.
STEP_BYTES = 256 << 10
READING_COST_BYTES = 64
# Readings held in runs not yet written; past it the largest runs are written, down to half.
# The default; `[buffer] seal_pending_bytes` (gateway/config/sections.py) sizes it from
# the capacity.
PENDING_MAX_BYTES = 8 << 20


@dataclass(slots=True)
class _Run:
    """Consecutive readings of one device met so far, not yet written."""

    first: int
    values: list[bytes] = field(default_factory=list)
    nbytes: int = 0

    @property
    def end(self) -> int:
        return self.first + len(self.values)


class Sealing:
    """One seal in progress; see the module docstring."""

    def __init__(
        self,
        seal: int,
        cut: int,
        records: list[int],
        names: dict[int, str],
        retired: set[int],
        *,
        pending_max_bytes: int = PENDING_MAX_BYTES,
    ) -> None:
        """Seal number `seal` of the journal `records` up to record `cut`.

        `names`: FIFO number -> name when the seal began (a FIFO created later has no reading in
        these records); `retired`: numbers of forgotten FIFOs whose chunks the seal's checkpoint
        deletes before they may be given out again; `pending_max_bytes`: see the module docstring.
        """
        self.pending_max_bytes = pending_max_bytes
        self.seal = seal
        self.cut = cut
        self.names = names
        self.retired = retired
        # FIFO numbers that got a chunk of this seal.
        self.sealed_numbers: set[int] = set()
        self._records = records
        self._next = 0
        self._runs: dict[int, _Run] = {}
        self._pending_bytes = 0
        # The most held at once, for the tests of the bound.
        self.peak_pending_bytes = 0
        self._cleared = False
        self.steps = 0

    @property
    def is_copied(self) -> bool:
        """Whether every record was read and every run written: the seal can be completed."""
        return self._next >= len(self._records) and not self._runs

    def step(
        self,
        txn: lmdb.Transaction,
        journal: lmdb.Transaction,
        sealed_db: Any,  # noqa: ANN401 - an LMDB handle
        states: Mapping[str, DeviceState],
        budget_bytes: int | None = None,
    ) -> None:
        """Do about `budget_bytes` of the seal's work inside the store's write transaction `txn`.

        Raises:
            DamagedChunkError: a journal record failed its checksum; the seal must start over
                once it is set aside.
        """
        self.steps += 1
        if not self._cleared:
            discard_seals_from(txn, sealed_db, self.seal)
            self._cleared = True
        budget = STEP_BYTES if budget_bytes is None else budget_bytes
        spent = 0
        while spent < budget and self._next < len(self._records):
            if self._pending_bytes > self.pending_max_bytes:
                # Runs piled up (many devices, short runs): write some within this step's
                # budget before reading more, so that memory and the step both stay bounded.
                spent += self._write_largest(
                    txn, sealed_db, self.pending_max_bytes // 2, budget_bytes=budget - spent
                )
                continue
            record = self._records[self._next]
            self._next += 1
            key = U64.pack(record)
            value = journal.get(key)
            if value is None:
                continue  # nothing in it was buffered any more: deleted by a checkpoint
            try:
                segments, groups = journal_records(bytes(value))
            except DECODE_ERRORS as exc:
                raise DamagedChunkError("journal", key, str(exc)) from exc
            spent += self._copy(txn, sealed_db, segments, groups, states)
        if self._next >= len(self._records):
            self._write_largest(txn, sealed_db, 0, budget_bytes=max(budget - spent, 1))

    def _copy(
        self,
        txn: lmdb.Transaction,
        sealed_db: Any,  # noqa: ANN401 - an LMDB handle
        segments: list[Segment],
        groups: list[list[bytes]],
        states: Mapping[str, DeviceState],
    ) -> int:
        """Take a record's buffered readings into runs; returns the work done."""
        spent = 0
        for segment, values in zip(segments, groups, strict=True):
            name = self.names.get(segment.number)
            state = states.get(name) if name is not None else None
            if state is None or state.number != segment.number:
                continue
            spent += segment.nbytes + READING_COST_BYTES * segment.count
            run = self._runs.get(segment.number)
            for offset, reading in enumerate(values):
                seq = segment.first + offset
                if not state.is_live(seq):
                    continue
                if run is not None and (seq != run.end or len(run.values) >= SEALED_CHUNK_READINGS):
                    self._write(txn, sealed_db, segment.number)
                    run = None
                if run is None:
                    run = self._runs[segment.number] = _Run(seq)
                run.values.append(reading)
                run.nbytes += len(reading)
                self._pending_bytes += len(reading)
        self.peak_pending_bytes = max(self.peak_pending_bytes, self._pending_bytes)
        return spent

    def _write_largest(
        self,
        txn: lmdb.Transaction,
        sealed_db: Any,  # noqa: ANN401 - an LMDB handle
        down_to_bytes: int,
        budget_bytes: int | None = None,
    ) -> int:
        """Write runs, the largest first, until `down_to_bytes` are held or the budget is spent."""
        spent = 0
        for number in sorted(self._runs, key=lambda n: self._runs[n].nbytes, reverse=True):
            if self._pending_bytes <= down_to_bytes:
                break
            if budget_bytes is not None and spent >= budget_bytes:
                break
            run = self._runs[number]
            spent += run.nbytes + READING_COST_BYTES * len(run.values)
            self._write(txn, sealed_db, number)
        return spent

    def _write(self, txn: lmdb.Transaction, sealed_db: Any, number: int) -> None:  # noqa: ANN401
        run = self._runs.pop(number)
        self._pending_bytes -= run.nbytes
        txn.put(
            SEALED_KEY.pack(self.seal, number, run.first), encode_sealed(run.values), db=sealed_db
        )
        self.sealed_numbers.add(number)


def discard_seals_from(txn: lmdb.Transaction, sealed_db: Any, seal: int) -> int:  # noqa: ANN401
    """Delete every sealed chunk of seal `seal` and later: what an unfinished seal left."""
    cursor = txn.cursor(db=sealed_db)
    deleted = 0
    if seal > U32_MAX or not cursor.set_range(SEALED_KEY.pack(seal, 0, 0)):
        return 0
    while cursor.key() and cursor.delete():
        deleted += 1
    return deleted
