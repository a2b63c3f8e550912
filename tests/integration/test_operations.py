"""Operating the gateway: metrics during traffic, health, systemd's notify protocol, signals."""

from __future__ import annotations

import itertools
import re
import signal
import socket
import threading
import time
from typing import TYPE_CHECKING

import pytest

from tests import backends
from tests.gatewayproc import (
    LOOP_LAG,
    assert_identities,
    expected_points,
    histogram_max,
    publish_in_background,
    stored_points,
    wait_for,
)

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from tests.conftest import Endpoint, InfluxV1
    from tests.gatewayproc import GatewayProcess

pytestmark = pytest.mark.integration


def test_metrics_add_up_and_move_with_the_traffic(
    gateway: Callable[..., GatewayProcess], mosquitto: Endpoint, influx: InfluxV1, run_id: str
) -> None:
    """Every scrape during a run satisfies the accounting identities, the counters only grow,
    and at the end they equal what was published; health, process and broker metrics are there."""
    gw = gateway(influx.config)
    count = 20_000
    publisher = publish_in_background(mosquitto.port, run_id, count, rate=5000)
    scrapes = []
    while publisher.is_alive() or len(scrapes) < 3:
        scrapes.append(assert_identities(gw))
        time.sleep(0.1)
    wait_for(lambda: influx.count() >= count, 60, "every point in InfluxDB")
    final = wait_for(
        lambda: (
            (m := assert_identities(gw))["gateway_readings_total{outcome=delivered}"] == count and m
        ),
        30,
        "the delivered count",
    )
    scrapes.append(final)  # type: ignore[arg-type]
    for outcome in ("received", "accepted", "delivered"):
        series = [s[f"gateway_readings_total{{outcome={outcome}}}"] for s in scrapes]
        assert series == sorted(series), outcome
        assert series[-1] == count
    assert len({s["gateway_readings_total{outcome=received}"] for s in scrapes}) > 3
    last = scrapes[-1]
    assert last["gateway_buffer_readings"] == 0
    assert last["process_resident_memory_bytes"] > 0
    wait_for(
        lambda: gw.metrics().get("gateway_broker_clients_connected", 0) >= 1,
        10,
        "the broker's $SYS counters",
    )
    assert "gateway_buffer_lag_seconds" in last
    assert last["gateway_writes_in_flight"] == 0
    assert gw.get("/healthz") == (200, {"status": "ok", "problems": []})
    assert gw.get("/readyz") == (200, {"status": "ok", "problems": []})


def test_readyz_follows_the_broker(
    gateway: Callable[..., GatewayProcess], influx: InfluxV1, tmp_path: Path
) -> None:
    """/readyz is 503 while the broker is away and 200 again once the gateway reconnected."""
    broker = backends.start_mosquitto(tmp_path / "broker")
    try:
        gw = gateway(influx.config, mqtt_port=broker.port)
        assert gw.get("/readyz")[0] == 200
        broker.stop()
        _, body = wait_for(
            lambda: (got := gw.get("/readyz"))[0] == 503 and got, 30, "/readyz to fail"
        )  # type: ignore[misc]
        assert "not connected to the broker" in body["problems"]
        assert gw.get("/healthz")[0] == 200  # alive all along
        broker = backends.start_mosquitto(broker.workdir, port=broker.port)
        wait_for(lambda: gw.get("/readyz")[0] == 200, 60, "/readyz to recover")
    finally:
        broker.stop()


def test_sigterm_during_a_flow_exits_cleanly_and_loses_nothing(
    gateway: Callable[..., GatewayProcess], mosquitto: Endpoint, influx: InfluxV1, run_id: str
) -> None:
    """SIGTERM while readings flow: exit 0 within the grace period; after a restart every
    reading the publisher had acknowledged lands, exactly once."""
    gw = gateway(influx.config, flush="linger_s = 0.2\ngrace_s = 5\n")
    count = 20_000
    publisher = publish_in_background(mosquitto.port, run_id, count, rate=4000)
    wait_for(lambda: gw.readings("accepted") > 2000, 30, "readings to flow")
    started = time.monotonic()
    assert gw.stop(timeout_s=20) == 0
    assert time.monotonic() - started < 5 + 5
    assert "closing intake, flushing" in gw.log()
    publisher.join(timeout=60)
    gw.start()
    wait_for(lambda: influx.count() >= count, 60, "every point after the restart")
    assert stored_points(influx.query('SELECT "temp", "hum", "device" FROM "telemetry"')) == (
        expected_points(count, 10)
    )


def test_systemd_notify_protocol(
    gateway: Callable[..., GatewayProcess], influx: InfluxV1, tmp_path: Path
) -> None:
    """Acting as systemd's NOTIFY_SOCKET: READY=1 once subscribed, WATCHDOG=1 at half the
    watchdog interval with a STATUS line, STOPPING=1 on SIGTERM."""
    path = tmp_path / "notify.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))
    receiver.settimeout(1.0)
    messages: list[tuple[float, dict[str, str]]] = []

    def receive() -> None:
        while True:
            try:
                data = receiver.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            messages.append((time.monotonic(), fields))

    listener = threading.Thread(target=receive, daemon=True)
    listener.start()
    try:
        gw = gateway(influx.config, env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "2000000"})
        wait_for(lambda: sum("WATCHDOG" in m for _, m in messages) >= 3, 10, "three watchdog pings")
        ready = [t for t, m in messages if m.get("READY") == "1"]
        assert len(ready) == 1
        pings = [t for t, m in messages if "WATCHDOG" in m]
        assert all(b - a < 2.0 for a, b in itertools.pairwise(pings))
        assert any("backlog" in m.get("STATUS", "") for _, m in messages)
        assert gw.stop() == 0
        wait_for(lambda: any(m.get("STOPPING") == "1" for _, m in messages), 5, "STOPPING=1")
    finally:
        receiver.close()


class NotifyListener:
    """systemd's side of the notify socket: every datagram with the time it came."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(path))
        self._socket.settimeout(1.0)
        self.messages: list[tuple[float, dict[str, str]]] = []
        threading.Thread(target=self._receive, daemon=True).start()

    def _receive(self) -> None:
        while True:
            try:
                data = self._socket.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.messages.append((time.monotonic(), fields))

    def pings_after(self, moment: float) -> int:
        return sum(1 for t, m in self.messages if t > moment and "WATCHDOG" in m)

    def close(self) -> None:
        self._socket.close()


STALL_S = 2.0
LAG_INTERVAL_S = 0.05


def test_a_stall_of_the_event_loop_is_measured_and_reported_but_not_killed(
    gateway: Callable[..., GatewayProcess], influx: InfluxV1, tmp_path: Path
) -> None:
    """A 2 s SIGSTOP holds the gateway's loop: the lag histogram counts a lag of the stall,
    /healthz answers 503 naming it, the status shows it, and the watchdog pings go on."""
    notify = NotifyListener(tmp_path / "notify.sock")
    try:
        gw = gateway(
            influx.config,
            metrics_extra=f"max_loop_lag_s = 1\nloop_lag_interval_s = {LAG_INTERVAL_S}\n",
            env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "2000000"},
        )
        wait_for(lambda: gw.get("/healthz")[0] == 200, 10, "/healthz to pass after the start")
        before = gw.metrics()
        assert before["gateway_event_loop_lag_max_seconds"] < 1
        gw.signal(signal.SIGSTOP)
        stopped = time.monotonic()
        # The stall itself, not a wait for a condition: the process is frozen for this long.
        time.sleep(STALL_S)
        gw.signal(signal.SIGCONT)
        stalled_s = time.monotonic() - stopped
        _, body = wait_for(
            lambda: (got := gw.get("/healthz"))[0] == 503 and got[1].get("hung") is False and got,
            10,
            "/healthz to report the stall that is over",
        )  # type: ignore[misc]
        (problem,) = body["problems"]  # type: ignore[misc]
        assert problem.startswith("event loop lag ")
        assert "more than max_loop_lag_s 1 s" in problem
        after = gw.metrics()
        # The sampler was due at most one interval after the stop, and woke at the resume.
        assert after["gateway_event_loop_lag_max_seconds"] >= stalled_s - LAG_INTERVAL_S - 0.05
        assert histogram_max(after, LOOP_LAG, since=before) >= STALL_S
        assert histogram_max(before, LOOP_LAG) < 1
        over_a_second = after[f"{LOOP_LAG}_count"] - after[f"{LOOP_LAG}_bucket{{le=1.0}}"]
        assert over_a_second >= 1
        status = gw.cli("status")
        shown = re.search(r"event loop lag in the last minute: max ([\d.]+) s, p99 ", status)
        assert shown is not None, status
        assert float(shown[1]) >= STALL_S - LAG_INTERVAL_S - 0.1
        _, view = gw.get("/api/v1/status?top=0")
        assert view["runtime"]["loop_lag_max_s"] >= STALL_S - LAG_INTERVAL_S - 0.05  # type: ignore[index]
        # A stall that is over must not cost the gateway its life: systemd hears the pings.
        resumed = time.monotonic()
        wait_for(lambda: notify.pings_after(resumed) >= 2, 5, "watchdog pings after the stall")
        assert gw.get("/healthz")[0] == 503
        assert "the event loop stalled for 2." in gw.log()
    finally:
        notify.close()


def test_sighup_reloads_what_it_can_and_names_the_rest(
    gateway: Callable[..., GatewayProcess], influx: InfluxV1
) -> None:
    gw = gateway(influx.config)
    text = gw.config_path.read_text()
    gw.config_path.write_text(
        text.replace("linger_s = 0.2", "linger_s = 0.5")
        .replace("port = ", "keepalive_s = 30\nport = ", 1)
        .replace('capacity = "64MiB"', 'capacity = "64MiB"\nhigh_watermark = 0.95')
    )
    gw.signal(signal.SIGHUP)
    wait_for(
        lambda: (
            "SIGHUP: reloaded buffer.high_watermark, flush.linger_s; not reloaded, restart "
            "to apply: mqtt.keepalive_s" in gw.log()
        ),
        10,
        "the reload to be logged",
    )
    gw.config_path.write_text("[mqtt]\nport = 'no'\n")
    gw.signal(signal.SIGHUP)
    wait_for(lambda: "has errors, nothing reloaded" in gw.log(), 10, "the refused reload")
    assert gw.get("/readyz")[0] == 200
    assert gw.stop() == 0
