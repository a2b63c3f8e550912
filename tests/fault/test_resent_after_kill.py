"""How many readings a kill -9 under steady publish makes the gateway write twice.

Deliveries reach the disk with the next group commit's journal record, so a restart re-sends only
what was in flight or delivered after the last group commit: at 3,000 readings/s that is a batch
or two, not the seconds of deliveries since the last checkpoint. The database tells: InfluxDB 1.x
counts every point a shard was asked to write (`SHOW STATS`, `writePointsOk`), duplicates
included, while the points it keeps are the distinct ones. Run three times, the reported numbers
give the median (`-s` prints them).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import pytest

from gateway.tools import servers, simulate
from tests.gatewayproc import simulated_plan, wait_for

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.conftest import Endpoint, InfluxV1
    from tests.gatewayproc import GatewayProcess

pytestmark = pytest.mark.fault

RATE = 3000
COUNT = 24_000
DEVICES = 50
# Well under one second of readings at RATE: before deliveries rode on the journal, a kill -9
# re-sent what the last two seconds' checkpoint had not written, 5,400 readings in one case.
MOST_RESENT = 1000


def points_written(influx: InfluxV1) -> int:
    """Every point the database's shards took for this test's database, duplicates included."""
    total = 0
    for series in servers.influxql(influx.url, "SHOW STATS FOR 'shard'"):
        if series.get("tags", {}).get("database") != influx.database:
            continue
        row = dict(zip(series["columns"], series["values"][0], strict=True))
        total += int(row.get("writePointsOk", 0))
    return total


@pytest.mark.parametrize("attempt", [1, 2, 3])
def test_kill9_at_3000_readings_per_second_resends_little(
    gateway: Callable[..., GatewayProcess],
    mosquitto: Endpoint,
    influx: InfluxV1,
    run_id: str,
    attempt: int,
    record_property: Callable[[str, object], None],
) -> None:
    """One kill -9 under steady publish at 3,000 readings/s re-sends under 1,000 readings."""
    gw = gateway(influx.config, flush="linger_s = 0.2\n")
    plan = simulated_plan(mosquitto.port, run_id, COUNT, DEVICES, rate=RATE)
    publisher = threading.Thread(target=simulate.run, args=(plan,), daemon=True)
    publisher.start()
    wait_for(lambda: influx.count() >= COUNT // 3, 60, "a third of the readings delivered")
    gw.kill()
    gw.start()
    publisher.join(timeout=120)
    assert not publisher.is_alive()
    wait_for(lambda: influx.count() >= COUNT, 120, "every reading after the kill")
    wait_for(lambda: gw.metrics()["gateway_buffer_readings"] == 0, 30, "an empty buffer")
    assert gw.stop() == 0
    assert influx.count() == COUNT
    resent = points_written(influx) - COUNT
    record_property("resent_after_kill", resent)
    print(f"attempt {attempt}: {resent} readings re-sent after kill -9 at {RATE}/s")
    assert 0 <= resent <= MOST_RESENT
