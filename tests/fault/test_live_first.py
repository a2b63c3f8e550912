"""After an outage: live readings go ahead of the backlog, and a later reading always wins."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from gateway.tools import servers
from tests.gatewayproc import (
    SIMULATED_START_MS,
    expected_points,
    publish_messages,
    publish_simulated,
    wait_for,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.conftest import Endpoint, InfluxV1
    from tests.gatewayproc import GatewayProcess

pytestmark = pytest.mark.fault

DEVICES = 10
BACKLOG = 12_000
LIVE = 200
# Live readings are stamped well after the simulated backlog's.
LIVE_START_MS = SIMULATED_START_MS + 10_000_000
# The backlog drains at the uplink budget: about 6 bytes a point, so some 1,500 points/s.
BUDGET = "max_bytes_per_s = 10000\nbatch_floor = 200\nbatch_initial = 200\nbatch_ceiling = 200\n"


def live_messages(run_id: str, start: int, count: int) -> list[tuple[str, str]]:
    return [
        (
            f"{run_id}/dev-{i % DEVICES}/telemetry",
            json.dumps({"ts": LIVE_START_MS + start + i, "temp": 99.0, "hum": 1.0}),
        )
        for i in range(count)
    ]


def overwritten(run_id: str, value: float) -> tuple[str, str]:
    """A reading of dev-w at one fixed timestamp, with its value."""
    return f"{run_id}/dev-w/telemetry", json.dumps({"ts": SIMULATED_START_MS, "temp": value})


@pytest.mark.parametrize("live_first", [True, False])
def test_live_readings_land_ahead_of_the_backlog_and_the_later_one_wins(
    gateway: Callable[..., GatewayProcess],
    mosquitto: Endpoint,
    influx: InfluxV1,
    run_id: str,
    live_first: bool,
) -> None:
    """With the database back and a backlog draining, new readings are in it long before the
    backlog is; every reading lands once; the value dev-w sent last for a timestamp is the one
    stored, though its earlier one waited in the backlog."""
    dead_url = f"http://127.0.0.1:{servers.free_port()}"
    gw = gateway(
        f'url = "{dead_url}"\napi = "v1"\ndatabase = "{influx.database}"',
        flush=f"{BUDGET}live_first = {str(live_first).lower()}\nlinger_s = 0.2\n",
    )
    publish_simulated(mosquitto.port, run_id, BACKLOG, DEVICES)
    publish_messages(mosquitto.port, [overwritten(run_id, 1.0)])
    wait_for(lambda: gw.readings("accepted") == BACKLOG + 1, 60, "the backlog buffered")

    assert gw.stop() == 0
    gw.config_path.write_text(gw.config_path.read_text().replace(dead_url, influx.url))
    gw.start()
    publish_messages(mosquitto.port, [overwritten(run_id, 2.0), *live_messages(run_id, 0, LIVE)])

    def live_landed() -> int:
        series = influx.query(
            f'SELECT count("temp") FROM "telemetry" WHERE time >= {LIVE_START_MS}ms'
        )
        return int(series[0]["values"][0][1]) if series else 0

    total = BACKLOG + 1 + 1 + LIVE
    wait_for(lambda: live_landed() == LIVE, 30, "the live readings in the database")
    still_buffered = gw.metrics()["gateway_buffer_readings"]
    if live_first:
        assert still_buffered >= BACKLOG // 2, "they went ahead of most of the backlog"
        assert gw.metrics()["gateway_buffer_backlog_lag_seconds"] > 0
    else:
        assert still_buffered < BACKLOG // 2, "in strict order they come behind it"
    wait_for(lambda: gw.readings("delivered") == total, 60, "everything delivered")
    assert live_landed() == LIVE
    stored = influx.points()
    assert {k: v for k, v in stored.items() if k[1] < LIVE_START_MS and k[0] != "dev-w"} == (
        expected_points(BACKLOG, DEVICES)
    )
    assert stored[("dev-w", SIMULATED_START_MS)]["temp"] == 2.0, "the later reading won"
    assert gw.metrics()["gateway_buffer_backlog_lag_seconds"] == 0
    assert gw.metrics()["gateway_buffer_readings"] == 0
