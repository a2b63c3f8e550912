"""The buffer's stored values: many readings in one compressed chunk.

Pure. Two kinds, both a small uncompressed header and one zstandard frame of length-prefixed
packed records (gateway/points/record.py):
- a journal chunk holds one group commit's readings of every device it touched, one segment per
  device (its FIFO number, first sequence, count, bytes as accounted, timestamp of its first
  reading), so start-up can rebuild the accounting from headers without decompressing;
- a sealed chunk holds a run of one device's readings with consecutive sequences; its key says
  whose and from which sequence, so its header is only the count.

A journal chunk may also carry, inside its compressed frame after the records, the accounting
(head, gap, readings, bytes...) of FIFOs whose head or gap moved since the previous journal
chunk: deliveries between commits and drops within this one. Start-up sets those states after
the chunk's appends, so deliveries reach the disk with the next group commit at no write of
their own.

Both kinds end with a CRC-32 of every byte before it (DESIGN invariant 12): a flag bit says so,
so chunks written before checksums read as ever. `zlib.crc32` is the standard library's: it finds
every burst of up to 32 damaged bits and any other damage but one in 2**32, and runs over the
compressed bytes (kilobytes per chunk) far faster than zstandard decompresses them, so a second
checksum library (CRC-32C, xxHash) would buy nothing measurable and cost a dependency.

Line protocol of one device compresses several-fold, and readings of many devices side by side
compress nearly as well (they share measurement, tag and field names), which is why one chunk per
commit, not per device, is what the journal writes.
"""

from __future__ import annotations

import struct
import zlib
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
# Likewise: the frame holds FIFO states after the records, and the chunk ends with its checksum.
STATES_FLAG = 0x4000_0000
CHECKSUM_FLAG = 0x2000_0000
_NAME_FLAGS = NOTES_FLAG | STATES_FLAG | CHECKSUM_FLAG
# A sealed chunk with a checksum sets this bit in its count (at most SEALED_CHUNK_READINGS).
SEALED_CHECKSUM_FLAG = 0x8000_0000
NOTE = struct.Struct(">HI")
CHECKSUM = struct.Struct(">I")
# A FIFO's state carried by a journal chunk: number, head, next, readings, bytes, oldest
# timestamp, gap start, gap end, newest timestamp (gateway/buffer/core/ledger.py DeviceState).
STATE = struct.Struct(">IQQQQqQQq")
State = tuple[int, int, int, int, int, int, int, int, int]
# The fastest level; higher levels were not measured against it yet.
LEVEL = 1

_compress = zstandard.ZstdCompressor(level=LEVEL).compress
_decompress = zstandard.ZstdDecompressor().decompress
# What reading a damaged chunk may raise besides a checksum mismatch (ValueError).
DECODE_ERRORS = (ValueError, struct.error, zstandard.ZstdError, IndexError)


def _checksum(data: bytes | memoryview) -> bytes:
    return CHECKSUM.pack(zlib.crc32(data))


def _verified(value: bytes | memoryview, end: int) -> None:
    """Raise ValueError unless the checksum after `value[:end]` matches it."""
    if end < 0 or bytes(value[end : end + CHECKSUM.size]) != _checksum(value[:end]):
        raise ValueError("chunk checksum mismatch")


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


def _body(groups: Sequence[Sequence[bytes]], trailer: Sequence[bytes] = ()) -> bytes:
    # Length prefixes and records joined once: no intermediate bytes per record.
    pack = LENGTH.pack
    parts: list[bytes] = []
    add = parts.append
    for records in groups:
        for record in records:
            add(pack(len(record)))
            add(record)
    parts.extend(trailer)
    return _compress(b"".join(parts))


def _records(
    frame: bytes | memoryview, count: int, *, rest: bool = False
) -> tuple[list[bytes], bytes]:
    """The `count` records of a frame, and what follows them (only allowed with `rest`)."""
    body = _decompress(bytes(frame))
    records, at, unpack = [], 0, LENGTH.unpack_from
    for _ in range(count):
        (size,) = unpack(body, at)
        at += LENGTH.size
        if at + size > len(body):
            raise ValueError("chunk record runs past the chunk's body")
        records.append(body[at : at + size])
        at += size
    if at != len(body) and not rest:
        raise ValueError(f"chunk body holds {len(body) - at} bytes past its last record")
    return records, body[at:]


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
    # Where the compressed frame ends (the checksum follows it, if any).
    body_end: int = -1
    has_states: bool = False


def encode_journal(
    segments: Sequence[Segment],
    groups: Sequence[Sequence[bytes]],
    names: Sequence[tuple[int, str]] = (),
    notes: Sequence[tuple[bytes, bytes]] = (),
    states: Sequence[State] = (),
) -> bytes:
    """A journal chunk: `groups[i]` are the records of `segments[i]`.

    `states`: FIFO states that start-up sets after this chunk's appends (see the docstring).
    """
    parts = [COUNT.pack(len(segments))]
    parts.extend(
        SEGMENT.pack(s.number, s.first, s.count, s.nbytes, s.first_ts_ns) for s in segments
    )
    flags = CHECKSUM_FLAG | (NOTES_FLAG if notes else 0) | (STATES_FLAG if states else 0)
    parts.append(COUNT.pack(len(names) | flags))
    for number, name in names:
        encoded = name.encode()
        parts.append(NAME.pack(number, len(encoded)) + encoded)
    if notes:
        parts.append(COUNT.pack(len(notes)))
        parts.extend(NOTE.pack(len(key), len(value)) + key + value for key, value in notes)
    trailer = [COUNT.pack(len(states)), *(STATE.pack(*state) for state in states)] if states else []
    parts.append(_body(groups, trailer))
    chunk = b"".join(parts)
    return chunk + _checksum(chunk)


def journal_header(value: bytes | memoryview, *, verify: bool = False) -> JournalHeader:
    """The segments and new FIFO names of a journal chunk, read from its header alone.

    `verify`: check the whole chunk's checksum first (a chunk from before checksums passes).

    Raises:
        ValueError: the chunk is damaged (see DECODE_ERRORS for what else a damaged one raises).
    """
    (n,) = COUNT.unpack_from(value)
    at = COUNT.size + n * SEGMENT.size
    if at > len(value):
        raise ValueError("journal chunk header runs past the chunk")
    (n_names,) = COUNT.unpack_from(value, at)
    body_end = len(value) - CHECKSUM.size if n_names & CHECKSUM_FLAG else len(value)
    if verify and n_names & CHECKSUM_FLAG:
        _verified(value, body_end)
    segments = [Segment(*f) for f in SEGMENT.iter_unpack(value[COUNT.size : at])]
    at += COUNT.size
    names = []
    for _ in range(n_names & ~_NAME_FLAGS):
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
    if at > body_end:
        raise ValueError("journal chunk header runs past the chunk")
    return JournalHeader(segments, names, at, notes, body_end, bool(n_names & STATES_FLAG))


def journal_records(value: bytes | memoryview) -> tuple[list[Segment], list[list[bytes]]]:
    """The segments of a journal chunk and each one's records, its checksum verified.

    Raises:
        ValueError: the chunk is damaged (see DECODE_ERRORS for what else a damaged one raises).
    """
    segments, groups, _ = journal_contents(value)
    return segments, groups


def journal_contents(
    value: bytes | memoryview,
) -> tuple[list[Segment], list[list[bytes]], list[State]]:
    """`journal_records` and the FIFO states the chunk carries."""
    header = journal_header(value, verify=True)
    records, rest = _records(
        value[header.body_at : header.body_end],
        sum(s.count for s in header.segments),
        rest=header.has_states,
    )
    states: list[State] = []
    if header.has_states:
        (n,) = COUNT.unpack_from(rest)
        if COUNT.size + n * STATE.size != len(rest):
            raise ValueError("journal chunk states do not fill its body")
        states = list(STATE.iter_unpack(rest[COUNT.size :]))
    groups, at = [], 0
    for segment in header.segments:
        groups.append(records[at : at + segment.count])
        at += segment.count
    return header.segments, groups, states


def encode_sealed(records: Sequence[bytes]) -> bytes:
    """A sealed chunk of consecutive readings of one device, ending with its checksum."""
    chunk = COUNT.pack(len(records) | SEALED_CHECKSUM_FLAG) + _body([records])
    return chunk + _checksum(chunk)


def sealed_count(value: bytes | memoryview) -> int:
    """How many readings a sealed chunk holds, from its header alone (trust it if intact)."""
    count: int = COUNT.unpack_from(value)[0]
    return count & ~SEALED_CHECKSUM_FLAG


def is_sealed_intact(value: bytes | memoryview) -> bool:
    """Whether a sealed chunk's checksum matches (a chunk from before checksums: True)."""
    if len(value) < COUNT.size:
        return False
    if not COUNT.unpack_from(value)[0] & SEALED_CHECKSUM_FLAG:
        return True
    end = len(value) - CHECKSUM.size
    return end >= COUNT.size and bytes(value[end:]) == _checksum(value[:end])


def sealed_records(value: bytes | memoryview) -> list[bytes]:
    """The records of a sealed chunk, in sequence order, its checksum verified.

    Raises:
        ValueError: the chunk is damaged (see DECODE_ERRORS for what else a damaged one raises).
    """
    if not is_sealed_intact(value):
        raise ValueError("sealed chunk checksum mismatch")
    flagged = COUNT.unpack_from(value)[0] & SEALED_CHECKSUM_FLAG
    end = len(value) - CHECKSUM.size if flagged else len(value)
    return _records(value[COUNT.size : end], sealed_count(value))[0]
