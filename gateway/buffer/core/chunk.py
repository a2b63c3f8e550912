"""The buffer's stored values: many readings in one compressed chunk.

Pure. Two kinds, both a small uncompressed header and one zstandard frame of length-prefixed
packed records (gateway/points/record.py):
- a journal chunk holds one group commit's readings of every device it touched, one segment per
  device (its FIFO number, first sequence, count, bytes as accounted, timestamp of its first
  reading), so start-up can rebuild the accounting from headers without decompressing;
- a sealed chunk holds a run of one device's readings with consecutive sequences; its key says
  whose and from which sequence, so its header is only the count.

Line protocol of one device compresses several-fold, and readings of many devices side by side
compress nearly as well (they share measurement, tag and field names), which is why one chunk per
commit, not per device, is what the journal writes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

import zstandard

if TYPE_CHECKING:
    from collections.abc import Sequence

# A reading counts, besides its packed record, what a key of its own once cost; kept so that
# budgets and device shares mean the same bytes as before readings shared chunks.
READING_OVERHEAD = 12
COUNT = struct.Struct(">I")
SEGMENT = struct.Struct(">IQIIq")
NAME = struct.Struct(">IH")
LENGTH = struct.Struct(">I")
# Notes: small keyed state that must become durable in the same commit as readings (a
# decoder's Sparkplug alias maps). A journal chunk carrying notes sets this bit in its count of
# new FIFO names, so chunks written before notes existed read the same as ever.
NOTES_FLAG = 0x8000_0000
NOTE = struct.Struct(">HI")
# The fastest level; higher levels were not measured against it yet.
LEVEL = 1

_compress = zstandard.ZstdCompressor(level=LEVEL).compress
_decompress = zstandard.ZstdDecompressor().decompress


def reading_bytes(record: bytes) -> int:
    """What one reading counts against budgets and shares."""
    return READING_OVERHEAD + len(record)


@dataclass(frozen=True, slots=True)
class Segment:
    """One device's readings in a journal chunk: sequences `first` to `first + count - 1`."""

    number: int
    first: int
    count: int
    nbytes: int
    first_ts_ns: int

    @property
    def end(self) -> int:
        """The sequence after the segment's last reading."""
        return self.first + self.count


def _body(groups: Sequence[Sequence[bytes]]) -> bytes:
    # Length prefixes and records joined once: no intermediate bytes per record.
    pack = LENGTH.pack
    parts: list[bytes] = []
    add = parts.append
    for records in groups:
        for record in records:
            add(pack(len(record)))
            add(record)
    return _compress(b"".join(parts))


def _records(frame: bytes | memoryview, count: int) -> list[bytes]:
    body = _decompress(bytes(frame))
    records, at, unpack = [], 0, LENGTH.unpack_from
    for _ in range(count):
        (size,) = unpack(body, at)
        at += LENGTH.size
        records.append(body[at : at + size])
        at += size
    if at != len(body):
        raise ValueError(f"chunk body holds {len(body) - at} bytes past its last record")
    return records


@dataclass(frozen=True, slots=True)
class JournalHeader:
    """What a journal chunk says without being decompressed."""

    segments: list[Segment]
    # (FIFO number, FIFO name) of the FIFOs this commit created, so that a restart which
    # replays the chunk knows whose readings they are.
    names: list[tuple[int, str]]
    body_at: int
    # (key, value) notes written with this commit, each replacing the key's earlier value.
    notes: list[tuple[bytes, bytes]]


def encode_journal(
    segments: Sequence[Segment],
    groups: Sequence[Sequence[bytes]],
    names: Sequence[tuple[int, str]] = (),
    notes: Sequence[tuple[bytes, bytes]] = (),
) -> bytes:
    """A journal chunk: `groups[i]` are the records of `segments[i]`."""
    parts = [COUNT.pack(len(segments))]
    parts.extend(
        SEGMENT.pack(s.number, s.first, s.count, s.nbytes, s.first_ts_ns) for s in segments
    )
    parts.append(COUNT.pack(len(names) | (NOTES_FLAG if notes else 0)))
    for number, name in names:
        encoded = name.encode()
        parts.append(NAME.pack(number, len(encoded)) + encoded)
    if notes:
        parts.append(COUNT.pack(len(notes)))
        parts.extend(NOTE.pack(len(key), len(value)) + key + value for key, value in notes)
    parts.append(_body(groups))
    return b"".join(parts)


def journal_header(value: bytes | memoryview) -> JournalHeader:
    """The segments and new FIFO names of a journal chunk, read from its header alone."""
    (n,) = COUNT.unpack_from(value)
    at = COUNT.size + n * SEGMENT.size
    segments = [Segment(*f) for f in SEGMENT.iter_unpack(value[COUNT.size : at])]
    (n_names,) = COUNT.unpack_from(value, at)
    at += COUNT.size
    names = []
    for _ in range(n_names & ~NOTES_FLAG):
        number, size = NAME.unpack_from(value, at)
        at += NAME.size
        names.append((number, bytes(value[at : at + size]).decode()))
        at += size
    notes = []
    if n_names & NOTES_FLAG:
        (n_notes,) = COUNT.unpack_from(value, at)
        at += COUNT.size
        for _ in range(n_notes):
            key_size, value_size = NOTE.unpack_from(value, at)
            at += NOTE.size
            key = bytes(value[at : at + key_size])
            at += key_size
            notes.append((key, bytes(value[at : at + value_size])))
            at += value_size
    return JournalHeader(segments, names, at, notes)


def journal_records(value: bytes | memoryview) -> tuple[list[Segment], list[list[bytes]]]:
    """The segments of a journal chunk and each one's records."""
    header = journal_header(value)
    records = _records(value[header.body_at :], sum(s.count for s in header.segments))
    groups, at = [], 0
    for segment in header.segments:
        groups.append(records[at : at + segment.count])
        at += segment.count
    return header.segments, groups


def encode_sealed(records: Sequence[bytes]) -> bytes:
    """A sealed chunk of consecutive readings of one device."""
    return COUNT.pack(len(records)) + _body([records])


def sealed_count(value: bytes | memoryview) -> int:
    """How many readings a sealed chunk holds, from its header alone."""
    count: int = COUNT.unpack_from(value)[0]
    return count


def sealed_records(value: bytes | memoryview) -> list[bytes]:
    """The records of a sealed chunk, in sequence order."""
    return _records(value[COUNT.size :], sealed_count(value))
