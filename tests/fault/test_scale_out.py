"""The scale-out example of deploy/scale-out: two gateways in one shared subscription group,
one broker, one database; kill -9 of one of them loses nothing."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from gateway.tools import servers, simulate
from tests.gatewayproc import GatewayProcess, expected_points, simulated_plan, wait_for
from tests.integration.test_end_to_end import victoria_points

if TYPE_CHECKING:
    from tests.conftest import Endpoint

pytestmark = pytest.mark.fault

EXAMPLE = Path(__file__).parents[2] / "deploy" / "scale-out"


def box(
    name: str, tmp_path: Path, mosquitto: Endpoint, victoria_url: str, run_id: str
) -> GatewayProcess:
    """The example's gateway `name`, pointed at this test's broker, database and topics."""
    workdir = tmp_path / name
    workdir.mkdir()
    port = servers.free_port()
    gw = GatewayProcess(workdir, (EXAMPLE / f"{name}.toml").read_text(), port)
    gw.extra_env = {
        "GATEWAY__MQTT__HOST": mosquitto.host,
        "GATEWAY__MQTT__PORT": str(mosquitto.port),
        "GATEWAY__MQTT__CLIENT_ID": f"{name}-{run_id}",
        "GATEWAY__MQTT__SUBSCRIPTIONS__0__TOPIC": f"{run_id}/{{device}}/{{measurement}}",
        "GATEWAY__MQTT__SUBSCRIPTIONS__0__TAGS": f'{{ run = "{run_id}" }}',
        "GATEWAY__BUFFER__PATH": str(workdir / "buffer"),
        "GATEWAY__INFLUX__URL": victoria_url,
        "GATEWAY__METRICS__LISTEN": f"127.0.0.1:{port}",
    }
    return gw.start()


def test_two_boxes_share_the_stream_and_a_killed_box_loses_nothing(
    tmp_path: Path, mosquitto: Endpoint, victoria_url: str, run_id: str
) -> None:
    """30,000 readings at 4,000/s; box A is killed with -9 mid-flow and started again (as
    systemd would): every reading lands, and both boxes took part. Then box B is retired with
    `gateway retire`, and box A alone takes the next 2,000."""
    count, devices = 30_000, 30
    boxes = [
        box(name, tmp_path, mosquitto, victoria_url, run_id) for name in ("gateway-a", "gateway-b")
    ]
    a, b = boxes
    try:
        plan = simulated_plan(mosquitto.port, run_id, count, devices, rate=4000)
        publisher = threading.Thread(target=simulate.run, args=(plan,), daemon=True)
        publisher.start()
        wait_for(lambda: a.readings("accepted") >= 3000, 60, "box A to take readings")
        assert a.process is not None
        os.kill(a.process.pid, signal.SIGKILL)
        a.process.wait()
        # Box B goes on alone meanwhile; what the broker routes to A's session waits for A.
        wait_for(lambda: b.readings("accepted") >= 12_000, 60, "box B to go on alone")
        a.start()
        publisher.join(timeout=120)
        assert not publisher.is_alive()
        wait_for(lambda: len(victoria_points(victoria_url, run_id)) >= count, 120, "30,000 points")
        assert victoria_points(victoria_url, run_id) == expected_points(count, devices)
        assert a.readings("accepted") > 0
        assert b.readings("accepted") > 0
        for gw in boxes:
            wait_for(lambda g=gw: g.metrics()["gateway_buffer_readings"] == 0, 30, "empty")
            assert gw.stop() == 0
        # Box B leaves for good: its session ends, so the broker gives box A everything.
        assert "retired" in b.cli("retire")
        assert not (b.workdir / "buffer" / "data.mdb").exists()
        a.start()
        more = dataclasses.replace(plan, count=count + 2_000, skip=count, rate=0)
        assert simulate.run(more).published == 2_000
        wait_for(lambda: a.readings("accepted") == 2_000, 60, "box A to take all 2,000")
        wait_for(lambda: len(victoria_points(victoria_url, run_id)) >= count + 2_000, 60, "32,000")
        assert victoria_points(victoria_url, run_id) == expected_points(count + 2_000, devices)
    finally:
        for gw in boxes:
            gw.kill()
