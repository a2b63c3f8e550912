"""`gateway demo`: broker, database, gateway and simulated sensors on this machine, all local.

Everything runs on free loopback ports in a temporary directory that is removed at the end
(kept, with the gateway's log and configuration, when the demo fails). With `--outage N` the
database is stopped for N seconds a quarter into the run: the backlog grows on disk, the
database returns, the backlog drains, and the summary counts every reading in InfluxDB.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from prometheus_client.parser import text_string_to_metric_families

from gateway.observe import metricsmerge
from gateway.tools import servers

DATABASE = "telemetry"
GATEWAY_STOP_TIMEOUT_S = 30
GATEWAY_START_TIMEOUT_S = 30


def scrape(url: str, timeout_s: float = 2.0) -> dict[str, float]:
    """The gateway's metrics as {"name{label=value}": value}.

    A gateway with workers labels each series by worker; this gives the gateway's totals (the
    largest for the lag and the fill, which describe the worst worker).
    """
    with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - loopback
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
WORST_OF_WORKERS = frozenset(
    {
        "gateway_buffer_lag_seconds",
        "gateway_buffer_fill_ratio",
        "gateway_event_loop_lag_max_seconds",
    }
)


SPARKPLUG_SUBSCRIPTION = """
[[mqtt.subscriptions]]
topic = "spBv1.0/#"
qos = 1
format = "sparkplug_b"
"""


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
    sparkplug: bool = False,
    far_url: str = "",
    extra: str = "",
) -> None:
    """A gateway configuration for the local servers; `flush`: more `[flush]` lines.

    `extra`: more sections, appended as given (a `[replication]` table).

    `sparkplug`: also take Sparkplug B edge nodes' messages (spBv1.0/#). `far_url`: a second
    database (VictoriaMetrics, api v2) as a second sink; the first is then the sink "near".
    """
    target = (
        f'api = "v1"{chr(10)}database = "{DATABASE}"'
        if api == "v1"
        else f'api = "v2"{chr(10)}org = "edge"{chr(10)}bucket = "{DATABASE}"'
    )
    databases = f'[influx]\nurl = "{influx_url}"\n{target}\n'
    if far_url:
        databases = (
            f'[[sinks]]\nname = "near"\nurl = "{influx_url}"\n{target}\n\n'
            f'[[sinks]]\nname = "far"\nurl = "{far_url}"\napi = "v2"\norg = "edge"\n'
            f'bucket = "{DATABASE}"\n'
        )
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
{SPARKPLUG_SUBSCRIPTION if sparkplug else ""}
[buffer]
path = "{buffer_dir}"
capacity = "{capacity}"
sync = "{sync}"

{databases}
[flush]
linger_s = 0.5
{flush}
[metrics]
listen = "127.0.0.1:{metrics_port}"

[log]
level = "{log_level}"
{extra}""",
        encoding="utf-8",
    )


@dataclass
class Outage:
    """The database's planned outage: when it stops, for how long, and what happened."""

    start_s: float
    length_s: float
    database: servers.Server
    stopped: bool = False
    back: bool = False

    def advance(self, elapsed_s: float, out: TextIO) -> str:
        """Stop or restart the database when due; the database column's text."""
        if not self.stopped and elapsed_s >= self.start_s:
            self.database.stop()
            self.stopped = True
            print(f"demo: database stopped for {self.length_s:.0f} s", file=out, flush=True)
        if self.stopped and not self.back and elapsed_s >= self.start_s + self.length_s:
            db = self.database
            self.database = servers.start_influxd(db.workdir, port=db.port)
            self.back = True
            print("demo: database back; the backlog drains", file=out, flush=True)
        return "DOWN" if self.stopped and not self.back else "up"


def run(
    devices: int,
    rate: float,
    duration_s: float,
    outage_s: float = 0.0,
    out: TextIO = sys.stdout,
) -> int:
    """Run the demo; returns the process exit code (1 when a reading is missing).

    `outage_s`: stop the database this long, a quarter into the sensors' run. On a failure
    the gateway's log and configuration are kept, and the last lines say where.
    """
    work = Path(tempfile.mkdtemp(prefix="gateway-demo-"))
    started: list[servers.Server] = []
    processes: list[subprocess.Popen[bytes]] = []
    outage: Outage | None = None
    code = 1
    try:
        print("demo: starting mosquitto and influxd ...", file=out, flush=True)
        broker = servers.start_mosquitto(work / "mosquitto")
        started.append(broker)
        influx = servers.start_influxd(work / "influxd")
        started.append(influx)
        servers.influxql(influx.url, f"CREATE DATABASE {DATABASE}")
        if outage_s > 0:
            outage = Outage(duration_s / 4, outage_s, influx)
        metrics_port = servers.free_port()
        config = work / "gateway.toml"
        write_config(config, broker.port, influx.url, work / "buffer", metrics_port)
        base = f"http://127.0.0.1:{metrics_port}"
        print(
            f"demo: broker on 127.0.0.1:{broker.port}, InfluxDB on {influx.url}\n"
            f"demo: the status page is on {base}/ (open it in a browser to watch)",
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
        _wait_connected(f"{base}/metrics", processes[0])
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
        _watch(f"{base}/metrics", processes, out, outage)
        database = outage.database if outage is not None else influx
        code = _report(database.url, scrape(f"{base}/metrics"), out)
    except KeyboardInterrupt:
        print("\ndemo: interrupted, stopping", file=out)
        code = 0
    except servers.ServerError as exc:
        print(f"demo: {exc}", file=out)
    finally:
        for process in reversed(processes):
            process.terminate()
            try:
                process.wait(GATEWAY_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
        if outage is not None and outage.back:
            started.append(outage.database)  # the database started again
        for server in reversed(started):
            server.stop()
        _clean_up(work, kept=code != 0, out=out)
    return code


def _clean_up(work: Path, *, kept: bool, out: TextIO) -> None:
    """Remove the demo's folder, or keep its log and configuration after a failure."""
    if kept:
        keep = Path(tempfile.mkdtemp(prefix="gateway-demo-failed-"))
        for name in ("gateway.log", "gateway.toml", "simulate.log"):
            if (work / name).exists():
                shutil.copy2(work / name, keep / name)
        print(f"demo: the gateway's log and configuration are kept in {keep}", file=out)
    shutil.rmtree(work, ignore_errors=True)


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


def _watch(
    metrics_url: str,
    processes: list[subprocess.Popen[bytes]],
    out: TextIO,
    outage: Outage | None = None,
) -> None:
    gateway, simulator = processes
    print(
        f"{'time':>5} {'database':>8} {'received':>9} {'buffered':>9} {'delivered':>10} "
        f"{'write ms':>9}",
        file=out,
    )
    t0 = time.monotonic()
    last_sum = last_count = 0.0
    while True:
        time.sleep(1)
        if gateway.poll() is not None:
            raise servers.ServerError(f"the gateway exited with code {gateway.returncode}")
        state = outage.advance(time.monotonic() - t0, out) if outage is not None else "up"
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
            f"{time.monotonic() - t0:5.0f} {state:>8} {received:9.0f} {buffered:9.0f} "
            f"{delivered:10.0f} {latency}",
            file=out,
            flush=True,
        )
        finished = outage is None or outage.back
        if (
            finished
            and simulator.poll() is not None
            and buffered == 0
            and delivered >= received > 0
        ):
            return


def _report(influx_url: str, metrics: dict[str, float], out: TextIO) -> int:
    """The summary: what the gateway accepted against what the database holds; 1 if short."""
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
    return 0 if count == accepted else 1
