"""Crash-only recovery: kill -9 at any moment loses no acknowledged reading."""

from __future__ import annotations

import random
import threading
import time
from typing import TYPE_CHECKING

import pytest

from gateway.tools import servers, simulate
from tests.gatewayproc import (
    SMALL_API,
    expected_points,
    simulated_plan,
    wait_for,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.conftest import Endpoint, InfluxV1
    from tests.gatewayproc import GatewayProcess

pytestmark = pytest.mark.fault


def test_five_kill9_during_50k_readings_lose_nothing(
    gateway: Callable[..., GatewayProcess], mosquitto: Endpoint, influx: InfluxV1, run_id: str
) -> None:
    """kill -9 five times while 50,000 QoS 1 readings from 50 devices flow: all 50,000 land."""
    count, devices = 50_000, 50
    gw = gateway(influx.config, flush="linger_s = 0.2\n")
    plan = simulated_plan(mosquitto.port, run_id, count, devices, rate=4000)
    publisher = threading.Thread(target=simulate.run, args=(plan,), daemon=True)
    publisher.start()
    rng = random.Random(run_id)
    for _ in range(5):
        time.sleep(rng.uniform(0.5, 2.0))  # a random moment, not a wait for a condition
        gw.kill()
        gw.start()
    publisher.join(timeout=120)
    assert not publisher.is_alive()
    wait_for(lambda: influx.count() >= count, 120, "50,000 points after five kills")
    assert influx.points() == expected_points(count, devices)
    wait_for(lambda: gw.metrics()["gateway_buffer_readings"] == 0, 30, "an empty buffer")
    assert gw.stop() == 0


# A 1 MiB buffer counts 2.36 MB of readings (gateway/buffer/capacity.py), about 32,000 of the
# simulator's: twice that overflows it whatever the compression.
FULL_COUNT, FULL_DEVICES = 64_000, 10


def fill_buffer_with_database_down(
    gateway: Callable[..., GatewayProcess], mosquitto: Endpoint, influx: InfluxV1, run_id: str
) -> tuple[GatewayProcess, str]:
    """A gateway with a 1 MiB buffer and no database, sent more than it can hold."""
    dead_url = f"http://127.0.0.1:{servers.free_port()}"
    gw = gateway(
        f'url = "{dead_url}"\napi = "v1"\ndatabase = "{influx.database}"',
        flush="linger_s = 0.1\n",
    )
    # At a high watermark of 1.0 the byte budget itself stops a batch half-read: the case where
    # messages were received but cannot be committed.
    gw.config_path.write_text(
        gw.config_path.read_text().replace('"64MiB"', '"1MiB"\nhigh_watermark = 1.0')
        + f"\n[api]\n{SMALL_API}"
    )
    gw.stop()
    gw.start()
    plan = simulated_plan(mosquitto.port, run_id, FULL_COUNT, FULL_DEVICES, rate=0)
    assert simulate.run(plan).published == FULL_COUNT
    wait_for(lambda: "intake paused" in gw.log(), 30, "the buffer to fill")
    return gw, dead_url


def restart_with_database(gw: GatewayProcess, dead_url: str, influx: InfluxV1) -> None:
    text = gw.config_path.read_text()
    gw.config_path.write_text(
        text.replace(dead_url, influx.url).replace('"1MiB"\nhigh_watermark = 1.0', '"64MiB"')
    )
    gw.start()
    wait_for(lambda: influx.count() >= FULL_COUNT, 120, f"all {FULL_COUNT} points")
    assert influx.points() == expected_points(FULL_COUNT, FULL_DEVICES)


def test_received_but_uncommitted_messages_are_redelivered(
    gateway: Callable[..., GatewayProcess], mosquitto: Endpoint, influx: InfluxV1, run_id: str
) -> None:
    """Messages the gateway read but could not commit (buffer full) are not acknowledged:
    after kill -9 the broker delivers them again and every reading lands."""
    gw, dead_url = fill_buffer_with_database_down(gateway, mosquitto, influx, run_id)
    metrics = gw.metrics()
    accepted = metrics["gateway_readings_total{outcome=accepted}"]
    received = metrics["gateway_mqtt_messages_total"]
    assert 0 < accepted < received <= FULL_COUNT, (accepted, received)
    gw.kill()
    restart_with_database(gw, dead_url, influx)


def test_sigterm_with_full_buffer_exits_promptly_and_loses_nothing(
    gateway: Callable[..., GatewayProcess], mosquitto: Endpoint, influx: InfluxV1, run_id: str
) -> None:
    """A full buffer waiting for space does not hold up SIGTERM; what it held back arrives
    after the next start."""
    gw, dead_url = fill_buffer_with_database_down(gateway, mosquitto, influx, run_id)
    started = time.monotonic()
    assert gw.stop(timeout_s=20) == 0
    assert time.monotonic() - started < 15, "grace period is 10 s"
    restart_with_database(gw, dead_url, influx)
