"""The page guard refuses with the database down: intake pauses without a reconnect loop.

Readings that compress poorly fill a small buffer's pages while its readings budget is far
below the `reject` policy's watermarks, so the guard, not the watermark, refuses. Intake must
stay away from the broker until a delivery frees room (QoS 1 messages wait in the broker's
session) rather than reconnect, take the redelivered messages, be refused and leave, in a loop;
once the database is back, every published reading lands exactly once.
"""

from __future__ import annotations

import base64
import json
import os
import time
from typing import TYPE_CHECKING

import pytest

from gateway.tools import servers
from tests import backends
from tests.gatewayproc import SMALL_API, assert_identities, count, publish_messages, wait_for

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.conftest import Endpoint
    from tests.gatewayproc import GatewayProcess

pytestmark = pytest.mark.fault

FLUSH = "linger_s = 0.1\nretry_max_s = 1\nbatch_initial = 500\nbatch_ceiling = 500\n"
START_MS = 1_700_000_000_000
DEVICES = 10
# About twice what the 1 MiB buffer's pages hold of these readings.
MESSAGES = 6_000
# How long intake is watched while the database stays down: a loop reconnects many times a
# second, a pause waits for a delivery (none comes) or its 30 s cap.
WATCHED_S = 5.0


def publish_batch(run_id: str) -> list[tuple[str, str]]:
    """Numbered readings, each with a random string field that compresses poorly."""
    batch = []
    for i in range(MESSAGES):
        noise = base64.b64encode(os.urandom(240)).decode()
        body = {"ts": START_MS + i, "v": float(i), "noise": noise}
        batch.append((f"{run_id}/dev-{i % DEVICES}/telemetry", json.dumps(body)))
    return batch


def stored_numbers(db: servers.Server, run_id: str) -> list[int]:
    """Reading numbers the database holds, each as often as it holds it."""
    return [
        ts - START_MS
        for series in servers.victoria_export(db.url, f'telemetry_v{{run="{run_id}"}}')
        for ts in series["timestamps"]
    ]


def test_a_page_guard_refusal_pauses_intake_instead_of_reconnecting_in_a_loop(
    gateway: Callable[..., GatewayProcess],
    mosquitto: Endpoint,
    own_victoria: servers.Server,
    run_id: str,
) -> None:
    """Refused by the page guard far below the watermarks, intake stays away while nothing is
    delivered, comes back after deliveries, and every published reading lands once."""
    db = own_victoria
    gw = gateway(
        f'url = "{db.url}"\napi = "v2"\norg = "o"\nbucket = "b"',
        subscriptions=(
            f'[[mqtt.subscriptions]]\ntopic = "{run_id}/{{device}}/telemetry"\n'
            f'measurement = "telemetry"\nqos = 1\nformat = "json"\n'
            f'tags = {{ run = "{run_id}" }}\n'
        ),
        flush=FLUSH,
        buffer='capacity = "1MiB"\n',
        api=SMALL_API,
    )
    db.kill()
    publish_messages(mosquitto.port, publish_batch(run_id))
    wait_for(lambda: count(gw, "gateway_intake_pauses") >= 1, 60, "intake to pause")
    m = assert_identities(gw)
    # The guard refused, not the watermark: the fill is below the low watermark (0.8).
    assert m["gateway_buffer_bytes"] < 0.8 * m["gateway_buffer_budget_bytes"]
    assert m["gateway_readings_total{outcome=accepted}"] < MESSAGES
    connects = m["gateway_mqtt_connects_total"]
    paused_at = time.monotonic()
    while time.monotonic() - paused_at < WATCHED_S:
        # A negative, so watched for its whole span: no reconnect while nothing frees room.
        m = gw.metrics()
        assert m["gateway_mqtt_connects_total"] <= connects, "intake reconnected in a loop"
        assert m["gateway_intake_paused"] == 1
        time.sleep(0.2)
    assert count(gw, "gateway_intake_pauses", cause="disk_budget") == 1
    assert count(gw, "gateway_intake_pauses", cause="watermark") == 0

    db = backends.start_victoria_metrics(db.workdir, port=db.port)
    try:

        def drained() -> bool:
            m = assert_identities(gw)
            return (
                m["gateway_readings_total{outcome=received}"] >= MESSAGES
                and m["gateway_buffer_readings"] == 0
            )

        wait_for(drained, 120, "every reading received and the buffer empty")
        elapsed_s = time.monotonic() - paused_at
        m = assert_identities(gw)
        assert m["gateway_readings_total{outcome=received}"] == MESSAGES
        assert m["gateway_readings_total{outcome=accepted}"] == MESSAGES
        assert m["gateway_readings_total{outcome=delivered}"] == MESSAGES
        assert m["gateway_readings_total{outcome=refused}"] == 0
        assert m["gateway_readings_total{outcome=dropped}"] == 0
        assert sorted(stored_numbers(db, run_id)) == list(range(MESSAGES))
        # Each reconnect follows a pause, and pauses last a second at least.
        pauses = count(gw, "gateway_intake_pauses")
        assert m["gateway_mqtt_connects_total"] - connects <= pauses
        assert pauses <= 1 + elapsed_s
        log = gw.log()
        assert log.count("intake paused and disconnected") <= log.count("intake resumed") + 1
        assert "intake resumed" in log
    finally:
        db.stop()
