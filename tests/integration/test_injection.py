"""Injection, end to end: hostile topics and payloads leave in influxd exactly the measurements,
tag keys and field keys that the accepted readings define, and nothing else; and no message,
however hostile, stops the gateway.
"""

from __future__ import annotations

import json
import random
import time
from typing import TYPE_CHECKING

import pytest

from gateway.config import loader as config
from gateway.ingest.core.decode import Decoder
from tests.gatewayproc import publish_messages, wait_for

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.conftest import InfluxV1
    from tests.gatewayproc import GatewayProcess

pytestmark = pytest.mark.integration

SUBSCRIPTIONS = """
[[mqtt.subscriptions]]
topic = "{run}/j/{{device}}/{{measurement}}"
format = "json"
[[mqtt.subscriptions]]
topic = "{run}/l/{{site}}/{{device}}"
format = "line"
[[mqtt.subscriptions]]
topic = "{run}/v/{{device}}"
measurement = "level"
format = "value"
"""
# What line protocol, JSON, MQTT and InfluxQL treat specially, and some text that is not ASCII.
PIECES = [
    ",", " ", "=", '"', "\\", "\n", "\r", "\t", "#", "'", "+", "/", "\x00", "\x7f", "time",
    "_field", "device", "m", "x", "é", "温度", "🌡", "a b", "k=v", "1i", "true", "-", "",
]  # fmt: skip
# MQTT forbids wildcards in the topic of a PUBLISH; Mosquitto also drops a client that sends a
# control character in a topic (the decoders meet those in tests/unit/ingest/test_hostile_input.py);
# a "/" would add a level that the gateway's subscriptions do not ask the broker for.
TOPIC_PIECES = [p for p in PIECES if p not in {"+", "#", "/"} and p.isprintable()]
CAMPAIGN = 600


def hostile(rng: random.Random, most: int = 4, pieces: list[str] = PIECES) -> str:
    return "".join(rng.choice(pieces) for _ in range(rng.randint(1, most)))


def level(rng: random.Random) -> str:
    return hostile(rng, pieces=TOPIC_PIECES)


def campaign(run_id: str, now_ms: int, seed: int = 7) -> list[tuple[str, bytes]]:
    """A reproducible mix of hostile topics and payloads in every format."""
    rng = random.Random(seed)
    messages: list[tuple[str, bytes]] = []
    for n in range(CAMPAIGN):
        kind = rng.choice("jjlv")
        device = level(rng) if rng.random() < 0.5 else f"dev-{n % 7}"
        if kind == "j":
            obj: dict[str, object] = {hostile(rng): rng.choice([1.5, "s", True, None, [1]])}
            obj["ts"] = now_ms - n
            if rng.random() < 0.3:
                obj["tags"] = {hostile(rng): hostile(rng)}
            if rng.random() < 0.2:
                obj[hostile(rng)] = hostile(rng, 8)
            topic = f"{run_id}/j/{device}/{level(rng)}"
            payload = json.dumps(obj, ensure_ascii=rng.random() < 0.5).encode()
        elif kind == "l":
            line = (
                f"{hostile(rng)},{hostile(rng)}={hostile(rng)} {hostile(rng)}={hostile(rng)} "
                f"{(now_ms - n) * 10**6}"
            )
            topic = f"{run_id}/l/{level(rng)}/{device}"
            payload = line.encode()
        else:
            topic = f"{run_id}/v/{device}"
            payload = rng.choice([b"12.5", b"1e400", b"nan", b"7", hostile(rng).encode()])
        messages.append((topic, payload))
    return messages


def test_hostile_campaign_leaves_only_what_accepted_readings_define(
    gateway: Callable[..., GatewayProcess], mosquitto: object, influx: InfluxV1, run_id: str
) -> None:
    gw = gateway(influx.config, SUBSCRIPTIONS.format(run=run_id))
    now_ms = time.time_ns() // 10**6
    messages = campaign(run_id, now_ms)
    settings = config.load(gw.config_path, {})
    decoder = Decoder(settings.mqtt.subscriptions, settings.limits)
    accepted = [
        r
        for topic, payload in messages
        for r in decoder.decode(topic, payload, now_ms * 10**6).readings
    ]
    assert 50 < len(accepted) < len(messages)  # the campaign exercises both sides
    publish_messages(mosquitto.port, messages)  # type: ignore[attr-defined]
    wait_for(
        lambda: gw.metrics()["gateway_mqtt_messages_total"] >= len(messages),
        60,
        "every message received",
    )
    wait_for(
        lambda: gw.readings("delivered") + gw.readings("dead_lettered") == gw.readings("accepted"),
        60,
        "everything accepted to be written",
    )
    assert gw.readings("accepted") == len(accepted)

    expected_tags: dict[str, set[str]] = {}
    expected_fields: dict[str, set[str]] = {}
    for reading in accepted:
        expected_tags.setdefault(reading.measurement, set()).update(k for k, _ in reading.tags)
        expected_fields.setdefault(reading.measurement, set()).update(k for k, _ in reading.fields)
    measurements = {row[0] for s in influx.query("SHOW MEASUREMENTS") for row in s["values"]}
    assert measurements == set(expected_tags)
    stored_tags = {
        s["name"]: {row[0] for row in s["values"]} for s in influx.query("SHOW TAG KEYS")
    }
    stored_fields = {
        s["name"]: {row[0] for row in s["values"]} for s in influx.query("SHOW FIELD KEYS")
    }
    assert stored_tags == {m: keys for m, keys in expected_tags.items() if keys}
    assert stored_fields == expected_fields


# Messages that must each be refused whole, by format: what crashed or stalled the gateway once
# (lone surrogate escapes, digit bombs, long digit runs), and their relatives.
DIGITS = b"1" * (200 << 10)
REFUSED = {
    "j": [
        b'{"ts": 1700000000000, "note": "\\ud800"}',
        b'{"\\udfff": 1}',
        b'{"v": 1, "tags": {"t": "\\udbff"}}',
        b'{"v": 1, "tags": {"\\ud800": "x"}}',
        b'{"s": "\\ude00\\ud83d"}',
        b'{"k\\u0000": 1}',
        b'{"v": ' + b"9" * 5000 + b"}",
        b'{"s": "\xc0\xaf"}',
        b'{"s": "\xe2\x82"}',
        b'{"s": "\xed\xa0\x80"}',
        b"\xef\xbb\xbf\xef\xbb\xbf{}",
        b'{"device": 1}',
        b'{"time": 1}',
        b"[" * 5000 + b"]" * 5000,
    ],
    "l": [
        b"m f=" + b"1" * 5000 + b"i",
        b"m f=" + DIGITS + b"x",
        b"m f=1,f=2",
        b"m,t=\xed\xa0\x80 f=1",
        b"m\\ f=1",
        b"# only a comment",
    ],
    "v": [DIGITS + b"x", b"1e400", b"nan", b"\xff"],
}


def test_a_stream_of_hostile_messages_never_stops_the_gateway(
    gateway: Callable[..., GatewayProcess], mosquitto: object, influx: InfluxV1, run_id: str
) -> None:
    """Each hostile message, followed by a good reading: the gateway lives, every good reading
    lands, and the database holds only the measurements, tags and fields the good ones define.
    """
    gw = gateway(influx.config, SUBSCRIPTIONS.format(run=run_id))
    topic_of = {
        "j": f"{run_id}/j/dev-h/m",
        "l": f"{run_id}/l/site/dev-h",
        "v": f"{run_id}/v/dev-h",
    }
    settings = config.load(gw.config_path, {})
    decoder = Decoder(settings.mqtt.subscriptions, settings.limits)
    now_ms = time.time_ns() // 10**6
    stream: list[tuple[str, bytes]] = []
    hostile_count = 0
    for rounds in range(3):
        for kind, payloads in REFUSED.items():
            for payload in payloads:
                assert not decoder.decode(topic_of[kind], payload, now_ms * 10**6).readings
                n = len(stream) // 2
                reading = {"ts": now_ms - 100_000 + n, "temp": n, "round": rounds}
                stream += [
                    (topic_of[kind], payload),
                    (f"{run_id}/j/dev-good/telemetry", json.dumps(reading).encode()),
                ]
                hostile_count += 1
    publish_messages(mosquitto.port, stream)  # type: ignore[attr-defined]
    goods = len(stream) // 2
    wait_for(lambda: gw.readings("delivered") >= goods, 60, f"{goods} good readings delivered")
    assert gw.process is not None
    assert gw.process.poll() is None
    assert gw.readings("accepted") == goods
    assert gw.readings("invalid") == hostile_count
    series = influx.query('SELECT "temp" FROM "telemetry"')
    assert sorted(int(row[1]) for s in series for row in s["values"]) == list(range(goods))
    measurements = {row[0] for s in influx.query("SHOW MEASUREMENTS") for row in s["values"]}
    assert measurements == {"telemetry"}
    (tags,) = influx.query("SHOW TAG KEYS")
    assert {row[0] for row in tags["values"]} == {"device"}
    (fields,) = influx.query("SHOW FIELD KEYS")
    assert {row[0] for row in fields["values"]} == {"temp", "round"}
    assert "Traceback" not in gw.log()
    assert gw.stop() == 0


def test_names_as_long_as_the_limits_allow_are_stored_and_checkpointed(
    gateway: Callable[..., GatewayProcess], mosquitto: object, influx: InfluxV1, run_id: str
) -> None:
    """A device name of 400 bytes and a series past LMDB's 511-byte keys are taken, delivered
    and checkpointed; a device name one character longer is refused, and the gateway lives.
    """
    gw = gateway(influx.config, SUBSCRIPTIONS.format(run=run_id))
    longest = "\U0001f321" * 100
    site = "s" * 256
    messages = [
        (f"{run_id}/v/{longest}", b"1.5"),
        (f"{run_id}/l/{site}/{longest}", b"m," + b"t" * 200 + b"=" + b"v" * 256 + b" x=2"),
        (f"{run_id}/v/{longest}\U0001f321", b"3.5"),
        (f"{run_id}/v/dev-after", b"4.5"),
    ]
    publish_messages(mosquitto.port, messages)  # type: ignore[attr-defined]
    wait_for(lambda: gw.readings("delivered") >= 3, 60, "the three valid readings delivered")
    assert (gw.readings("accepted"), gw.readings("invalid")) == (3, 1)
    levels = influx.query('SELECT "value" FROM "level" GROUP BY "device"')
    assert {s["tags"]["device"]: s["values"][0][1] for s in levels} == {
        longest: 1.5,
        "dev-after": 4.5,
    }
    (m,) = influx.query('SELECT "x" FROM "m"')
    assert m["values"][0][1] == 2
    assert gw.stop() == 0
    assert "checkpoint" not in gw.log()
