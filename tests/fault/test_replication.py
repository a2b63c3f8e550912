"""A dead box loses nothing: a standby with a replicated buffer takes over (issue 35).

One Mosquitto, two gateways with buffers of their own on this machine, and VictoriaMetrics,
which is down while 100 devices publish 2,000 readings a second. Half way, the primary is killed
with kill -9 and its buffer directory deleted (the card died). The standby must take over within
5 s: the sensors' session is its own and it takes readings. Then the database returns, and
every reading the broker had handed out must be in it, none missing, in `sync` mode. The same
with the standby killed (-9) and restarted during the run first: it is caught up again before
the primary dies.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from typing import TYPE_CHECKING

import pytest

from gateway.tools import servers, simulate
from tests import backends
from tests.gatewayproc import simulated_plan, wait_for
from tests.replicationpair import durability, role, start_pair, stored

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.conftest import Endpoint
    from tests.gatewayproc import GatewayProcess

pytestmark = pytest.mark.fault

DEVICES = 100
RATE = 2000
RUN_S = int(os.environ.get("REPLICATION_RUN_S", "30"))
TAKEOVER_MAX_S = 5.0


def run_and_kill_primary(
    gateway: Callable[..., GatewayProcess],
    mosquitto: Endpoint,
    run_id: str,
    far: list[servers.Server],
    *,
    restart_standby: bool,
) -> None:
    vm = far[0]
    primary, standby = start_pair(gateway, vm, 'mode = "sync"\n')
    vm.stop()
    total = RATE * RUN_S
    plan = simulated_plan(mosquitto.port, run_id, total, DEVICES, rate=RATE)
    publisher = threading.Thread(target=simulate.run, args=(plan, None), daemon=True)
    publisher.start()
    if restart_standby:
        time.sleep(RUN_S / 4)
        standby.kill()
        standby.start(wait_connected=False)
        wait_for(lambda: role(standby) == "standby", 30, "the standby following again")
        wait_for(lambda: durability(primary) == "sync", 30, "the standby caught up again")
    time.sleep(max(1.0, RUN_S / 2 - (RUN_S / 4 if restart_standby else 0)))
    assert durability(primary) == "sync"
    accepted = primary.readings("accepted")
    assert accepted > 0
    primary.kill()
    died = time.monotonic()
    shutil.rmtree(primary.workdir / "buffer")  # the card died
    wait_for(
        lambda: role(standby) == "primary" and standby.metrics().get("gateway_mqtt_connected") == 1,
        TAKEOVER_MAX_S + 5,
        "the standby taking over",
    )
    took = time.monotonic() - died
    before = standby.readings("accepted")
    wait_for(lambda: standby.readings("accepted") > before, 10, "the new primary taking readings")
    assert took <= TAKEOVER_MAX_S, f"the takeover took {took:.1f} s"
    publisher.join(timeout=RUN_S * 4)
    assert not publisher.is_alive()
    far.append(backends.start_victoria_metrics(vm.workdir, port=vm.port))
    wait_for(lambda: stored(vm.url, run_id) >= total, 120, "every reading in the database")
    wait_for(lambda: standby.metrics()["gateway_buffer_readings"] == 0, 30, "the buffer emptied")
    assert stored(vm.url, run_id) == total
    assert standby.metrics()["gateway_replication_takeovers_total"] == 1


@pytest.mark.parametrize("restart_standby", [False, True], ids=["standby_up", "standby_restarted"])
def test_primary_killed_and_its_buffer_gone_the_standby_delivers_every_reading(
    gateway: Callable[..., GatewayProcess],
    mosquitto: Endpoint,
    run_id: str,
    restartable_victoria: list[servers.Server],
    *,
    restart_standby: bool,
) -> None:
    run_and_kill_primary(
        gateway, mosquitto, run_id, restartable_victoria, restart_standby=restart_standby
    )
