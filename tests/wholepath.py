"""The whole ingest-to-write path, without servers: what the property tests and the fuzzer run.

Raw (topic, payload) bytes go where the gateway takes them: the topic decoded as paho decodes it,
`Decoder.decode`, `record.pack` (the buffer's stored form, optionally through a real buffer),
`record.split`, the flusher's `coalesce`, the write body's bytes, and a strict parse of those bytes.
The contract: nothing raises; a message yields readings or counted errors; and what the body
says is exactly the accepted readings, coalesced as the design says (same series and timestamp
merge, a later field value wins, everything else is kept).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.config.mqtt import Subscription
from gateway.config.sections import LimitSettings
from gateway.flush.core.coalesce import coalesce
from gateway.points.lineparse import parse_lines
from gateway.points.record import pack, split

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from gateway.ingest.core.decode import Decoder
    from gateway.points.model import FieldValue, Reading

NOW_NS = 1_750_000_000_000_000_000
# The limits a gateway has when its configuration names none.
LIMITS = LimitSettings()
SUBSCRIPTIONS = [
    Subscription(topic="j/{device}/{measurement}", format="json"),
    Subscription(topic="l/{site}/{device}", format="line"),
    Subscription(topic="v/{device}", measurement="level", format="value"),
    Subscription(topic="i/{device}", measurement="count", format="value", integers="int"),
]
# The topic prefixes of those subscriptions, and one that fits none.
PREFIXES = ("j/", "l/", "v/", "i/", "")

Point = tuple[str, tuple[tuple[str, str], ...], tuple[tuple[str, "FieldValue"], ...], int]


def split_message(data: bytes) -> tuple[bytes, bytes]:
    """A fuzzer input as (topic, payload): prefix choice, topic bytes, NUL, payload.

    MQTT forbids U+0000 in topics, so NUL is free to separate; the seed corpus uses this form.
    """
    if not data:
        return b"", b""
    prefix = PREFIXES[data[0] % len(PREFIXES)].encode()
    topic, _, payload = data[1:].partition(b"\0")
    return prefix + topic, payload


def expected_points(readings: Sequence[Reading]) -> list[Point]:
    """What the database should receive for these readings, coalesced."""
    merged: dict[tuple[str, tuple[tuple[str, str], ...], int], dict[str, FieldValue]] = {}
    for r in readings:
        merged.setdefault((r.measurement, r.tags, r.ts_ns), {}).update(r.fields)
    return [(m, tags, tuple(fields.items()), ts) for (m, tags, ts), fields in merged.items()]


def check_message(
    decoder: Decoder,
    topic: bytes,
    payload: bytes,
    store: Callable[[list[bytes]], list[bytes]] | None = None,
    *,
    sparkplug: bool = False,
) -> int:
    """Run one message through the path and assert the contract; the readings it gave.

    `store` takes the packed records and returns them as the buffer gives them back.
    `sparkplug`: a Sparkplug B message, which may hold no reading (deaths, commands) and whose
    device is its group/edge node[/device], each a tag.
    """
    try:
        text = topic.decode()  # paho decodes strictly; ingest counts a failure as `not_utf8`
    except UnicodeDecodeError:
        return 0
    result = decoder.decode(text, payload, NOW_NS)
    assert result.readings or result.errors or sparkplug, "neither accepted nor counted"
    if not result.readings:
        return 0
    packed = [pack(r) for r in result.readings]
    if store is not None:
        packed = store(packed)
    lines, sources = coalesce([split(value) for value in packed])
    assert sorted(i for s in sources for i in s) == list(range(len(packed)))
    body = b"\n".join(lines)
    parsed = [
        (m, tuple(tags), tuple(fields), ts) for m, tags, fields, ts in parse_lines(body.decode())
    ]
    assert parsed == expected_points(result.readings)
    for reading in result.readings:
        tags = dict(reading.tags)
        if sparkplug:
            scope = [
                tags["group"],
                tags["edge_node"],
                *([tags["device"]] if "device" in tags else []),
            ]
            assert "/".join(scope) == reading.device
        else:
            assert tags["device"] == reading.device
    return len(result.readings)
