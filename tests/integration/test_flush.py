"""The flusher against a real influxd: poison isolation, dead letters, per-device order."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from tests.gatewayproc import SIMULATED_START_MS, publish_messages, wait_for

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.conftest import Endpoint, InfluxV1
    from tests.gatewayproc import GatewayProcess

pytestmark = pytest.mark.integration


def gateway_cli(gw: GatewayProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args, "--config", str(gw.config_path)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_poison_point_is_isolated_dead_lettered_and_replayed(
    gateway: Callable[..., GatewayProcess], mosquitto: Endpoint, influx: InfluxV1, run_id: str
) -> None:
    """A field type conflict in a batch of 5,000: 4,999 land, one waits in the dead-letter
    store with the database's reason, and replay delivers it once the cause is fixed."""
    gw = gateway(
        influx.config,
        flush="batch_floor = 5000\nbatch_initial = 5000\nbatch_ceiling = 5000\nlinger_s = 30\n",
    )
    messages = []
    for i in range(5000):
        temp: object = "oops" if i == 2500 else float(i)
        messages.append(
            (f"{run_id}/dev-p/telemetry", json.dumps({"ts": SIMULATED_START_MS + i, "temp": temp}))
        )
    publish_messages(mosquitto.port, messages)
    wait_for(lambda: gw.readings("dead_lettered") == 1, 60, "one dead letter")
    assert gw.readings("delivered") == 4999
    assert influx.count() == 4999
    assert gw.metrics()["gateway_write_points_count"] >= 2, "the batch was split"

    listed = gateway_cli(gw, "dead-letters", "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count("#") == 1
    assert "field type conflict" in listed.stdout
    assert 'temp="oops"' in listed.stdout

    refused = gateway_cli(gw, "dead-letters", "replay")
    assert refused.returncode == 1, "the cause is not fixed yet"
    assert "field type conflict" in refused.stdout

    influx.query("DROP MEASUREMENT telemetry")  # the operator fixes the cause
    replayed = gateway_cli(gw, "dead-letters", "replay")
    assert replayed.returncode == 0, replayed.stdout
    assert "replayed 1 dead letters" in replayed.stdout
    rows = influx.query('SELECT "temp" FROM "telemetry"')[0]["values"]
    assert [row[1] for row in rows] == ["oops"]
    assert gateway_cli(gw, "dead-letters", "list").stdout.strip() == "no dead letters"


def test_later_reading_with_same_timestamp_wins(
    gateway: Callable[..., GatewayProcess], mosquitto: Endpoint, influx: InfluxV1, run_id: str
) -> None:
    """Same device, same timestamp: the later reading's value is what the database keeps, both
    inside one batch (coalescing) and across batches (per-device order, 4 writes in flight)."""
    gw = gateway(
        influx.config,
        flush="batch_floor = 7\nbatch_initial = 7\nbatch_ceiling = 7\nlinger_s = 0.05\n"
        "max_in_flight = 4\n",
    )
    messages = []
    for i in range(300):
        for value in (1.0, 2.0, 3.0):
            payload = json.dumps({"ts": SIMULATED_START_MS + i, "v": value})
            messages.append((f"{run_id}/dev-o/telemetry", payload))
    publish_messages(mosquitto.port, messages)
    wait_for(lambda: gw.readings("delivered") == 900, 60, "900 delivered readings")
    rows = influx.query('SELECT "v" FROM "telemetry"')[0]["values"]
    assert len(rows) == 300
    assert {row[1] for row in rows} == {3.0}
