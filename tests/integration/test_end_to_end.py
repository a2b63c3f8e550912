"""The whole path against real servers: simulator -> mosquitto -> gateway -> database."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import TYPE_CHECKING

import pytest

from gateway.tools import servers, simulate
from tests.gatewayproc import (
    SIMULATED_START_MS,
    Points,
    expected_points,
    publish_messages,
    publish_simulated,
    stored_points,
    wait_for,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.conftest import Endpoint, InfluxV1
    from tests.gatewayproc import GatewayProcess

pytestmark = pytest.mark.integration

DEVICES = 20
READINGS = 10_000
START_MS = SIMULATED_START_MS
DELIVERY_TIMEOUT_S = 120


def influx_points(influx: InfluxV1) -> Points:
    return stored_points(influx.query('SELECT "temp", "hum", "device" FROM "telemetry"'))


def test_10k_readings_land_in_influxd_through_v1(
    gateway: Callable[..., GatewayProcess],
    mosquitto: Endpoint,
    influx: InfluxV1,
    run_id: str,
) -> None:
    """10,000 QoS 1 readings from 20 devices are exactly the 10,000 points in InfluxDB 1.x."""
    gw = gateway(influx.config)
    publish_simulated(mosquitto.port, run_id, READINGS, DEVICES)
    wait_for(
        lambda: influx.count() >= READINGS,
        DELIVERY_TIMEOUT_S,
        "10,000 points in influxd",
    )
    assert influx_points(influx) == expected_points(READINGS, DEVICES)
    wait_for(lambda: gw.metrics()["gateway_buffer_readings"] == 0, 10, "an empty buffer")
    assert gw.readings("accepted") == READINGS
    assert gw.readings("delivered") == READINGS
    assert gw.readings("invalid") == 0
    assert gw.stop() == 0


def victoria_points(url: str, run_id: str) -> dict[tuple[str, int], dict[str, float]]:
    points: dict[tuple[str, int], dict[str, float]] = defaultdict(dict)
    for series in servers.victoria_export(url, f'{{run="{run_id}"}}'):
        field = series["metric"]["__name__"].removeprefix("telemetry_")
        device = series["metric"]["device"]
        for ts, value in zip(series["timestamps"], series["values"], strict=True):
            points[(device, ts)][field] = value
    return dict(points)


def test_10k_readings_land_in_victoria_metrics_through_v2(
    gateway: Callable[..., GatewayProcess], mosquitto: Endpoint, victoria_url: str, run_id: str
) -> None:
    """10,000 QoS 1 readings from 20 devices are exactly the 10,000 points behind the v2 API."""
    gw = gateway(f'url = "{victoria_url}"\napi = "v2"\norg = "edge"\nbucket = "telemetry"')
    publish_simulated(mosquitto.port, run_id, READINGS, DEVICES)
    wait_for(
        lambda: gw.readings("delivered") >= READINGS,
        DELIVERY_TIMEOUT_S,
        "10,000 delivered readings",
    )
    assert victoria_points(victoria_url, run_id) == expected_points(READINGS, DEVICES)
    assert gw.readings("delivered") == READINGS
    assert gw.metrics()["gateway_buffer_readings"] == 0
    assert gw.stop() == 0


def test_json_arrays_land_like_single_readings(
    gateway: Callable[..., GatewayProcess],
    mosquitto: Endpoint,
    influx: InfluxV1,
    run_id: str,
) -> None:
    """Messages carrying 50 readings each as a JSON array land as every single reading."""
    gateway(influx.config)
    publish_simulated(mosquitto.port, run_id, 2000, DEVICES, per_message=50)
    wait_for(lambda: influx.count() >= 2000, DELIVERY_TIMEOUT_S, "2,000 points")
    expected = {}
    for n in range(2000):
        message, offset = divmod(n, 50)
        k, i = message % DEVICES, (message // DEVICES) * 50 + offset
        expected[(simulate.device_name(k), START_MS + i)] = simulate.values(k, i)
    assert influx_points(influx) == expected


FORMAT_SUBSCRIPTIONS = """
[[mqtt.subscriptions]]
topic = "{run}/line/{{device}}"
format = "line"

[[mqtt.subscriptions]]
topic = "{run}/value/{{device}}/{{measurement}}"
format = "value"
timestamp_unit = "ms"

[[mqtt.subscriptions]]
topic = "{run}/json/{{device}}/{{measurement}}"
format = "json"
"""


def test_line_and_value_formats_land_exactly(
    gateway: Callable[..., GatewayProcess],
    mosquitto: Endpoint,
    influx: InfluxV1,
    run_id: str,
) -> None:
    """Line protocol keeps its tags and types; a plain number becomes the value field."""
    gw = gateway(
        influx.config,
        FORMAT_SUBSCRIPTIONS.format(run=run_id),
    )
    ts = 1_700_000_000_000_000_000
    messages = [
        (
            f"{run_id}/line/pump-1",
            (
                f'power,phase=L1 watts=230.5,on=true,count=7i,label="a \\"b\\"" {ts}\n'
                f"power,phase=L2 watts=-1.25e3 {ts + 1}"
            ),
        ),
        (f"{run_id}/value/probe-9/depth", "12.75"),
        (
            f"{run_id}/json/probe-9/env",
            json.dumps(
                {"ts": "2023-11-14T22:13:20Z", "co2": 415, "status": "ok", "tags": {"room": "a b"}}
            ),
        ),
    ]
    publish_messages(mosquitto.port, messages)
    wait_for(lambda: gw.readings("delivered") >= 4, 30, "4 delivered readings")

    power = influx.query("SELECT * FROM power ORDER BY time")[0]
    rows = [dict(zip(power["columns"], row, strict=True)) for row in power["values"]]
    assert rows == [
        {
            "time": ts,
            "count": 7,
            "device": "pump-1",
            "label": 'a "b"',
            "on": True,
            "phase": "L1",
            "watts": 230.5,
        },
        {
            "time": ts + 1,
            "count": None,
            "device": "pump-1",
            "label": None,
            "on": None,
            "phase": "L2",
            "watts": -1250.0,
        },
    ]
    depth = influx.query("SELECT * FROM depth")[0]
    assert depth["columns"] == ["time", "device", "value"]
    assert depth["values"][0][1:] == ["probe-9", 12.75]
    env = influx.query("SELECT * FROM env")[0]
    assert dict(zip(env["columns"], env["values"][0], strict=True)) == {
        "time": ts,
        "co2": 415.0,
        "device": "probe-9",
        "room": "a b",
        "status": "ok",
    }
    assert gw.readings("invalid") == 0


def test_invalid_messages_are_counted_and_do_not_block_valid_ones(
    gateway: Callable[..., GatewayProcess],
    mosquitto: Endpoint,
    influx: InfluxV1,
    run_id: str,
) -> None:
    """Garbage is counted as invalid and acknowledged; the valid readings around it land."""
    gw = gateway(influx.config)
    bad = [
        b"\xff\xfe",
        b"{",
        b"[]",
        b'{"temp": NaN}',
        b'{"temp": [1]}',
        b'{"x,y=1 z": 1}',
        b'{"temp": 1, "device": 2}',
        b'{"ts": "yesterday", "temp": 1}',
        b"1" * 5000,
    ]
    good = [json.dumps({"ts": START_MS + n, "temp": float(n)}).encode() for n in range(3)]
    order = [bad[0], good[0], *bad[1:5], good[1], *bad[5:], good[2]]
    publish_messages(mosquitto.port, [(f"{run_id}/dev-x/telemetry", p) for p in order])
    wait_for(lambda: gw.readings("received") >= len(bad) + len(good), 30, "all messages")
    wait_for(lambda: influx.count() >= 3, 30, "3 points")
    assert gw.readings("invalid") == len(bad) - 1  # '{"x,y=1 z": 1}' is a valid, escaped field
    assert influx.count() == 3
    assert gw.readings("accepted") == 4
    fields = influx.query("SHOW FIELD KEYS FROM telemetry")[0]
    assert sorted(name for name, _ in fields["values"]) == ["temp", "x,y=1 z"]
    wait_for(lambda: gw.readings("delivered") == 4, 10, "the escaped reading delivered")
    # A sample of what was refused, for whoever debugs the sensor's firmware.
    kept = json.loads(gw.cli("rejects", "--json"))
    assert kept
    assert {r["topic"] for r in kept} == {f"{run_id}/dev-x/telemetry"}
    assert kept[-1]["reason"] == "not_utf8"
    assert kept[-1]["payload"] == "\\xff\\xfe"
