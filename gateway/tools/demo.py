"""`gateway demo`: broker, database, gateway and simulated sensors on this machine, all local.

Everything runs on free loopback ports in a temporary directory that is removed at the end.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import TextIO

from prometheus_client.parser import text_string_to_metric_families

from gateway.observe import metricsmerge
from gateway.tools import servers

DATABASE = "telemetry"
GATEWAY_STOP_TIMEOUT_S = 30
GATEWAY_START_TIMEOUT_S = 30


def scrape(url: str) -> dict[str, float]:
    """The gateway's metrics as {"name{label=value}": value}.

    A gateway with workers labels each series by worker; this gives the gateway's totals (the
    largest for the lag and the fill, which describe the worst worker).
    """
    with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
        text = response.read().decode()
    flat: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        worst = family.name in WORST_OF_WORKERS
        for sample in family.samples:
            labels = ",".join(
                f"{k}={v}" for k, v in sorted(sample.labels.items()) if k != WORKER_LABEL
            )
            key = f"{sample.name}{{{labels}}}" if labels else sample.name
            if key not in flat:
                flat[key] = sample.value
            else:
                seen = flat[key]
                flat[key] = max(seen, sample.value) if worst else seen + sample.value
    return flat


WORKER_LABEL = metricsmerge.LABEL
WORST_OF_WORKERS = frozenset({"gateway_buffer_lag_seconds", "gateway_buffer_fill_ratio"})


def write_config(
    path: Path,
    mqtt_port: int,
    influx_url: str,
    buffer_dir: Path,
    metrics_port: int,
    *,
    capacity: str = "256MiB",
    sync: str = "commit",
    log_level: str = "info",
    api: str = "v1",
    workers: int = 1,
    flush: str = "",
) -> None:
    """A gateway configuration for the local servers; `flush`: more `[flush]` lines."""
    path.write_text(
        f"""\
[mqtt]
host = "127.0.0.1"
port = {mqtt_port}
client_id = "gateway-demo"
workers = {workers}

[[mqtt.subscriptions]]
topic = "sensors/{{device}}/{{measurement}}"
qos = 1
format = "json"

[buffer]
path = "{buffer_dir}"
capacity = "{capacity}"
sync = "{sync}"

[influx]
url = "{influx_url}"
{
            f'api = "v1"{chr(10)}database = "{DATABASE}"'
            if api == "v1"
            else f'api = "v2"{chr(10)}org = "edge"{chr(10)}bucket = "{DATABASE}"'
        }

[flush]
linger_s = 0.5
{flush}
[metrics]
listen = "127.0.0.1:{metrics_port}"

[log]
level = "{log_level}"
""",
        encoding="utf-8",
    )


def run(devices: int, rate: float, duration_s: float, out: TextIO = sys.stdout) -> int:
    """Run the demo; returns the process exit code."""
    with tempfile.TemporaryDirectory(prefix="gateway-demo-") as tmp:
        work = Path(tmp)
        started: list[servers.Server] = []
        processes: list[subprocess.Popen[bytes]] = []
        try:
            print("demo: starting mosquitto and influxd ...", file=out, flush=True)
            broker = servers.start_mosquitto(work / "mosquitto")
            started.append(broker)
            influx = servers.start_influxd(work / "influxd")
            started.append(influx)
            servers.influxql(influx.url, f"CREATE DATABASE {DATABASE}")
            metrics_port = servers.free_port()
            config = work / "gateway.toml"
            write_config(config, broker.port, influx.url, work / "buffer", metrics_port)
            print(
                f"demo: broker on 127.0.0.1:{broker.port}, InfluxDB on {influx.url}, "
                f"gateway metrics on http://127.0.0.1:{metrics_port}/metrics",
                file=out,
            )
            gateway_log = (work / "gateway.log").open("wb")
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "gateway", "run", "--config", str(config)],
                    stdout=gateway_log,
                    stderr=subprocess.STDOUT,
                )
            )
            # Sensors published before the gateway's first subscription would reach nobody.
            _wait_connected(f"http://127.0.0.1:{metrics_port}/metrics", processes[0])
            sim_log = (work / "simulate.log").open("wb")
            processes.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "gateway",
                        "simulate",
                        "--port",
                        str(broker.port),
                        "--devices",
                        str(devices),
                        "--rate",
                        str(rate),
                        "--duration",
                        str(duration_s),
                    ],
                    stdout=sim_log,
                    stderr=subprocess.STDOUT,
                )
            )
            metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
            _watch(metrics_url, processes, out)
            _report(influx.url, scrape(metrics_url), out)
        except KeyboardInterrupt:
            print("\ndemo: interrupted, stopping", file=out)
        except servers.ServerError as exc:
            print(f"demo: {exc}", file=out)
            return 1
        finally:
            for process in reversed(processes):
                process.terminate()
                try:
                    process.wait(GATEWAY_STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    process.kill()
            for server in reversed(started):
                server.stop()
        return 0


def _wait_connected(metrics_url: str, gateway: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + GATEWAY_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if gateway.poll() is not None:
            raise servers.ServerError(f"the gateway exited with code {gateway.returncode}")
        try:
            if scrape(metrics_url).get("gateway_mqtt_connected") == 1:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise servers.ServerError("the gateway did not connect to the broker")


def _watch(metrics_url: str, processes: list[subprocess.Popen[bytes]], out: TextIO) -> None:
    gateway, simulator = processes
    print(
        f"{'time':>5} {'received':>9} {'buffered':>9} {'delivered':>10} {'write ms':>9}", file=out
    )
    t0 = time.monotonic()
    last_sum = last_count = 0.0
    while True:
        time.sleep(1)
        if gateway.poll() is not None:
            raise servers.ServerError(f"the gateway exited with code {gateway.returncode}")
        try:
            m = scrape(metrics_url)
        except OSError:
            continue
        s, c = (
            m.get("gateway_write_duration_seconds_sum", 0.0),
            m.get("gateway_write_duration_seconds_count", 0.0),
        )
        latency = (
            f"{(s - last_sum) / (c - last_count) * 1000:9.1f}" if c > last_count else f"{'-':>9}"
        )
        last_sum, last_count = s, c
        received = m.get("gateway_readings_total{outcome=received}", 0)
        buffered = m.get("gateway_buffer_readings", 0)
        delivered = m.get("gateway_readings_total{outcome=delivered}", 0)
        print(
            f"{time.monotonic() - t0:5.0f} {received:9.0f} {buffered:9.0f} {delivered:10.0f} "
            f"{latency}",
            file=out,
            flush=True,
        )
        if simulator.poll() is not None and buffered == 0 and delivered >= received > 0:
            return


def _report(influx_url: str, metrics: dict[str, float], out: TextIO) -> None:
    total = servers.influxql(influx_url, "SELECT count(temp) FROM telemetry", DATABASE)
    per_device = servers.influxql(
        influx_url, "SELECT count(temp) FROM telemetry GROUP BY device", DATABASE
    )
    latest = servers.influxql(
        influx_url, "SELECT last(temp), hum FROM telemetry GROUP BY device", DATABASE
    )
    count = total[0]["values"][0][1] if total else 0
    accepted = int(metrics.get("gateway_readings_total{outcome=accepted}", 0))
    verdict = "all of them" if count == accepted else f"MISSING {accepted - count}"
    print(
        f"\ndemo: the gateway accepted {accepted} readings; InfluxDB holds {count} points "
        f"of 'telemetry' from {len(per_device)} devices: {verdict}",
        file=out,
    )
    for series in latest[:5]:
        ts, temp, hum = series["values"][0]
        stamp = time.strftime("%H:%M:%S", time.gmtime(ts / 1e9))
        print(
            f"  {series['tags']['device']:>8}: last temp={temp} hum={hum} at {stamp} UTC", file=out
        )
