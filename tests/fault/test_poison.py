"""One message must never stop the gateway: isolation of what raises, and the poison breaker.

The faults are injected with `GATEWAY_FAULT_INJECT` (gateway/ingest/faults.py) on a chosen payload:
`raise` is an unexpected exception in the middle of taking a message, `kill` a crash that no
handler sees (SIGKILL, as a segfault or the out-of-memory killer would be).
"""

from __future__ import annotations

import json
import signal
import subprocess
from typing import TYPE_CHECKING

import pytest

from gateway.ingest.faults import ENV
from tests.gatewayproc import assert_identities, count, publish_messages, wait_for

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.conftest import Endpoint, InfluxV1
    from tests.gatewayproc import GatewayProcess

pytestmark = pytest.mark.fault

START_MS = 1_700_000_000_000
# Enough of the 2,000 readings waiting in the stopped gateway's socket; a PUBLISH of one is at
# most this long, so at least IN_FLIGHT_BYTES / MESSAGE_BYTES_MAX messages were in flight.
IN_FLIGHT_BYTES = 40_000
MESSAGE_BYTES_MAX = 100


def good(run_id: str, n: int) -> tuple[str, bytes]:
    return f"{run_id}/dev-{n % 3}/telemetry", json.dumps({"ts": START_MS + n, "temp": n}).encode()


def landed(influx: InfluxV1) -> set[int]:
    series = influx.query('SELECT "temp" FROM "telemetry"')
    return {int(row[1]) for s in series for row in s["values"]}


def wait_for_exit(gw: GatewayProcess, timeout_s: float) -> int:
    assert gw.process is not None
    try:
        return gw.process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the gateway did not die within {timeout_s} s:\n{gw.log()}") from None


def test_a_message_that_kills_the_gateway_twice_is_set_aside_and_the_box_resumes(
    gateway: Callable[..., GatewayProcess], mosquitto: Endpoint, influx: InfluxV1, run_id: str
) -> None:
    """Killed twice by one message, restarted as systemd would: the third run sets it aside.

    Every good reading around it lands exactly, the poison is in `gateway rejects`, counted and
    logged at ERROR, and the gateway takes later readings without another death.
    """
    gw = gateway(influx.config, env={ENV: "kill:POISON"})
    before = [good(run_id, n) for n in range(30)]
    poison = (f"{run_id}/dev-9/telemetry", b'{"temp": 1, "note": "POISON"}')
    after = [good(run_id, n) for n in range(30, 60)]
    publish_messages(mosquitto.port, [*before, poison, *after])
    deaths = []
    for _ in range(2):
        deaths.append(wait_for_exit(gw, 30))
        gw.launch()  # Restart=on-failure
    assert deaths == [-9, -9]
    wait_for(lambda: gw._alive() and landed(influx) == set(range(60)), 60, "60 good readings")
    assert count(gw, "gateway_poison_messages") == 1
    assert count(gw, "gateway_readings_invalid", reason="poison") == 1
    assert "set aside as poison" in gw.log()
    rejects = gw.cli("rejects")
    assert "poison" in rejects
    assert "POISON" in rejects
    later = [good(run_id, n) for n in range(60, 100)]
    publish_messages(mosquitto.port, later)
    wait_for(lambda: landed(influx) == set(range(100)), 60, "40 later readings")
    assert gw.process is not None
    assert gw.process.poll() is None
    assert gw.stop() == 0
    assert influx.count() == 100


def unread_bytes(pid: int, broker_port: int) -> int:
    """Bytes waiting in the receive queue of `pid`'s connection to the broker (ss's Recv-Q)."""
    listed = subprocess.run(
        ["ss", "-tnpH", "state", "established", f"( dport = :{broker_port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for line in listed.splitlines():
        if f"pid={pid}," in line:
            return int(line.split()[0])
    return 0


def test_messages_in_flight_at_a_kill_9_are_taken_one_by_one_and_none_refused(
    gateway: Callable[..., GatewayProcess], mosquitto: Endpoint, influx: InfluxV1, run_id: str
) -> None:
    """After an ordinary kill -9, the redelivered messages are taken alone; all land, none poison.

    The gateway is stopped (SIGSTOP) while the readings are published, so the broker has them in
    flight to it, and killed once they wait in its socket.
    """
    gw = gateway(influx.config)
    assert gw.process is not None
    pid = gw.process.pid
    gw.process.send_signal(signal.SIGSTOP)
    publish_messages(mosquitto.port, [good(run_id, n) for n in range(2000)])
    wait_for(
        lambda: unread_bytes(pid, mosquitto.port) > IN_FLIGHT_BYTES,
        30,
        "the broker to deliver to the stopped gateway",
    )
    gw.kill()
    gw.start()
    wait_for(lambda: landed(influx) == set(range(2000)), 90, "all 2,000 readings")
    assert "taking the messages the broker delivers again one at a time" in gw.log()
    # A group commit holds many messages; each message taken alone is a commit of its own.
    commits = gw.metrics()["gateway_commit_readings_count"]
    assert commits >= IN_FLIGHT_BYTES / MESSAGE_BYTES_MAX
    assert count(gw, "gateway_poison_messages") == 0
    assert gw.stop() == 0


def test_an_exception_while_taking_one_message_costs_that_message_only(
    gateway: Callable[..., GatewayProcess], mosquitto: Endpoint, influx: InfluxV1, run_id: str
) -> None:
    """An unexpected exception is counted (internal_error), sampled with its type, acknowledged.

    The gateway never exits and every other reading of the stream lands.
    """
    gw = gateway(influx.config, env={ENV: "raise:TRIP"})
    trip = (f"{run_id}/dev-1/telemetry", b'{"temp": 5, "s": "TRIP"}')
    publish_messages(mosquitto.port, [trip])
    wait_for(lambda: count(gw, "gateway_readings_invalid", reason="internal_error"), 30, "1")
    stream = []
    for n in range(200):
        stream += [good(run_id, n), trip]
    publish_messages(mosquitto.port, stream)
    wait_for(lambda: landed(influx) == set(range(200)), 60, "200 good readings")
    assert count(gw, "gateway_readings_invalid", reason="internal_error") == 201
    rejects = gw.cli("rejects")
    assert "internal_error" in rejects
    assert "InjectedFault" in rejects
    assert "unexpected InjectedFault while taking a message" in gw.log()
    assert "Traceback" in gw.log()
    assert_identities(gw)
    assert gw.stop() == 0
