"""`gateway try`: what a message would become, shown without a broker, a buffer or a database.

The message goes through the gateway's own decoder (topic templates, limits, validation) and
the stored form and coalescing the flusher uses, so the line protocol shown is the line
protocol that would be written. Refusals are shown with the reason counted in
`gateway_readings_total{outcome="invalid"}` and logged in `gateway rejects`. Sparkplug B
messages are read against the edge nodes' state that the buffer holds (opened read-only, if
there is one), and the messages of one run share what their BIRTHs define. So do deadbands:
each reading of a class with one is shown kept or suppressed, and why, judged against the
readings of the run kept before it (the run starts with no state, as the gateway does).
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.buffer.environment import DATA_FILE
from gateway.buffer.store import Buffer
from gateway.errors import StorageError
from gateway.flush.core.coalesce import coalesce
from gateway.ingest.core.deadband import Deadbands
from gateway.ingest.core.decode import Decoder
from gateway.points.record import pack, split
from gateway.sparkplug.core.session import NOTE_PREFIX

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from pathlib import Path

    from gateway.config.settings import Settings


@dataclass
class Outcome:
    """One message tried: its readings, their line protocol, and each refusal."""

    topic: str
    device_class: str = ""
    readings: list[dict[str, Any]] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)
    # One per reading when its class has a deadband: "kept: why" or "suppressed: why".
    deadband: list[str] = field(default_factory=list)

    @property
    def stored(self) -> int:
        """How many of the readings would be stored."""
        return len(self.readings) - sum(d.startswith("suppressed") for d in self.deadband)


def try_messages(settings: Settings, messages: Iterable[tuple[str, bytes]]) -> list[Outcome]:
    """Decode and encode (topic, payload) messages in order, as the gateway would now."""
    decoder = Decoder(settings.mqtt.subscriptions, settings.limits, settings.sparkplug)
    if decoder.sparkplug is not None:
        decoder.sparkplug.sessions.load(_stored_sparkplug_state(settings))
    deadbands = Deadbands.of(settings.mqtt.subscriptions)
    return [_try(decoder, deadbands, topic, payload) for topic, payload in messages]


def stored_line(outcomes: list[Outcome]) -> str | None:
    """The line "N of M readings would be stored", when a deadband judged some; else None."""
    if not any(o.deadband for o in outcomes):
        return None
    total = sum(len(o.readings) for o in outcomes)
    return f"{sum(o.stored for o in outcomes)} of {total} readings would be stored"


def _stored_sparkplug_state(settings: Settings) -> dict[bytes, bytes]:
    """The Sparkplug B state the buffer holds; none when there is no buffer to read."""
    path = settings.buffer.path
    if not (path / DATA_FILE).exists():
        return {}
    try:
        with Buffer(path, int(settings.buffer.capacity), readonly=True) as buffer:
            return buffer.notes(NOTE_PREFIX)
    except StorageError:
        return {}


def _try(decoder: Decoder, deadbands: Deadbands, topic: str, payload: bytes) -> Outcome:
    decoded = decoder.decode(topic, payload, time.time_ns())
    outcome = Outcome(topic, decoded.device_class)
    kept = decoded.readings
    if decoded.readings and deadbands.rule_for(decoded.device_class) is not None:
        judged = deadbands.judge(decoded.device_class, decoded.readings, explain=True)
        marks = [j.mark for j in judged if j.mark is not None]
        # As if committed at once: the next message is judged against these.
        deadbands.stage(marks)
        deadbands.settle(marks, clean=True)
        outcome.deadband = [f"{'kept' if j.keep else 'suppressed'}: {j.why}" for j in judged]
        kept = [r for r, j in zip(decoded.readings, judged, strict=True) if j.keep]
    for reading in decoded.readings:
        outcome.readings.append(
            {
                "device": reading.device,
                "measurement": reading.measurement,
                "tags": dict(reading.tags),
                "fields": dict(reading.fields),
                "ts_ns": reading.ts_ns,
            }
        )
    lines, _ = coalesce([split(pack(reading)) for reading in kept])
    outcome.lines = [line.decode() for line in lines]
    outcome.refused = [(error.reason, error.detail) for error in decoded.errors]
    return outcome


def samples(path: Path) -> Iterator[tuple[str, bytes]]:
    """(topic, payload) of each line of a samples file.

    A line is a JSON object with `topic` and `payload` (text) or `payload_base64` (bytes);
    blank lines and lines starting with `#` are skipped.

    Raises:
        ValueError: naming the line that is not such an object.
    """
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            sample = json.loads(line)
            topic = sample["topic"]
            if not isinstance(topic, str):
                raise TypeError(f"topic is {type(topic).__name__}, not a string")  # noqa: TRY301 - reported with the line below
            if "payload_base64" in sample:
                payload = base64.b64decode(sample["payload_base64"], validate=True)
            else:
                payload = str(sample["payload"]).encode()
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise ValueError(
                f"{path}:{number}: not a sample ({type(exc).__name__}: {exc}); expected "
                '{"topic": "...", "payload": "..."} or "payload_base64"'
            ) from None
        yield topic, payload


def render(outcome: Outcome) -> str:
    """The human-readable account of one message."""
    out = [f"topic {outcome.topic!r}"]
    if outcome.readings:
        out.append(f"  {len(outcome.readings)} reading(s), device class {outcome.device_class!r}:")
        for i, r in enumerate(outcome.readings):
            tags = ", ".join(f"{k}={v!r}" for k, v in r["tags"].items())
            fields = ", ".join(f"{k}={v!r}" for k, v in r["fields"].items())
            out.append(f"    {r['measurement']} [{tags}] {fields} @ {r['ts_ns']}")
            if outcome.deadband:
                out.append(f"      deadband: {outcome.deadband[i]}")
        out.append(
            "  line protocol:" if outcome.lines else "  line protocol: none (all suppressed)"
        )
        out += [f"    {line}" for line in outcome.lines]
    for reason, detail in outcome.refused:
        out.append(f"  refused ({reason}): {detail}")
    if not outcome.readings and not outcome.refused:
        out.append("  nothing: the message holds no reading")
    return "\n".join(out)


def as_json(outcome: Outcome) -> dict[str, Any]:
    """The account as plain data (`--json`)."""
    return {
        "topic": outcome.topic,
        "device_class": outcome.device_class,
        "readings": outcome.readings,
        "line_protocol": outcome.lines,
        "refused": [{"reason": r, "detail": d} for r, d in outcome.refused],
        "deadband": outcome.deadband,
        "stored_readings": outcome.stored,
    }
