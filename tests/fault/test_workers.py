"""`[mqtt] workers = N`: a shared subscription over N processes loses nothing, whatever befalls
one of them, and a restart with another N delivers every environment the old N left."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
from typing import TYPE_CHECKING

import pytest

from gateway.tools import servers, simulate
from tests.gatewayproc import (
    LOOP_LAG,
    assert_identities,
    expected_points,
    simulated_plan,
    wait_for,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.conftest import Endpoint, InfluxV1
    from tests.gatewayproc import GatewayProcess

pytestmark = pytest.mark.fault

ACCEPTED = "gateway_readings_total{outcome=accepted}"


def test_two_workers_share_the_stream_and_a_killed_worker_is_restarted(
    gateway: Callable[..., GatewayProcess], mosquitto: Endpoint, influx: InfluxV1, run_id: str
) -> None:
    """30,000 readings over two workers; kill -9 of one mid-flow: it comes back, all land."""
    count, devices = 30_000, 30
    gw = gateway(influx.config, workers=2)
    pids = gw.workers()
    assert len(pids) == 2
    plan = simulated_plan(mosquitto.port, run_id, count, devices, rate=5000)
    publisher = threading.Thread(target=simulate.run, args=(plan,), daemon=True)
    publisher.start()
    wait_for(lambda: gw.readings("accepted") >= count / 3, 60, "a third of the readings")
    os.kill(pids[1], signal.SIGKILL)
    wait_for(
        lambda: len(gw.workers()) == 2 and pids[1] not in gw.workers(),
        30,
        "the parent to start the killed worker again",
    )
    publisher.join(timeout=120)
    assert not publisher.is_alive()
    wait_for(lambda: influx.count() >= count, 120, "every reading in the database")
    assert influx.points() == expected_points(count, devices)
    accepted = gw.per_worker(ACCEPTED)
    assert set(accepted) == {"0", "1"}
    assert all(n > 0 for n in accepted.values()), accepted
    assert gw.per_worker("gateway_worker_restarts_total") == {"0": 0, "1": 1}
    wait_for(lambda: gw.metrics()["gateway_buffer_readings"] == 0, 30, "empty buffers")
    assert_identities(gw)
    status, body = gw.get("/readyz")
    assert (status, body["status"]) == (200, "ok")
    assert gw.stop() == 0
    assert gw.workers() == []


def test_a_restart_with_fewer_workers_delivers_what_the_old_workers_held(
    gateway: Callable[..., GatewayProcess], mosquitto: Endpoint, influx: InfluxV1, run_id: str
) -> None:
    """Three workers buffer 12,000 readings with the database down and stop; 3,000 more are
    published while no gateway runs. One worker, database back: exactly 15,000 land, and the
    three old environments are gone."""
    dead_url = f"http://127.0.0.1:{servers.free_port()}"
    gw = gateway(
        f'url = "{dead_url}"\napi = "v1"\ndatabase = "{influx.database}"',
        workers=3,
        flush="linger_s = 0.2\ngrace_s = 1\n",
    )
    buffered, offline, devices = 12_000, 3_000, 20
    plan = simulated_plan(mosquitto.port, run_id, buffered + offline, devices)
    first = dataclasses.replace(plan, count=buffered)
    assert simulate.run(first).published == buffered
    wait_for(lambda: gw.readings("accepted") == buffered, 60, "12,000 readings buffered")
    assert len([v for v in gw.per_worker(ACCEPTED).values() if v]) == 3
    assert gw.stop() == 0
    view = json.loads(gw.cli("status", "--json"))
    assert (view["readings"], len(view["environments"])) == (buffered, 3)
    assert sum(d["readings"] for d in view["devices"]) == buffered
    assert len(view["devices"]) == devices
    assert ": consistent;" in gw.cli("verify-buffer")
    # The rest of the plan, while the gateway is down: the broker keeps it in the sessions.
    assert simulate.run(dataclasses.replace(plan, skip=buffered)).published == offline
    text = gw.config_path.read_text().replace("workers = 3\n", "", 1)
    gw.config_path.write_text(text.replace(dead_url, influx.url))
    gw.connections = 1
    gw.start()
    wait_for(lambda: influx.count() >= buffered + offline, 120, "15,000 points")
    assert influx.points() == expected_points(buffered + offline, devices)
    buffer = gw.workdir / "buffer"
    wait_for(lambda: not list(buffer.glob("worker-*")), 60, "the old environments to be removed")
    assert "retired" in gw.log()
    assert gw.stop() == 0


def test_a_worker_whose_loop_stalled_is_reported_not_restarted(
    gateway: Callable[..., GatewayProcess], influx: InfluxV1
) -> None:
    """A worker frozen for 2 s: the parent's /healthz names the stall until the worker's
    minute is over, and the parent does not restart it (its loop turns again)."""
    gw = gateway(influx.config, workers=2, metrics_extra="max_loop_lag_s = 1\n")
    pids = gw.workers()
    assert gw.get("/healthz")[0] == 200
    os.kill(pids[0], signal.SIGSTOP)
    # The stall itself, not a wait for a condition: the worker is frozen for this long.
    threading.Event().wait(2.0)
    os.kill(pids[0], signal.SIGCONT)
    _, body = wait_for(
        lambda: (got := gw.get("/healthz"))[0] == 503 and got, 10, "the parent to report it"
    )  # type: ignore[misc]
    (problem,) = body["problems"]  # type: ignore[misc]
    assert problem.startswith("worker ")
    assert ": event loop lag " in problem
    # Longer than the 30 s after which the parent kills a worker that is hung.
    wait_for(lambda: gw.get("/healthz")[0] == 200, 90, "the stall to leave the window")
    assert sorted(gw.workers()) == sorted(pids)
    assert gw.per_worker("gateway_worker_restarts_total") == {"0": 0, "1": 0}
    # Counted by the stalled worker once it turned again (one scrape: the counts move).
    m = gw.metrics()
    assert m[f"{LOOP_LAG}_count"] - m[f"{LOOP_LAG}_bucket{{le=1.0}}"] >= 1
