"""Coalescing: readings of one series and timestamp become one point; later field values win.

Readings with different timestamps are all kept (history is never collapsed). Works on the
encoded form (`record.Stored`), so the common case, no duplicates, costs one dict lookup per
reading; only duplicates are split into fields and merged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from gateway.points.record import Stored

_BACKSLASH, _QUOTE, _EQUALS, _COMMA = b"\\"[0], b'"'[0], b"="[0], b","[0]


def coalesce(readings: Sequence[Stored]) -> tuple[list[bytes], list[list[int]]]:
    """Lines for a write body, and for each line the indices of the readings merged into it.

    Lines keep the order in which their series and timestamp first appear.
    """
    first_at: dict[tuple[bytes, int], int] = {}
    parts: list[list[bytes]] = []
    sources: list[list[int]] = []
    for i, reading in enumerate(readings):
        key = (reading.series, reading.ts_ns)
        j = first_at.get(key)
        if j is None:
            first_at[key] = len(parts)
            parts.append([reading.fields])
            sources.append([i])
        else:
            parts[j].append(reading.fields)
            sources[j].append(i)
    lines = []
    for fields_list, indices in zip(parts, sources, strict=True):
        first = readings[indices[0]]
        fields = fields_list[0] if len(fields_list) == 1 else merge_fields(fields_list)
        lines.append(b"%s %s %d" % (first.series, fields, first.ts_ns))
    return lines, sources


def merge_fields(fields_list: Sequence[bytes]) -> bytes:
    """Encoded field sets merged in order: a later value of a key replaces the earlier one."""
    merged = {key: segment for fields in fields_list for key, segment in split_fields(fields)}
    return b",".join(merged.values())


def split_fields(fields: bytes) -> list[tuple[bytes, bytes]]:
    """(escaped key, `key=value` segment) pairs of an encoded field set.

    Commas inside quoted strings and escaped characters do not split.
    """
    out = []
    start, key_end, in_string, i = 0, -1, False, 0
    while i < len(fields):
        c = fields[i]
        if c == _BACKSLASH:
            i += 2
            continue
        if c == _QUOTE and key_end >= 0:  # a quote in a key is literal; in a value it delimits
            in_string = not in_string
        elif not in_string and c == _EQUALS and key_end < 0:
            key_end = i
        elif not in_string and c == _COMMA:
            out.append((fields[start:key_end], fields[start:i]))
            start, key_end = i + 1, -1
        i += 1
    out.append((fields[start:key_end], fields[start:]))
    return out
