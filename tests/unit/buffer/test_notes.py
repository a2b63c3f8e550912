"""Notes: keyed state committed in the same journal transaction as readings, and kept after it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.buffer import checkpoint
from gateway.buffer.core.admission import Rules
from gateway.buffer.core.chunk import Segment, encode_journal, journal_header, journal_records
from gateway.buffer.store import DEFAULT_LANE, Buffer
from gateway.points.model import Reading
from gateway.points.record import pack

if TYPE_CHECKING:
    from pathlib import Path

MIB = 1 << 20


def item(device: str, ts: int) -> tuple[str, bytes, object]:
    reading = Reading(device, "m", (("device", device),), (("v", 1.0),), ts)
    return device, pack(reading), DEFAULT_LANE


def admit(buf: Buffer, items: list, notes: dict[bytes, bytes]) -> None:
    buf.admit(items, Rules(budget_bytes=buf.budget_bytes), notes)


@settings(max_examples=50)
@given(
    names=st.lists(st.tuples(st.integers(0, 2**31 - 1), st.text(max_size=20)), max_size=3),
    notes=st.lists(st.tuples(st.binary(max_size=40), st.binary(max_size=200)), max_size=4),
    records=st.lists(st.binary(max_size=30), max_size=5),
)
def test_journal_header_round_trips_notes(names, notes, records) -> None:
    segments = [Segment(7, 0, len(records), 0, 0)] if records else []
    value = encode_journal(segments, [records] if records else [], names, notes)
    header = journal_header(value)
    assert header.names == names
    assert header.notes == notes
    assert journal_records(value)[1] == ([records] if records else [])


def test_a_chunk_without_notes_reads_as_before() -> None:
    value = encode_journal([Segment(1, 0, 1, 10, 5)], [[b"x"]], [(1, "dev")])
    header = journal_header(value)
    assert header.notes == []
    assert header.names == [(1, "dev")]


def test_notes_survive_a_kill_before_any_checkpoint(tmp_path: Path) -> None:
    buf = Buffer(tmp_path, 16 * MIB)
    admit(buf, [item("a", 1)], {b"spB/x": b"one"})
    admit(buf, [], {b"spB/y": b"two", b"other": b"3"})
    assert buf.notes(b"spB/") == {b"spB/x": b"one", b"spB/y": b"two"}
    buf.abandon()  # as kill -9 leaves it: the journal alone holds them

    again = Buffer(tmp_path, 16 * MIB)
    assert again.notes(b"spB/") == {b"spB/x": b"one", b"spB/y": b"two"}
    assert again.totals().readings == 1
    again.checkpoint()  # into the store; the notes-only record leaves the journal
    admit(again, [], {b"spB/x": b"one again"})  # replaced, in the journal only
    assert again.notes(b"spB/") == {b"spB/x": b"one again", b"spB/y": b"two"}
    again.close()

    last = Buffer(tmp_path, 16 * MIB)
    assert last.notes(b"spB/") == {b"spB/x": b"one again", b"spB/y": b"two"}
    assert last.notes(b"other") == {b"other": b"3"}
    last.close()


def test_notes_outlive_sealing_and_a_drained_journal(tmp_path: Path) -> None:
    buf = Buffer(tmp_path, 16 * MIB)
    admit(buf, [item("a", 1)], {b"spB/n": b"aliases"})
    spans = buf.read([("a", 10)])
    buf.delete([(s.device, s.first_seq, len(s.values)) for s in spans])
    for ts in range(2, checkpoint.SEAL_RECORDS + 5):
        admit(buf, [item("b", ts)], {})
    buf.checkpoint()
    assert buf._ledger.sealed_through > 0  # the journal was sealed and deleted
    buf.abandon()
    again = Buffer(tmp_path, 16 * MIB, readonly=True)
    assert again.notes(b"spB/") == {b"spB/n": b"aliases"}
    again.close()
