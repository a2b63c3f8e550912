"""What the uplink carries: gzip-compressed writes that both databases take, and the byte budget."""

from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING

import pytest

from gateway.tools import servers
from tests.gatewayproc import expected_points, publish_simulated, wait_for

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.conftest import Endpoint, InfluxV1
    from tests.gatewayproc import GatewayProcess

pytestmark = pytest.mark.integration

READINGS = 3000
DEVICES = 10
# Line protocol of the simulator's readings is 60 to 70 bytes a point.
PLAIN_BYTES_PER_READING = 50


def sent_per_reading(gw: GatewayProcess) -> float:
    return gw.metrics()["gateway_sink_sent_bytes_total"] / gw.readings("delivered")


@pytest.mark.parametrize("gzip", [True, False])
def test_influxd_takes_the_writes_compressed_or_not(
    gateway: Callable[..., GatewayProcess],
    mosquitto: Endpoint,
    influx: InfluxV1,
    run_id: str,
    gzip: bool,
) -> None:
    """Every point reads back from influxd (v1 API); gzip sends a fraction of the bytes."""
    gw = gateway(influx.config, flush=f"gzip = {str(gzip).lower()}\nbatch_initial = 1000\n")
    publish_simulated(mosquitto.port, run_id, READINGS, DEVICES)
    wait_for(lambda: gw.readings("delivered") == READINGS, 30, "every reading delivered")
    assert influx.points() == expected_points(READINGS, DEVICES)
    if gzip:
        assert sent_per_reading(gw) < 12
    else:
        assert sent_per_reading(gw) > PLAIN_BYTES_PER_READING


def test_victoria_metrics_takes_the_writes_compressed(
    gateway: Callable[..., GatewayProcess],
    mosquitto: Endpoint,
    run_id: str,
    own_victoria: servers.Server,
) -> None:
    """Every point reads back from VictoriaMetrics (v2 API through influxdb-client)."""
    gw = gateway(
        f'url = "{own_victoria.url}"\napi = "v2"\norg = "o"\nbucket = "b"',
        flush="batch_initial = 1000\n",
    )
    publish_simulated(mosquitto.port, run_id, READINGS, DEVICES)
    wait_for(lambda: gw.readings("delivered") == READINGS, 30, "every reading delivered")
    exported = servers.victoria_export(
        own_victoria.url, f'{{__name__=~"telemetry_.*",run="{run_id}"}}'
    )
    assert sum(len(series["timestamps"]) for series in exported) == 2 * READINGS  # temp and hum
    assert sent_per_reading(gw) < 12


def test_the_uplink_budget_holds_the_average_rate(
    gateway: Callable[..., GatewayProcess],
    mosquitto: Endpoint,
    influx: InfluxV1,
    run_id: str,
) -> None:
    """A backlog drains at the budget's byte rate (within 5 %), and every point lands."""
    budget = 1000
    dead_url = f"http://127.0.0.1:{servers.free_port()}"
    gw = gateway(
        f'url = "{dead_url}"\napi = "v1"\ndatabase = "{influx.database}"',
        flush=(
            f"max_bytes_per_s = {budget}\nbatch_floor = 50\nbatch_initial = 50\n"
            "batch_ceiling = 50\nlinger_s = 0.1\n"
        ),
    )
    publish_simulated(mosquitto.port, run_id, READINGS, DEVICES)
    wait_for(lambda: gw.readings("accepted") == READINGS, 30, "the backlog buffered")
    assert gw.stop() == 0
    gw.config_path.write_text(gw.config_path.read_text().replace(dead_url, influx.url))
    gw.start()

    wait_for(lambda: gw.readings("delivered") >= 200, 30, "the drain under way")
    # The counter moves a body at a time: the slope of many samples, not two of them.
    samples: list[tuple[float, float]] = []
    started = time.monotonic()

    def sampled_long_enough() -> bool:
        samples.append((time.monotonic(), gw.metrics()["gateway_sink_sent_bytes_total"]))
        return samples[-1][0] - started >= 10

    wait_for(sampled_long_enough, 13, "ten seconds of samples")
    rate = statistics.linear_regression(*zip(*samples, strict=True)).slope
    assert budget * 0.95 <= rate <= budget * 1.05
    assert gw.readings("delivered") < READINGS, "the budget, not the database, set the pace"
