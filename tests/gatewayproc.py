"""Runs the gateway as a user would: `python -m gateway run --config FILE` in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING

from prometheus_client.parser import text_string_to_metric_families

from gateway.tools import servers, simulate
from gateway.tools.demo import scrape

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

START_TIMEOUT_S = 20.0
# The read API's last-value table sized for a 1 MiB buffer (the default does not fit it).
SMALL_API = "latest_series = 500\n"
PUBLISH_CHUNK = 20_000
# `python -m gateway` as if uvloop were not installed (importlib finds no module set to None).
WITHOUT_UVLOOP = (
    "import runpy, sys; sys.modules['uvloop'] = None; sys.argv[0] = 'gateway'; "
    "runpy.run_module('gateway', run_name='__main__', alter_sys=True)"
)


def wait_for(condition: Callable[[], object], timeout_s: float, what: str) -> object:
    """Poll `condition` until it returns something truthy, or fail naming `what`."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            result = condition()
        except (OSError, servers.ServerError) as exc:
            last = exc
        else:
            if result:
                return result
            last = f"last result {result!r}"
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what} ({last})")


def config_text(
    *,
    mqtt_port: int,
    buffer_dir: Path,
    influx: str,
    metrics_port: int,
    subscriptions: str,
    flush: str = "linger_s = 0.2\n",
    buffer: str = 'capacity = "64MiB"\n',
    client_id: str,
    mqtt_extra: str = 'host = "127.0.0.1"\n',
    metrics_extra: str = "",
    api: str = "",
    extra: str = "",
) -> str:
    """A gateway configuration; `influx` is the body of the [influx] table, or [[sinks]] tables.

    `extra`: more sections, appended as given.
    """
    return (
        f'[mqtt]\n{mqtt_extra}port = {mqtt_port}\nclient_id = "{client_id}"\n'
        f"{subscriptions}\n"
        "[buffer]\n"
        + ("" if buffer.startswith("path =") else f'path = "{buffer_dir}"\n')
        + f"{buffer}\n"
        + (influx + "\n" if influx.lstrip().startswith("[[sinks]]") else f"[influx]\n{influx}\n")
        + f"[flush]\n{flush}\n"
        f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n{metrics_extra}'
        + (f"\n[api]\n{api}" if api else "")
        + (f"\n{extra}" if extra else "")
    )


class GatewayProcess:
    """One gateway subprocess with its config, log and metrics endpoint."""

    def __init__(self, workdir: Path, config: str, metrics_port: int) -> None:
        self.workdir = workdir
        self.config_path = workdir / "gateway.toml"
        self.config_path.write_text(config, encoding="utf-8")
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        self.log_path = workdir / "gateway.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.extra_env: dict[str, str] = {}
        self.base_url = self.metrics_url.removesuffix("/metrics")
        # Broker connections when it takes readings: one per worker.
        self.connections = 1
        # The open-file limit (soft and hard) to start it with; None: the test's own.
        self.open_files: int | None = None
        # "asyncio": run on asyncio's own loop although uvloop is installed (the gateway's
        # choice without it), so that both loops' network code is exercised.
        self.event_loop = "default"

    def launch(self) -> None:
        """Start the process and return at once, as systemd's restart would."""
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [*self._python(), "run", "--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self._env(),
            preexec_fn=self._limit_files if self.open_files else None,  # noqa: PLW1509
        )
        log.close()

    def _python(self) -> list[str]:
        """`python -m gateway`, with uvloop hidden from it for event_loop = "asyncio"."""
        if self.event_loop == "default":
            return [sys.executable, "-m", "gateway"]
        assert self.event_loop == "asyncio", self.event_loop
        return [sys.executable, "-c", WITHOUT_UVLOOP]

    def _limit_files(self) -> None:
        """In the child before exec: its open-file limit, as a unit's LimitNOFILE would set."""
        import resource  # noqa: PLC0415

        assert self.open_files is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.open_files, self.open_files))

    def start(self, *, wait_connected: bool = True) -> GatewayProcess:
        """Start; wait until connected to the broker, or else only until serving."""
        self.launch()
        if wait_connected:
            wait_for(
                lambda: (
                    self._alive()
                    and self.metrics().get("gateway_mqtt_connected") == self.connections
                ),
                START_TIMEOUT_S,
                "the gateway to connect",
            )
        else:
            wait_for(
                lambda: self._alive() and "health on /healthz" in self.log(),
                START_TIMEOUT_S,
                "the gateway to serve",
            )
        return self

    def _env(self) -> dict[str, str]:
        """The test's environment without stray overrides, plus this gateway's own."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY__")}
        return env | self.extra_env

    def cli(self, command: str, *args: str) -> str:
        """Run another `gateway` command on this gateway's configuration; its output."""
        config = (
            [str(self.config_path)]
            if command == "check-config"
            else [
                "--config",
                str(self.config_path),
            ]
        )
        result = subprocess.run(
            [sys.executable, "-m", "gateway", command, *args, *config],
            capture_output=True,
            text=True,
            env=self._env(),
            check=True,
        )
        return result.stdout + result.stderr

    def _alive(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"gateway exited with {self.process.returncode}:\n{self.log()}")
        return True

    def metrics(self) -> dict[str, float]:
        return scrape(self.metrics_url)

    def get(self, path: str) -> tuple[int, dict[str, object]]:
        """GET a JSON page of the gateway's HTTP server: (status, body)."""
        try:
            with urllib.request.urlopen(self.base_url + path, timeout=5) as response:  # noqa: S310
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def readings(self, outcome: str) -> float:
        return self.metrics().get(f"gateway_readings_total{{outcome={outcome}}}", 0.0)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise
        return self.process.returncode

    def workers(self) -> list[int]:
        """The pids of the worker processes of this gateway's parent."""
        assert self.process is not None
        return servers.children_of(self.process.pid)

    def per_worker(self, sample: str) -> dict[str, float]:
        """{worker label: value} of one sample, e.g. 'gateway_readings_total{outcome=accepted}'."""
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:  # noqa: S310
            text = response.read().decode()
        name, _, rest = sample.partition("{")
        wanted = dict(pair.split("=", 1) for pair in rest.rstrip("}").split(",") if pair)
        found = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                labels = dict(s.labels)
                worker = labels.pop("worker", "")
                if s.name == name and labels == wanted:
                    found[worker] = s.value
        return found

    def kill(self) -> None:
        """kill -9."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


LOOP_LAG = "gateway_event_loop_lag_seconds"


def histogram_max(
    metrics: dict[str, float], family: str, since: dict[str, float] | None = None
) -> float:
    """The upper bound of a histogram's highest non-empty bucket in a `scrape()`: no observation
    was larger. With `since` (an earlier scrape), only the observations made between the two.
    0 without observations; inf when one passed the last bucket."""
    before = since or {}
    prefix = f"{family}_bucket{{le="
    bounds = sorted(
        (float(key[len(prefix) : -1]), value - before.get(key, 0.0))
        for key, value in metrics.items()
        if key.startswith(prefix)
    )
    if not bounds:
        raise AssertionError(f"no histogram {family} in the scrape")
    highest = 0.0
    below = 0.0
    for bound, cumulative in bounds:
        if cumulative > below:
            highest, below = bound, cumulative
    return highest


def loop_lag_max_s(gw: GatewayProcess, since: dict[str, float] | None = None) -> float:
    """The event-loop lag histogram's highest non-empty bucket (since the scrape `since`):
    `assert loop_lag_max_s(gw, before) <= 0.1` says no stall passed 100 ms."""
    return histogram_max(gw.metrics(), LOOP_LAG, since)


def publish_messages(port: int, messages: list[tuple[str, str | bytes]], qos: int = 1) -> None:
    """Publish each (topic, payload) and wait until the broker acknowledged all of them."""
    import paho.mqtt.client as mqtt  # noqa: PLC0415
    from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        # In chunks: MQTT has 65,535 packet ids for the messages in flight.
        for start in range(0, len(messages), PUBLISH_CHUNK):
            chunk = messages[start : start + PUBLISH_CHUNK]
            infos = [client.publish(topic, payload, qos=qos) for topic, payload in chunk]
            for info in infos:
                info.wait_for_publish(timeout=30)
                assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


SIMULATED_START_MS = 1_700_000_000_000


def simulated_plan(
    port: int, run_id: str, count: int, devices: int, *, rate: float = 0, per_message: int = 1
) -> simulate.Plan:
    """`count` simulated QoS 1 readings on the topics `<run_id>/<device>/telemetry`."""
    return simulate.Plan(
        port=port,
        devices=devices,
        rate=rate,
        count=count,
        qos=1,
        topic=f"{run_id}/{{device}}/telemetry",
        start_ms=SIMULATED_START_MS,
        client_id=f"sim-{run_id}",
        per_message=per_message,
    )


def publish_in_background(port: int, run_id: str, count: int, rate: float = 0) -> threading.Thread:
    """Publish `count` simulated readings from 10 devices on a thread of their own."""
    plan = simulated_plan(port, run_id, count, 10, rate=rate)
    publisher = threading.Thread(target=simulate.run, args=(plan, None), daemon=True)
    publisher.start()
    return publisher


def publish_simulated(
    port: int, run_id: str, count: int, devices: int, per_message: int = 1
) -> None:
    """Publish a `simulated_plan` and wait until the broker acknowledged all of it."""
    plan = simulated_plan(port, run_id, count, devices, per_message=per_message)
    assert simulate.run(plan).published == count


Points = dict[tuple[str, int], dict[str, float]]


def expected_points(count: int, devices: int) -> Points:
    """(device, ts ms) -> field values of the first `count` simulated readings."""
    expected = {}
    for n in range(count):
        k, i = n % devices, n // devices
        expected[(simulate.device_name(k), SIMULATED_START_MS + i)] = simulate.values(k, i)
    return expected


def stored_points(series: list[dict[str, object]]) -> Points:
    """The same mapping from `SELECT "temp", "hum", "device" FROM "telemetry"` (epoch ns)."""
    rows = series[0]["values"] if series else []
    return {
        (device, ts // 1_000_000): {"temp": temp, "hum": hum}
        for ts, temp, hum, device in rows  # type: ignore[attr-defined]
    }


def count(gw: GatewayProcess, family: str, **labels: str) -> float:
    """Sum of a counter's samples whose labels include `labels`."""
    total = 0.0
    for key, value in gw.metrics().items():
        name, _, rest = key.partition("{")
        if name != f"{family}_total":
            continue
        have = dict(pair.split("=", 1) for pair in rest.rstrip("}").split(",") if pair)
        if all(have.get(k) == v for k, v in labels.items()):
            total += value
    return total


def broken_identities(m: dict[str, float]) -> list[str]:
    """The accounting identities a scrape breaks, each with its numbers (none: all hold).

    The three of gateway/observe/accounting.py, and each breakdown adding up to its total.
    """

    def outcome(name: str) -> float:
        return m.get(f"gateway_readings_total{{outcome={name}}}", 0.0)

    def summaries(name: str) -> float:
        return m.get(f"gateway_summary_points_total{{outcome={name}}}", 0.0)

    def parts(prefix: str) -> float:
        return sum(v for k, v in m.items() if k.startswith(prefix + "{"))

    broken = []
    received = outcome("received")
    intake = outcome("invalid") + outcome("refused") + outcome("suppressed") + outcome("accepted")
    if received != intake:
        broken.append(f"received {received} != invalid + refused + suppressed + accepted {intake}")
    accepted = outcome("accepted") + outcome("recovered")
    gone = ("delivered", "dead_lettered", "dropped", "summarised")
    held = sum(outcome(name) for name in gone) + m.get("gateway_buffer_readings", 0.0)
    if accepted != held:
        figures = ", ".join(f"{name} {outcome(name)}" for name in gone)
        broken.append(
            f"accepted + recovered {accepted} != {figures} + buffered "
            f"{m.get('gateway_buffer_readings', 0.0)} (off by {accepted - held:+})"
        )
    made = summaries("made") + summaries("recovered")
    ends = ("delivered", "dead_lettered", "resummarised", "dropped")
    summaries_held = sum(summaries(name) for name in ends) + parts("gateway_buffer_summaries")
    if made != summaries_held:
        figures = ", ".join(f"{name} {summaries(name)}" for name in ends)
        broken.append(
            f"summaries made + recovered {made} != {figures} + buffered "
            f"{parts('gateway_buffer_summaries')} (off by {made - summaries_held:+})"
        )
    broken += [
        f"{kind} by its breakdown {parts(f'gateway_readings_{kind}_total')} != {outcome(kind)}"
        for kind in ("refused", "dropped", "suppressed", "summarised")
        if parts(f"gateway_readings_{kind}_total") != outcome(kind)
    ]
    if parts("gateway_summaries_total") != summaries("made"):
        broken.append(
            f"summaries by step {parts('gateway_summaries_total')} != made {summaries('made')}"
        )
    return broken


def assert_identities(gw: GatewayProcess) -> dict[str, float]:
    """The three accounting identities, and the breakdowns adding up to their totals."""
    m = gw.metrics()
    assert not broken_identities(m), broken_identities(m)
    assert m["gateway_buffer_bytes"] <= 0.9 * m["gateway_buffer_budget_bytes"]
    return m
