"""Near capacity with drop_oldest, shed, a device share and the device guard, database down.

Each test fills a small buffer while VictoriaMetrics is stopped, starts it again, waits for the
buffer to drain and then checks exact counts: what the database holds plus what the gateway
counted as dropped or refused is exactly what was published, and what was lost is what the
policy allows to lose.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from gateway.tools import servers
from tests import backends
from tests.gatewayproc import (
    SMALL_API,
    assert_identities,
    count,
    publish_messages,
    wait_for,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.conftest import Endpoint
    from tests.gatewayproc import GatewayProcess

pytestmark = pytest.mark.fault

FLUSH = "linger_s = 0.1\nretry_max_s = 1\nbatch_initial = 500\nbatch_ceiling = 500\n"
START_MS = 1_700_000_000_000
# Readings of one device, well past what the 1 MiB buffer's budget holds.
LARGE = 48_000


def subscription(run_id: str, kind: str, extra: str = "") -> str:
    return (
        f'[[mqtt.subscriptions]]\ntopic = "{run_id}/{{device}}/{kind}"\nmeasurement = "{kind}"\n'
        f'qos = 1\nformat = "json"\ntags = {{ run = "{run_id}" }}\n{extra}\n'
    )


def messages(run_id: str, device: str, kind: str, first: int, n: int) -> list[tuple[str, str]]:
    """`n` readings of one device, numbered from `first`; the number is also the timestamp."""
    return [
        (f"{run_id}/{device}/{kind}", json.dumps({"ts": START_MS + i, "v": float(i)}))
        for i in range(first, first + n)
    ]


def stored(db: servers.Server, run_id: str, kind: str) -> dict[str, set[int]]:
    """Device -> reading numbers the database holds."""
    found: dict[str, set[int]] = {}
    for series in servers.victoria_export(db.url, f'{kind}_v{{run="{run_id}"}}'):
        numbers = found.setdefault(series["metric"]["device"], set())
        numbers.update(ts - START_MS for ts in series["timestamps"])
    return found


@pytest.fixture
def database(own_victoria: servers.Server) -> servers.Server:
    return own_victoria


def start_with_database_down(
    gateway: Callable[..., GatewayProcess],
    db: servers.Server,
    subscriptions: str,
    buffer: str,
) -> GatewayProcess:
    gw = gateway(
        f'url = "{db.url}"\napi = "v2"\norg = "o"\nbucket = "b"',
        subscriptions=subscriptions,
        flush=FLUSH,
        # The smallest capacity: its readings budget (2.36 MB) is about 32,000 readings.
        buffer=f'capacity = "1MiB"\n{buffer}',
        api=SMALL_API,
    )
    db.kill()
    return gw


def restart_and_drain(gw: GatewayProcess, db: servers.Server, published: int) -> servers.Server:
    """Start the database again and wait until every reading is delivered or accounted for."""
    wait_for(
        lambda: assert_identities(gw)["gateway_readings_total{outcome=received}"] >= published,
        60,
        "every published reading to be received",
    )
    db = backends.start_victoria_metrics(db.workdir, port=db.port)
    wait_for(
        lambda: assert_identities(gw)["gateway_buffer_readings"] == 0, 90, "the buffer to drain"
    )
    m = assert_identities(gw)
    assert m["gateway_readings_total{outcome=received}"] == published
    return db


def test_drop_oldest_drops_the_oldest_of_the_largest_device(
    gateway: Callable[..., GatewayProcess],
    mosquitto: Endpoint,
    database: servers.Server,
    run_id: str,
) -> None:
    """Twenty small devices and one large one overflow the buffer: only the large device loses
    readings, and the ones it loses are its oldest."""
    gw = start_with_database_down(
        gateway, database, subscription(run_id, "telemetry"), 'policy = "drop_oldest"\n'
    )
    small = [f"small-{k:02}" for k in range(20)]
    batch = [m for d in small for m in messages(run_id, d, "telemetry", 0, 50)]
    batch += messages(run_id, "large", "telemetry", 0, LARGE)
    batch += [m for d in small for m in messages(run_id, d, "telemetry", 50, 50)]
    publish_messages(mosquitto.port, batch)
    db = restart_and_drain(gw, database, len(batch))
    try:
        m = assert_identities(gw)
        dropped = count(gw, "gateway_readings_dropped", reason="dropped_oldest")
        assert dropped > 1000
        assert m["gateway_readings_total{outcome=dropped}"] == dropped
        assert m["gateway_readings_total{outcome=refused}"] == 0
        found = stored(db, run_id, "telemetry")
        for device in small:
            assert found[device] == set(range(100)), device
        kept = found["large"]
        assert len(kept) + dropped == LARGE
        lost = sorted(set(range(LARGE)) - kept)
        # The lost readings are one run of the oldest; the only older ones kept are those that
        # were on their way to the database (a probe write) when the drops happened.
        assert lost == list(range(lost[0], lost[-1] + 1))
        assert lost[0] <= 500
        assert "started dropping readings of device class 'default'" in gw.log()
    finally:
        db.stop()


def test_shed_keeps_every_critical_alarm(
    gateway: Callable[..., GatewayProcess],
    mosquitto: Endpoint,
    database: servers.Server,
    run_id: str,
) -> None:
    """Telemetry (priority 1) is shed to make room; every critical alarm reading lands."""
    subscriptions = subscription(
        run_id, "alarm", 'device_class = "alarm"\npriority = 9\ncritical = true'
    ) + subscription(run_id, "telemetry", 'device_class = "telemetry"\npriority = 1')
    gw = start_with_database_down(gateway, database, subscriptions, 'policy = "shed"\n')
    devices = [f"pump-{k}" for k in range(5)]
    batch: list[tuple[str, str]] = []
    rounds = 100
    for round_ in range(rounds):
        for device in devices:
            batch += messages(run_id, device, "telemetry", round_ * 100, 100)
            batch += messages(run_id, device, "alarm", round_ * 5, 5)
    telemetry = rounds * 5 * 100
    publish_messages(mosquitto.port, batch)
    db = restart_and_drain(gw, database, len(batch))
    try:
        alarms = stored(db, run_id, "alarm")
        assert alarms == {device: set(range(rounds * 5)) for device in devices}
        kept = sum(len(n) for n in stored(db, run_id, "telemetry").values())
        shed = count(gw, "gateway_readings_dropped", reason="shed", device_class="telemetry")
        shed += count(gw, "gateway_readings_refused", reason="shed", device_class="telemetry")
        assert shed > 5000
        assert kept + shed == telemetry
        assert count(gw, "gateway_readings_dropped", device_class="alarm") == 0
        assert count(gw, "gateway_readings_refused", device_class="alarm") == 0
    finally:
        db.stop()


def test_a_chatty_device_cannot_take_more_than_its_share(
    gateway: Callable[..., GatewayProcess],
    mosquitto: Endpoint,
    database: servers.Server,
    run_id: str,
) -> None:
    """One device publishing 100 times faster than 20 others is held to its share of the
    buffer; the others lose nothing."""
    gw = start_with_database_down(
        gateway,
        database,
        subscription(run_id, "telemetry"),
        'policy = "drop_oldest"\ndevice_share = 0.05\n',
    )
    quiet = [f"quiet-{k:02}" for k in range(20)]
    batch: list[tuple[str, str]] = []
    for i in range(50):
        for device in quiet:
            batch += messages(run_id, device, "telemetry", i, 1)
        batch += messages(run_id, device="chatty", kind="telemetry", first=i * 100, n=100)
    publish_messages(mosquitto.port, batch)
    wait_for(
        lambda: gw.metrics()["gateway_readings_total{outcome=received}"] >= len(batch),
        60,
        "every published reading to be received",
    )
    view = json.loads(gw.cli("status", "--json"))
    share_bytes = 0.05 * gw.metrics()["gateway_buffer_budget_bytes"]
    held = {d["device"]: d["bytes"] for d in view["devices"]}
    assert share_bytes * 0.9 <= held["chatty"] <= share_bytes
    db = restart_and_drain(gw, database, len(batch))
    try:
        found = stored(db, run_id, "telemetry")
        for device in quiet:
            assert found[device] == set(range(50)), device
        dropped = count(gw, "gateway_readings_dropped", reason="device_share")
        assert dropped > 2000
        assert len(found["chatty"]) + dropped == 5000
    finally:
        db.stop()


def test_device_guard_refuses_devices_beyond_the_limit(
    gateway: Callable[..., GatewayProcess],
    mosquitto: Endpoint,
    database: servers.Server,
    run_id: str,
) -> None:
    """With max_devices = 5, readings of a sixth device are refused and counted; the five
    keep everything."""
    gw = start_with_database_down(
        gateway, database, subscription(run_id, "telemetry"), "max_devices = 5\n"
    )
    devices = [f"dev-{k}" for k in range(10)]
    batch = [m for d in devices for m in messages(run_id, d, "telemetry", 0, 20)]
    publish_messages(mosquitto.port, batch)
    db = restart_and_drain(gw, database, len(batch))
    try:
        assert stored(db, run_id, "telemetry") == {d: set(range(20)) for d in devices[:5]}
        assert count(gw, "gateway_readings_refused", reason="max_devices") == 100
        assert "started refusing readings of device class 'default'" in gw.log()
        # One line when the refusals start, one when they have been quiet for a while.
        wait_for(
            lambda: (
                "stopped refusing readings of device class 'default' (max_devices): 100 "
                "readings" in gw.log()
            ),
            30,
            "the end of the refusals to be logged",
        )
    finally:
        db.stop()
