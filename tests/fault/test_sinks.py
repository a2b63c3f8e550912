"""Two sinks from one buffer: a far database down does not slow the near one, and none loses.

InfluxDB 1.x is the near sink and VictoriaMetrics the far one; the far one is stopped for a
minute while 100 devices publish 1,000 readings a second. The near sink's write-behind lag must
stay under 2 s throughout, and after the far one returns both must hold every reading, also
when the gateway is killed (-9) during the outage. A far sink past its `max_lag_s` gives up its
oldest readings, counted, and the near one still gets everything.
"""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING

import pytest

from gateway.tools import servers, simulate
from tests import backends
from tests.gatewayproc import assert_identities, simulated_plan, wait_for

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.conftest import Endpoint, InfluxV1
    from tests.gatewayproc import GatewayProcess

pytestmark = pytest.mark.fault

DEVICES = 100
RATE = 1000
OUTAGE_S = int(os.environ.get("SINK_OUTAGE_S", "60"))
NEAR_LAG_MAX_S = 2.0
FLUSH = "linger_s = 0.2\nretry_initial_s = 0.2\nretry_max_s = 1\nprobe_interval_s = 0.5\n"


def two_sinks(near: InfluxV1, far: servers.Server, far_extra: str = "") -> str:
    return (
        f'[[sinks]]\nname = "near"\n{near.config}\n\n'
        f'[[sinks]]\nname = "far"\nurl = "{far.url}"\napi = "v2"\norg = "o"\nbucket = "b"\n'
        f"{far_extra}\n"
    )


def far_count(url: str, run_id: str) -> int:
    return sum(
        len(s["timestamps"])
        for s in servers.victoria_export(url, f'telemetry_temp{{run="{run_id}"}}')
    )


def sink_metric(gw: GatewayProcess, family: str, sink: str) -> float:
    return gw.metrics().get(f"{family}{{sink={sink}}}", 0.0)


class LagWatch:
    """Samples the near sink's lag on a thread until stopped; keeps the worst seen."""

    def __init__(self, gw: GatewayProcess) -> None:
        self.worst = 0.0
        self.samples = 0
        self._gw = gw
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            try:
                lag = sink_metric(self._gw, "gateway_sink_lag_seconds", "near")
            except OSError:
                continue  # the gateway is being restarted
            self.worst = max(self.worst, lag)
            self.samples += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def publish(port: int, run_id: str, count: int) -> threading.Thread:
    plan = simulated_plan(port, run_id, count, DEVICES, rate=RATE)
    thread = threading.Thread(target=simulate.run, args=(plan, None), daemon=True)
    thread.start()
    return thread


def run_outage(
    gateway: Callable[..., GatewayProcess],
    mosquitto: Endpoint,
    run_id: str,
    influx: InfluxV1,
    far: list[servers.Server],
    *,
    kill_during: bool,
) -> None:
    vm = far[0]
    gw = gateway(two_sinks(influx, vm), flush=FLUSH)
    total = RATE * (OUTAGE_S + 20)
    publisher = publish(mosquitto.port, run_id, total)
    watch = LagWatch(gw)
    wait_for(lambda: far_count(vm.url, run_id) >= RATE * 5, 30, "the far sink written to")
    # Stopped, not killed: VictoriaMetrics keeps the last second of what it acknowledged in
    # memory, and a kill -9 of the database would lose it whatever the gateway did.
    vm.stop()
    down_at = time.monotonic()
    if kill_during:
        time.sleep(OUTAGE_S / 2)
        gw.kill()
        gw.start()
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
    far.append(backends.start_victoria_metrics(vm.workdir, port=vm.port))
    publisher.join(timeout=120)
    assert not publisher.is_alive()
    wait_for(lambda: influx.count() == total, 60, "every reading in the near sink")
    wait_for(lambda: far_count(vm.url, run_id) == total, 120, "every reading in the far sink")
    watch.stop()
    assert watch.samples > OUTAGE_S
    assert watch.worst < NEAR_LAG_MAX_S, f"the near sink lagged {watch.worst:.1f} s"
    wait_for(lambda: gw.metrics()["gateway_buffer_readings"] == 0, 30, "the buffer emptied")
    assert influx.count() == total
    assert far_count(vm.url, run_id) == total
    assert sink_metric(gw, "gateway_sink_skipped_total", "far") == 0
    if not kill_during:
        assert_identities(gw)


@pytest.mark.parametrize("kill_during", [False, True], ids=["stays_up", "killed"])
def test_far_sink_down_a_minute_the_near_one_keeps_pace_and_none_is_lost(
    gateway: Callable[..., GatewayProcess],
    mosquitto: Endpoint,
    run_id: str,
    influx: InfluxV1,
    restartable_victoria: list[servers.Server],
    *,
    kill_during: bool,
) -> None:
    run_outage(gateway, mosquitto, run_id, influx, restartable_victoria, kill_during=kill_during)


def test_far_sink_past_its_max_lag_gives_up_only_its_own_readings(
    gateway: Callable[..., GatewayProcess],
    mosquitto: Endpoint,
    run_id: str,
    influx: InfluxV1,
    restartable_victoria: list[servers.Server],
) -> None:
    far = restartable_victoria
    vm = far[0]
    capacity = 64 << 20
    gw = gateway(
        two_sinks(influx, vm, "max_lag_s = 5"),
        flush=FLUSH,
        buffer=f"capacity = {capacity}\n",
    )
    vm.stop()
    total = RATE * 20
    publish(mosquitto.port, run_id, total).join(timeout=60)
    wait_for(lambda: influx.count() == total, 60, "every reading in the near sink")
    wait_for(
        lambda: sink_metric(gw, "gateway_sink_skipped_total", "far") > 0,
        30,
        "the far sink giving up readings past its max_lag_s",
    )
    assert gw.metrics()["gateway_buffer_bytes"] <= capacity
    far.append(backends.start_victoria_metrics(vm.workdir, port=vm.port))
    wait_for(lambda: gw.metrics()["gateway_buffer_readings"] == 0, 60, "the far sink caught up")
    skipped = sink_metric(gw, "gateway_sink_skipped_total", "far")
    assert 0 < skipped < total
    wait_for(lambda: far_count(vm.url, run_id) == total - skipped, 30, "the rest in the far sink")
    assert influx.count() == total
    assert_identities(gw)
