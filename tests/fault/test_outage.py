"""Database outages and shutdown: readings wait in the buffer and none is lost."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from gateway.tools import servers, simulate
from tests import backends
from tests.gatewayproc import publish_simulated, simulated_plan, wait_for

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.conftest import Endpoint, InfluxV1
    from tests.gatewayproc import GatewayProcess

pytestmark = pytest.mark.fault

DEVICES = 10


def victoria_count(url: str, run_id: str) -> int:
    return sum(
        len(s["timestamps"])
        for s in servers.victoria_export(url, f'telemetry_temp{{run="{run_id}"}}')
    )


def deliver_then_lose_the_database(
    gateway: Callable[..., GatewayProcess],
    mosquitto: Endpoint,
    run_id: str,
    vm: servers.Server,
    *,
    flush: str,
    first: int,
    while_down: int,
) -> GatewayProcess:
    """A gateway on `vm`: `first` readings delivered, `vm` killed, `while_down` more accepted.

    The second lot is published from the start again, so its first `first` readings have the
    same timestamps as the delivered ones.
    """
    gw = gateway(f'url = "{vm.url}"\napi = "v2"\norg = "o"\nbucket = "b"', flush=flush)
    publish_simulated(mosquitto.port, run_id, first, DEVICES)
    wait_for(lambda: gw.readings("delivered") == first, 30, "the first lot delivered")
    vm.kill()
    publish_simulated(mosquitto.port, run_id, while_down, DEVICES)
    total = first + while_down
    wait_for(lambda: gw.readings("accepted") == total, 30, "the second lot accepted while down")
    assert gw.readings("delivered") == first
    return gw


def test_database_down_then_back_loses_nothing(
    gateway: Callable[..., GatewayProcess],
    mosquitto: Endpoint,
    run_id: str,
    restartable_victoria: list[servers.Server],
    tmp_path: Path,
) -> None:
    """Readings accepted while the database is down are all written once it returns."""
    vm = restartable_victoria[0]
    gw = deliver_then_lose_the_database(
        gateway,
        mosquitto,
        run_id,
        vm,
        flush="linger_s = 0.1\nretry_initial_s = 0.1\nretry_max_s = 0.5\n",
        first=1000,
        while_down=3000,
    )
    assert gw.metrics()["gateway_buffer_readings"] == 3000
    assert gw.metrics()["gateway_writes_total{result=retry}"] >= 1

    restartable_victoria.append(backends.start_victoria_metrics(vm.workdir, port=vm.port))
    wait_for(lambda: gw.metrics()["gateway_buffer_readings"] == 0, 60, "the backlog drained")
    assert gw.readings("delivered") == 4000
    # The first 1,000 were re-published with the same timestamps: 3,000 distinct new points.
    assert victoria_count(vm.url, run_id) == 3000
    assert "database write failed" in gw.log()
    assert gw.log().count("database write failed") == 1, "one line per outage, not per retry"


def test_sigterm_flushes_then_exits_zero(
    gateway: Callable[..., GatewayProcess],
    mosquitto: Endpoint,
    influx: InfluxV1,
    run_id: str,
) -> None:
    """SIGTERM flushes what is buffered and exits 0 with an empty buffer."""
    gw = gateway(
        influx.config,
        flush="linger_s = 30\nbatch_initial = 5000\nbatch_ceiling = 5000\n",
    )
    publish_simulated(mosquitto.port, run_id, 500, DEVICES)
    wait_for(lambda: gw.readings("accepted") == 500, 30, "500 accepted")
    assert gw.readings("delivered") == 0, "linger of 30 s holds the partial batch"
    assert gw.stop() == 0
    assert "0 readings stay buffered" in gw.log()
    assert influx.count() == 500


def test_sigterm_with_database_down_keeps_the_backlog_for_next_start(
    gateway: Callable[..., GatewayProcess],
    mosquitto: Endpoint,
    influx: InfluxV1,
    run_id: str,
) -> None:
    """If the database is down at shutdown, the gateway exits 0 in the grace period and the
    next start delivers the backlog."""
    dead_url = f"http://127.0.0.1:{servers.free_port()}"
    gw = gateway(
        f'url = "{dead_url}"\napi = "v1"\ndatabase = "{influx.database}"',
        flush="linger_s = 0.1\ngrace_s = 1\n",
    )
    publish_simulated(mosquitto.port, run_id, 700, DEVICES)
    wait_for(lambda: gw.readings("accepted") == 700, 30, "700 accepted")
    assert gw.stop(timeout_s=15) == 0
    assert "700 readings stay buffered" in gw.log()

    gw.config_path.write_text(gw.config_path.read_text().replace(dead_url, influx.url))
    gw.start()
    wait_for(lambda: gw.readings("delivered") == 700, 30, "the backlog delivered after restart")
    assert influx.count() == 700


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_broker_keeps_messages_while_the_gateway_is_stopped(
    gateway: Callable[..., GatewayProcess],
    mosquitto: Endpoint,
    influx: InfluxV1,
    run_id: str,
    protocol: str,
) -> None:
    """With the persistent session, readings published while the gateway is down arrive after
    it starts again."""
    gw = gateway(influx.config, flush="linger_s = 0.1\n")
    text = gw.config_path.read_text()
    gw.config_path.write_text(
        text.replace(
            "[[mqtt.subscriptions]]", f'protocol = "{protocol}"\n[[mqtt.subscriptions]]', 1
        )
    )
    assert gw.stop() == 0
    gw.start()  # subscribes with the protocol under test, then leaves
    assert gw.stop() == 0
    publish_simulated(mosquitto.port, run_id, 1500, DEVICES)
    gw.start()
    wait_for(lambda: influx.count() == 1500, 30, "1,500 points published while stopped")
    assert gw.readings("accepted") == 1500


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.soak
def test_influxd_down_30s_while_20k_flow_lands_exactly_once(
    gateway: Callable[..., GatewayProcess], mosquitto: Endpoint, run_id: str, tmp_path: Path
) -> None:
    """influxd stops for 30 s while 20,000 readings flow; every reading lands once after it
    returns. The outage adds under 5 % of a core to what the same flow costs with the
    database up, and the database is probed a few times, not continuously."""
    db = backends.start_influxd(tmp_path / "influxd")
    try:
        servers.influxql(db.url, "CREATE DATABASE t")
        gw = gateway(
            f'url = "{db.url}"\napi = "v1"\ndatabase = "t"',
            flush="linger_s = 0.2\nretry_max_s = 5\n",
        )
        assert gw.process is not None
        pid = gw.process.pid
        plan = simulated_plan(mosquitto.port, run_id, 20_000, DEVICES, rate=400)
        publisher = threading.Thread(target=simulate.run, args=(plan, None), daemon=True)
        publisher.start()
        wait_for(lambda: gw.readings("delivered") >= 1000, 30, "flow before the outage")
        baseline = cpu_share_over(pid, 8.0)
        db.stop()
        retries_before = gw.metrics()["gateway_writes_total{result=retry}"]
        during = cpu_share_over(pid, 30.0)
        probes = gw.metrics()["gateway_writes_total{result=retry}"] - retries_before
        backlog = gw.metrics()["gateway_buffer_readings"]
        db = backends.start_influxd(db.workdir, port=db.port)
        publisher.join(timeout=60)
        wait_for(lambda: gw.metrics()["gateway_buffer_readings"] == 0, 60, "backlog drained")
        series = servers.influxql(db.url, 'SELECT count("temp") FROM "telemetry"', "t")
        assert series[0]["values"][0][1] == 20_000
        assert backlog > 10_000, "readings kept flowing in during the outage"
        assert during < baseline + 0.05, (baseline, during)
        # Up to 4 writes in flight fail together, then one probe per jittered backoff (mean
        # about 2.5 s at a 5 s cap): typically 15-25. Retrying without backoff would be thousands.
        assert probes <= 40, f"{probes} write attempts in 30 s of outage"
        assert gw.log().count("database write failed") == 1
    finally:
        db.stop()


def cpu_share_over(pid: int, seconds: float) -> float:
    """Share of one core the process used over the next `seconds`."""
    before, started = cpu_seconds(pid), time.monotonic()
    wait_for(lambda: time.monotonic() - started >= seconds, seconds + 5, f"{seconds} s")
    return (cpu_seconds(pid) - before) / (time.monotonic() - started)


def test_the_first_batch_lands_within_two_seconds_of_the_database_s_return(
    gateway: Callable[..., GatewayProcess],
    mosquitto: Endpoint,
    run_id: str,
    restartable_victoria: list[servers.Server],
) -> None:
    """The write backoff may be a minute long by then; the readiness probe does not wait it out."""
    vm = restartable_victoria[0]
    gw = deliver_then_lose_the_database(
        gateway,
        mosquitto,
        run_id,
        vm,
        flush="linger_s = 0.1\nretry_initial_s = 60\nretry_max_s = 60\nprobe_interval_s = 1\n",
        first=500,
        while_down=2000,
    )
    wait_for(
        lambda: gw.metrics().get("gateway_sink_probes_total{result=failed}", 0) >= 2,
        30,
        "a failed write, then probes that find the database still down",
    )

    restartable_victoria.append(backends.start_victoria_metrics(vm.workdir, port=vm.port))
    back = time.monotonic()
    wait_for(lambda: gw.readings("delivered") > 500, 2.0, "a batch within 2 s of the return")
    resumed_s = time.monotonic() - back
    wait_for(lambda: gw.readings("delivered") == 2500, 30, "the backlog delivered")
    # The first 500 were published again with the same timestamps: 2,000 distinct points.
    assert victoria_count(vm.url, run_id) == 2000
    assert resumed_s <= 2.0
