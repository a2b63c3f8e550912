"""A primary and its standby on one broker and one database: what an operator sees and does.

The pair's state in `gateway status` on both boxes and in the status JSON; a sync primary whose
standby stops degrades to local durability at once, visibly (metric, status, log line), and
waits for it again once it is caught up; with `standby_away = "hold"` the acks wait instead; and
the README's failback: the old primary returns as the standby, is caught up, and takes over
again when the new primary dies, with every reading delivered.
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

import pytest

from tests import backends
from tests.gatewayproc import wait_for
from tests.replicationpair import durability, publish, role, start_pair, stored

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway.tools import servers
    from tests.conftest import Endpoint
    from tests.gatewayproc import GatewayProcess

pytestmark = pytest.mark.integration

DEVICES = 10


def pair_of(gw: GatewayProcess) -> dict[str, object]:
    code, status = gw.get("/api/v1/status?top=0")
    assert code == 200
    return status["runtime"]["replication"]  # type: ignore[index,return-value]


def test_a_stopped_standby_degrades_the_primary_visibly_and_a_returning_one_is_caught_up(
    gateway: Callable[..., GatewayProcess],
    mosquitto: Endpoint,
    run_id: str,
    own_victoria: servers.Server,
) -> None:
    primary, standby = start_pair(gateway, own_victoria)
    publish(mosquitto.port, run_id, 100, DEVICES)
    wait_for(lambda: stored(own_victoria.url, run_id) == 100, 30, "the first readings stored")
    text = primary.cli("status")
    assert "replication: primary a (sync: acks wait for the standby), standby b following" in text
    assert "replication: standby b (sync), following primary a" in standby.cli("status")
    wait_for(lambda: pair_of(primary)["lag_records"] == 0, 10, "the standby confirming all")
    assert pair_of(standby)["last_record"] == pair_of(primary)["confirmed_record"]

    standby.stop()
    wait_for(lambda: durability(primary) == "degraded", 5, "the primary degraded")
    assert "standby no longer follows" in primary.log()
    assert primary.metrics()["gateway_replication_peer_up"] == 0
    assert "standby away: local durability only" in primary.cli("status")
    # Acks go out after the local commit alone: readings keep coming and are delivered.
    publish(mosquitto.port, run_id, 100, DEVICES, after=100)
    wait_for(lambda: stored(own_victoria.url, run_id) == 200, 30, "readings while degraded")
    assert primary.metrics()["gateway_replication_unconfirmed_acks_total"] > 0

    standby.start(wait_connected=False)
    wait_for(lambda: durability(primary) == "sync", 30, "the standby caught up and waited for")
    assert pair_of(standby)["last_record"] == pair_of(primary)["last_record"]
    publish(mosquitto.port, run_id, 100, DEVICES, after=200)
    wait_for(lambda: stored(own_victoria.url, run_id) == 300, 30, "readings in sync again")


def test_with_hold_the_acks_wait_for_a_standby_that_is_away(
    gateway: Callable[..., GatewayProcess],
    mosquitto: Endpoint,
    run_id: str,
    own_victoria: servers.Server,
) -> None:
    primary, standby = start_pair(gateway, own_victoria, 'standby_away = "hold"\n')
    standby.stop()
    wait_for(lambda: durability(primary) == "degraded", 5, "the standby away")
    publish(mosquitto.port, run_id, 50, DEVICES)  # the broker has them: QoS 1 is acked to us
    wait_for(lambda: primary.readings("accepted") >= 50, 30, "the readings committed")
    wait_for(lambda: primary.metrics()["gateway_replication_held_acks"] > 0, 5, "their acks held")
    assert "acks held" in primary.cli("status")
    standby.start(wait_connected=False)
    wait_for(lambda: primary.metrics()["gateway_replication_held_acks"] == 0, 30, "acks let go")
    assert durability(primary) == "sync"
    assert primary.metrics()["gateway_replication_unconfirmed_acks_total"] == 0
    wait_for(lambda: stored(own_victoria.url, run_id) == 50, 30, "the readings stored")


def test_failback_the_old_primary_returns_as_standby_and_takes_over_again(
    gateway: Callable[..., GatewayProcess],
    mosquitto: Endpoint,
    run_id: str,
    own_victoria: servers.Server,
) -> None:
    a, b = start_pair(gateway, own_victoria)
    publish(mosquitto.port, run_id, 200, DEVICES)
    wait_for(lambda: stored(own_victoria.url, run_id) == 200, 30, "readings through a")

    a.kill()
    wait_for(lambda: role(b) == "primary", 10, "b taking over")
    publish(mosquitto.port, run_id, 200, DEVICES, after=200)
    wait_for(lambda: stored(own_victoria.url, run_id) == 400, 30, "readings through b")

    # The old primary, started as ever (its configuration says primary), finds b holding the
    # role and follows it: caught up by a snapshot, since b's term is a new one.
    a.start(wait_connected=False)
    wait_for(lambda: role(a) == "standby", 30, "a following b")
    assert "holds the primary's role; starting as its standby" in a.log()
    wait_for(lambda: durability(b) == "sync", 30, "b's acks waiting for a")
    assert b.metrics()["gateway_replication_snapshots_total"] >= 1
    assert pair_of(a)["last_record"] == pair_of(b)["confirmed_record"]

    b.kill()
    wait_for(lambda: role(a) == "primary", 10, "a taking over again")
    publish(mosquitto.port, run_id, 200, DEVICES, after=400)
    wait_for(lambda: stored(own_victoria.url, run_id) == 600, 30, "every reading delivered")
    assert a.metrics()["gateway_replication_takeovers_total"] == 1


def test_a_standby_frozen_past_the_confirm_timeout_is_caught_up_when_it_thaws(
    gateway: Callable[..., GatewayProcess],
    mosquitto: Endpoint,
    run_id: str,
    own_victoria: servers.Server,
) -> None:
    """No will (its connection stays up), no gap it could find: its confirmations restart
    the catch-up."""
    primary, standby = start_pair(gateway, own_victoria)
    standby.signal(signal.SIGSTOP)
    try:
        publish(mosquitto.port, run_id, 20, DEVICES)
        wait_for(lambda: durability(primary) == "degraded", 10, "the primary degraded")
        publish(mosquitto.port, run_id, 20, DEVICES, after=20)
    finally:
        standby.signal(signal.SIGCONT)
    wait_for(lambda: durability(primary) == "sync", 20, "the standby caught up again")
    wait_for(
        lambda: pair_of(standby)["last_record"] == pair_of(primary)["last_record"],
        10,
        "the replica up to the primary's newest record",
    )
    wait_for(lambda: stored(own_victoria.url, run_id) == 40, 30, "every reading stored")


def test_an_old_primary_delivers_what_only_it_acknowledged_before_it_follows(
    gateway: Callable[..., GatewayProcess],
    mosquitto: Endpoint,
    run_id: str,
    restartable_victoria: list[servers.Server],
) -> None:
    """Readings a degraded primary acknowledged alone, then died with its disk intact: the new
    primary never had them, and the old one, returning as its standby, delivers them first
    instead of letting a snapshot replace them."""
    vm = restartable_victoria[0]
    a, b = start_pair(gateway, vm)
    b.stop()
    wait_for(lambda: durability(a) == "degraded", 5, "a without its standby")
    vm.stop()
    publish(mosquitto.port, run_id, 50, DEVICES)  # acknowledged by a alone
    wait_for(lambda: a.readings("accepted") == 50, 30, "a holding them")
    a.kill()
    b.start(wait_connected=False)
    wait_for(lambda: role(b) == "primary", 20, "b taking over without them")
    restartable_victoria.append(backends.start_victoria_metrics(vm.workdir, port=vm.port))
    a.start(wait_connected=False)
    wait_for(lambda: role(a) == "standby", 60, "a following b once it delivered its own")
    assert "delivering them before it follows" in a.log()
    wait_for(lambda: stored(vm.url, run_id) == 50, 30, "the readings only a had, stored")
    wait_for(lambda: durability(b) == "sync", 30, "b's acks waiting for a")
