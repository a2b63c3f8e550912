"""The sensor simulator: K devices publishing the default JSON payload at a total rate.

Device `dev-<k>` sends reading i with timestamp `start_ms + i` (milliseconds), so every
(device, ts) pair is unique and a test can recompute each reading's values from it.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from typing import TextIO

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

# How many QoS 1/2 publishes may await their acknowledgement at once; paho's default of 20 would
# make the simulator, not the gateway, the bottleneck.
MAX_INFLIGHT = 1000


@dataclass(frozen=True, slots=True)
class Plan:
    """What to publish."""

    host: str = "127.0.0.1"
    port: int = 1883
    devices: int = 10
    rate: float = 1000.0  # readings per second, all devices together; 0 means as fast as possible
    count: int | None = 10_000  # total readings; None means until `duration_s`
    duration_s: float | None = None
    qos: int = 1
    topic: str = "sensors/{device}/telemetry"
    per_message: int = 1  # readings per message; above 1 the payload is a JSON array
    start_ms: int | None = None
    client_id: str = "gateway-simulator"
    # Readings of the sequence an earlier run published already: go on from there.
    skip: int = 0


@dataclass(frozen=True, slots=True)
class Result:
    """What a run published and how long it took."""

    published: int
    elapsed_s: float


def device_name(k: int) -> str:
    """The name of simulated device k."""
    return f"dev-{k}"


def values(k: int, i: int) -> dict[str, float]:
    """The field values of device k's reading i; tests recompute them to check what landed."""
    return {"temp": round(15.0 + (k * 7 + i) % 200 / 10, 1), "hum": round(30.0 + i % 500 / 10, 1)}


def run(plan: Plan, out: TextIO | None = sys.stdout) -> Result:
    """Publish per `plan`, printing progress each second unless `out` is None."""
    start_ms = plan.start_ms if plan.start_ms is not None else time.time_ns() // 10**6
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=plan.client_id, protocol=mqtt.MQTTv5
    )
    client.max_inflight_messages_set(MAX_INFLIGHT)
    client.max_queued_messages_set(0)
    client.connect(plan.host, plan.port, keepalive=60)
    client.loop_start()
    pending: list[mqtt.MQTTMessageInfo] = []
    started = last_report = time.monotonic()
    sent_per_device = [0] * plan.devices
    published = 0
    while published < plan.skip:
        k, n = _next_message(plan, published)
        sent_per_device[k] += n
        published += n
    try:
        while not _is_done(plan, published, started):
            done = published - plan.skip
            if plan.rate > 0 and (wait := started + done / plan.rate - time.monotonic()) > 0:
                time.sleep(min(wait, 0.05))
                continue
            k, n = _next_message(plan, published)
            payload = _payload(plan, k, sent_per_device, n, start_ms)
            info = client.publish(plan.topic.format(device=device_name(k)), payload, qos=plan.qos)
            if plan.qos:
                pending.append(info)
                if len(pending) >= MAX_INFLIGHT * 4:
                    _wait(pending)
            published += n
            if out is not None and time.monotonic() - last_report >= 1:
                last_report = time.monotonic()
                rate = (published - plan.skip) / (last_report - started)
                print(
                    f"simulate: published {published} readings ({rate:.0f}/s)", file=out, flush=True
                )
        _wait(pending)
    finally:
        client.loop_stop()
        client.disconnect()
    elapsed = time.monotonic() - started
    published -= plan.skip
    if out is not None:
        print(
            f"simulate: done, {published} readings from {plan.devices} devices in {elapsed:.1f} s",
            file=out,
            flush=True,
        )
    return Result(published, elapsed)


def _next_message(plan: Plan, published: int) -> tuple[int, int]:
    """The device and the number of readings of the message after `published` readings."""
    k = published // plan.per_message % plan.devices
    n = plan.per_message if plan.count is None else min(plan.per_message, plan.count - published)
    return k, n


def _is_done(plan: Plan, published: int, started: float) -> bool:
    if plan.count is not None and published >= plan.count:
        return True
    return plan.duration_s is not None and time.monotonic() - started >= plan.duration_s


def _payload(plan: Plan, k: int, sent_per_device: list[int], n: int, start_ms: int) -> str:
    first = sent_per_device[k]
    sent_per_device[k] += n
    items = [{"ts": start_ms + i, **values(k, i)} for i in range(first, first + n)]
    return json.dumps(items[0] if plan.per_message == 1 else items)


def _wait(pending: list[mqtt.MQTTMessageInfo]) -> None:
    for info in pending:
        info.wait_for_publish(timeout=60)
        if not info.is_published():
            raise RuntimeError("the broker did not acknowledge a publish within 60 s")
    pending.clear()
