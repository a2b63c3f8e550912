"""Report by exception against real servers: mosquitto -> gateway (deadband) -> influxd."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from tests.gatewayproc import SIMULATED_START_MS, publish_messages, wait_for

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.conftest import Endpoint, InfluxV1
    from tests.gatewayproc import GatewayProcess

pytestmark = pytest.mark.integration

READINGS = 150  # per device, one a second of reading time
BAND = 0.5
HEARTBEAT_S = 10
SUBSCRIPTION = """
[[mqtt.subscriptions]]
topic = "{run}/{{device}}/{{measurement}}"
device_class = "slow"
deadband = {{ absolute = {band}, heartbeat_s = {heartbeat} }}
"""


def value(device: str, i: int) -> float:
    """A slow drift of 0.2 a reading, and a value that never moves."""
    return 20.0 + 0.2 * i if device == "drift" else 5.0


def kept_by_definition(device: str) -> dict[int, float]:
    """ts ms -> value of the readings the deadband keeps, worked out from its definition."""
    kept: dict[int, float] = {}
    last_i: int | None = None
    for i in range(READINGS):
        v = value(device, i)
        if last_i is None or i - last_i >= HEARTBEAT_S or abs(v - value(device, last_i)) >= BAND:
            kept[SIMULATED_START_MS + 1000 * i] = v
            last_i = i
    return kept


def test_a_slow_series_is_stored_by_exception_with_exact_counts(
    gateway: Callable[..., GatewayProcess], mosquitto: Endpoint, influx: InfluxV1, run_id: str
) -> None:
    """The database holds exactly the kept readings; received == suppressed + accepted."""
    subscription = SUBSCRIPTION.format(run=run_id, band=BAND, heartbeat=HEARTBEAT_S)
    gw = gateway(influx.config, subscription)
    devices = ("drift", "flat")
    publish_messages(
        mosquitto.port,
        [
            (
                f"{run_id}/{device}/m",
                json.dumps({"ts": SIMULATED_START_MS + 1000 * i, "v": value(device, i)}),
            )
            for i in range(READINGS)
            for device in devices
        ],
    )
    expected = {device: kept_by_definition(device) for device in devices}
    kept = sum(len(points) for points in expected.values())
    wait_for(lambda: gw.readings("received") == 2 * READINGS, 60, "every reading received")
    wait_for(lambda: gw.readings("delivered") == kept, 60, "the kept readings delivered")

    assert gw.readings("accepted") == kept
    assert gw.readings("suppressed") == 2 * READINGS - kept
    assert gw.readings("invalid") == gw.readings("refused") == 0
    stored: dict[str, dict[int, float]] = {device: {} for device in devices}
    for ts_ns, v, device in influx.query('SELECT "v", "device" FROM "m"')[0]["values"]:
        stored[device][ts_ns // 1_000_000] = v
    assert stored == expected
    # A drift of 0.2 against a band of 0.5: every third reading; no move: one per heartbeat.
    assert sorted(stored["drift"]) == [SIMULATED_START_MS + 3000 * k for k in range(50)]
    assert sorted(stored["flat"]) == [SIMULATED_START_MS + 10_000 * k for k in range(15)]
    assert gw.stop() == 0
