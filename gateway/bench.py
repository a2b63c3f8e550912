"""`gateway bench`: measured figures a user can reproduce on their own edge box.

Scenarios:
- `append`: buffer append throughput per sync mode at 1, 100 and 1,000 readings per transaction.
- `ingest`: QoS 1 publishers (`loadgen`, in their own processes) -> local Mosquitto -> the
  gateway, with the database stopped: accepted readings/s, commits, the gateway's
  receipt-to-PUBACK delay, the publishers' PUBACK latency from the broker, gateway CPU and
  peak RSS. `--rate` fixes the load.
- `backlog`: the same with no rate limit until N readings are buffered, sampling the gateway's
  resident memory along the way (it must not grow with the backlog).
Each scenario runs `--runs` times; the table shows medians.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway import loadgen, servers, simulate
from gateway.buffer import Buffer
from gateway.demo import scrape, write_config
from gateway.model import Reading
from gateway.record import pack

if TYPE_CHECKING:
    import argparse

APPEND_SECONDS = 2.0
SYNC_INTERVAL_S = 1.0
BENCH_DEVICES = 50
POLL_S = 0.05
SLOW_POLL_S = 0.5
NEAR_END = 0.9
# How often the end-to-end scenario samples the gateway's lag, backlog and batch size.
E2E_SAMPLE_S = 0.5


def bench_append(sync: str, per_txn: int, seconds: float = APPEND_SECONDS) -> float:
    """Readings per second appended in transactions of `per_txn` readings."""
    records = [
        (
            f"dev-{k}",
            pack(
                Reading(
                    f"dev-{k}",
                    "telemetry",
                    (("device", f"dev-{k}"),),
                    (("temp", 21.5), ("hum", 40.2)),
                    1_700_000_000_000_000_000,
                )
            ),
        )
        for k in range(BENCH_DEVICES)
    ]
    batch = [records[i % BENCH_DEVICES] for i in range(per_txn)]
    with (
        tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp,
        Buffer(
            Path(tmp),
            8 << 30,
            sync,  # type: ignore[arg-type]
        ) as buffer,
    ):
        stop = threading.Event()
        syncer = threading.Thread(target=_sync_every, args=(buffer, stop), daemon=True)
        if sync == "interval":
            syncer.start()
        appended, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            buffer.append(batch)
            appended += per_txn
        stop.set()
    return appended / elapsed


def _sync_every(buffer: Buffer, stop: threading.Event) -> None:
    while not stop.wait(SYNC_INTERVAL_S):
        buffer.sync()


def _publish(load: loadgen.Load) -> loadgen.LoadResult:
    return loadgen.publish(load)


class _Gateway:
    """A gateway subprocess; without `database_url` the database is stopped (a closed port)."""

    def __init__(
        self,
        work: Path,
        broker_port: int,
        sync: str,
        *,
        database_url: str = "",
        api: str = "v1",
        workers: int = 1,
    ) -> None:
        metrics_port = servers.free_port()
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        config = work / "gateway.toml"
        write_config(
            config,
            broker_port,
            database_url or f"http://127.0.0.1:{servers.free_port()}",
            work / "buffer",
            metrics_port,
            capacity="8GiB",
            sync=sync,
            log_level="warning",
            api=api,
            workers=workers,
        )
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(config)],
            stdout=(work / "gateway.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while self.metric("gateway_mqtt_connected") != workers:
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise servers.ServerError("the gateway did not start; see its log")
            time.sleep(POLL_S)

    def metric(self, name: str) -> float:
        try:
            return scrape(self.metrics_url).get(name, 0.0)
        except OSError:
            return 0.0

    def _pids(self) -> list[int]:
        """The gateway's process, and its workers' when it has them."""
        return [self.process.pid, *servers.children_of(self.process.pid)]

    def cpu_s(self) -> float:
        return sum(_cpu_s(pid) for pid in self._pids())

    def rss_mib(self, key: str = "VmRSS") -> float:
        return sum(_rss_mib(pid, key) for pid in self._pids())

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def bench_ingest(
    count: int,
    rate: float,
    publishers: int,
    sync: str,
    *,
    rss_every: int = 0,
    per_message: int = 1,
    workers: int = 1,
) -> dict[str, Any]:
    """Publish `count` QoS 1 readings (`per_message` per message) into a gateway; its figures."""
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        work = Path(tmp)
        broker = servers.start_mosquitto(work / "mosquitto")
        gateway = None
        try:
            gateway = _Gateway(work, broker.port, sync, workers=workers)
            jobs = _loads(broker.port, count, rate, publishers, per_message)
            cpu0, started = gateway.cpu_s(), time.perf_counter()
            broker_cpu0, box0 = _cpu_s(broker.process.pid), _box_cpu_s()
            # Anonymous memory is the process's own; file-backed is LMDB's map of its data file,
            # clean page cache the kernel reclaims under pressure.
            rss: list[tuple[int, float, float]] = []
            with multiprocessing.get_context("fork").Pool(publishers) as pool:
                pending = pool.map_async(_publish, jobs)
                accepted, total = 0.0, sum(job.count for job in jobs)
                while accepted < total:
                    # A scrape costs the gateway CPU (with workers, the parent merges their
                    # pages): look often only near the end, where the timing needs it.
                    time.sleep(POLL_S if accepted >= total * NEAR_END else SLOW_POLL_S)
                    accepted = gateway.metric("gateway_readings_total{outcome=accepted}")
                    if rss_every and accepted >= (len(rss) + 1) * rss_every:
                        rss.append(
                            (int(accepted), gateway.rss_mib("RssAnon"), gateway.rss_mib("RssFile"))
                        )
                elapsed = time.perf_counter() - started
                results = pending.get(timeout=600)
            metrics = scrape(gateway.metrics_url)
            latencies = sorted(x for r in results for x in r.puback_latencies_s)
            commits = metrics["gateway_commit_readings_count"]
            return {
                "readings": int(accepted),
                "accepted_per_s": accepted / elapsed,
                "commits_per_s": commits / elapsed,
                "readings_per_commit": metrics["gateway_commit_readings_sum"] / commits,
                "ack_delay_p50_ms": _histogram_quantile(metrics, "gateway_ack_delay_seconds", 0.5),
                "ack_delay_p99_ms": _histogram_quantile(metrics, "gateway_ack_delay_seconds", 0.99),
                "broker_puback_p50_ms": _quantile(latencies, 0.5) * 1000,
                "broker_puback_p99_ms": _quantile(latencies, 0.99) * 1000,
                "broker_puback_p999_ms": _quantile(latencies, 0.999) * 1000,
                "gateway_cpu_percent": (gateway.cpu_s() - cpu0) / elapsed * 100,
                "broker_cpu_percent": (_cpu_s(broker.process.pid) - broker_cpu0) / elapsed * 100,
                # Busy time of all cores together (200 % is a saturated 2-core box).
                "machine_cpu_percent": (_box_cpu_s() - box0) / elapsed * 100,
                # The steadiest figure on a busy machine: CPU time over readings accepted.
                "gateway_cpu_us_per_reading": (gateway.cpu_s() - cpu0) / accepted * 1e6,
                "gateway_peak_rss_mib": gateway.rss_mib("VmHWM"),
                "gateway_anon_rss_mib": gateway.rss_mib("RssAnon"),
                "rss_mib_by_backlog": rss,
            }
        finally:
            if gateway is not None:
                gateway.stop()
            broker.stop()


def _loads(
    port: int, count: int, rate: float, publishers: int, per_message: int = 1
) -> list[loadgen.Load]:
    """`count` readings at `rate` from BENCH_DEVICES devices, split over `publishers`."""
    devices = BENCH_DEVICES // publishers
    return [
        loadgen.Load(
            "127.0.0.1",
            port,
            f"bench-{p}",
            range(p * devices, (p + 1) * devices),
            count // publishers,
            rate / publishers,
            per_message=per_message,
        )
        for p in range(publishers)
    ]


def bench_end_to_end(
    rate: float, duration_s: float, publishers: int, workers: int = 1
) -> dict[str, Any]:
    """Steady load at `rate` for `duration_s` into a local influxd: lag, backlog, CPU, RSS."""
    count = int(rate * duration_s)
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        work = Path(tmp)
        broker = servers.start_mosquitto(work / "mosquitto")
        db = servers.start_influxd(work / "influxd")
        servers.influxql(db.url, "CREATE DATABASE telemetry")
        gateway = None
        try:
            gateway = _Gateway(work, broker.port, "commit", database_url=db.url, workers=workers)
            jobs = _loads(broker.port, count, rate, publishers)
            cpu0, db_cpu0 = gateway.cpu_s(), _cpu_s(db.process.pid)
            started = time.perf_counter()
            lags, backlogs, sizes = [], [], []
            with multiprocessing.get_context("fork").Pool(publishers) as pool:
                pending = pool.map_async(_publish, jobs)
                delivered = 0.0
                while delivered < sum(job.count for job in jobs):
                    time.sleep(E2E_SAMPLE_S)
                    metrics = scrape(gateway.metrics_url)
                    delivered = metrics["gateway_readings_total{outcome=delivered}"]
                    lags.append(metrics["gateway_buffer_lag_seconds"])
                    backlogs.append(metrics["gateway_buffer_readings"])
                    sizes.append(metrics["gateway_batch_size"])
                elapsed = time.perf_counter() - started
                pending.get(timeout=600)
            half = len(backlogs) // 2
            return {
                "delivered_per_s": delivered / elapsed,
                "lag_p50_s": _quantile(sorted(lags), 0.5),
                "lag_p99_s": _quantile(sorted(lags), 0.99),
                "backlog_first_half_max": max(backlogs[:half] or [0]),
                "backlog_second_half_max": max(backlogs[half:] or [0]),
                "batch_size_median": statistics.median(sizes),
                "gateway_cpu_us_per_reading": (gateway.cpu_s() - cpu0) / delivered * 1e6,
                "gateway_cpu_percent": (gateway.cpu_s() - cpu0) / elapsed * 100,
                "gateway_peak_rss_mib": gateway.rss_mib("VmHWM"),
                "database_cpu_percent": (_cpu_s(db.process.pid) - db_cpu0) / elapsed * 100,
                "database_rss_mib": _rss_mib(db.process.pid),
            }
        finally:
            if gateway is not None:
                gateway.stop()
            db.stop()
            broker.stop()


def prefill(path: Path, readings: int, devices: int) -> None:
    """A buffer holding `readings` simulated readings spread over `devices` devices."""
    with Buffer(path, 8 << 30, "none") as buffer:
        for start in range(0, readings, 10_000):
            batch = []
            for n in range(start, min(readings, start + 10_000)):
                k, i = n % devices, n // devices
                device = simulate.device_name(k)
                batch.append(
                    (
                        device,
                        pack(
                            Reading(
                                device,
                                "telemetry",
                                (("device", device),),
                                tuple(simulate.values(k, i).items()),
                                (1_700_000_000_000 + i) * 10**6,
                            )
                        ),
                    )
                )
            buffer.append(batch)
        buffer.sync()


def bench_drain(database: str, readings: int, devices: int) -> dict[str, Any]:
    """Drain a prefilled backlog into a local influxd (v1) or VictoriaMetrics (v2)."""
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        work = Path(tmp)
        prefill(work / "buffer", readings, devices)
        broker = servers.start_mosquitto(work / "mosquitto")
        if database == "influxd":
            db = servers.start_influxd(work / "influxd")
            servers.influxql(db.url, "CREATE DATABASE telemetry")
        else:
            db = servers.start_victoria_metrics(work / "victoria-metrics")
        gateway = None
        try:
            db_cpu0 = _cpu_s(db.process.pid)
            started = time.perf_counter()
            api = "v1" if database == "influxd" else "v2"
            gateway = _Gateway(work, broker.port, "commit", database_url=db.url, api=api)
            sizes: list[float] = []
            while (left := gateway.metric("gateway_buffer_readings")) > 0 or not sizes:
                sizes.append(gateway.metric("gateway_batch_size"))
                time.sleep(POLL_S)
            elapsed = time.perf_counter() - started
            metrics = scrape(gateway.metrics_url)
            if database == "influxd":
                # Every simulated reading has a temp field: one count says all landed.
                series = servers.influxql(
                    db.url, 'SELECT count("temp") FROM "telemetry"', "telemetry"
                )
                stored = series[0]["values"][0][1]
                if stored != readings:
                    raise servers.ServerError(f"influxd holds {stored} of {readings} points")
            return {
                "points_per_s": readings / elapsed,
                "left": left,
                "batch_size_median": statistics.median(sizes),
                "batch_size_max": max(sizes),
                "write_p50_ms": _histogram_quantile(metrics, "gateway_write_duration_seconds", 0.5),
                "write_p99_ms": _histogram_quantile(
                    metrics, "gateway_write_duration_seconds", 0.99
                ),
                "gateway_cpu_percent": gateway.cpu_s() / elapsed * 100,
                "gateway_cpu_us_per_point": gateway.cpu_s() / readings * 1e6,
                "database_cpu_percent": (_cpu_s(db.process.pid) - db_cpu0) / elapsed * 100,
            }
        finally:
            if gateway is not None:
                gateway.stop()
            db.stop()
            broker.stop()


def _rss_mib(pid: int, key: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _box_cpu_s() -> float:
    """CPU seconds all cores spent busy since boot (not idle, not waiting on I/O)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _quantile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def _histogram_quantile(metrics: dict[str, float], name: str, q: float) -> float:
    """Upper bound of the bucket holding quantile q, in ms."""
    buckets = sorted(
        (float(key.split("le=")[1].rstrip("}")), value)
        for key, value in metrics.items()
        if key.startswith(f"{name}_bucket{{")
    )
    total = buckets[-1][1] if buckets else 0
    for bound, cumulative in buckets:
        if cumulative >= q * total:
            return bound * 1000
    return float("nan")


def run(args: argparse.Namespace) -> int:
    """Run the scenarios of `gateway bench`, print a table of medians, optionally write JSON."""
    scenarios = args.scenario or ["append", "ingest"]
    figures: dict[str, Any] = {}
    if "append" in scenarios:
        _run_append(args.runs, figures)
    if "ingest" in scenarios:
        _run_ingest(args, figures)
    if "payload-batches" in scenarios:
        _run_payload_batches(args, figures)
    if "end-to-end" in scenarios:
        _run_end_to_end(args, figures)
    if "backlog" in scenarios:
        _run_backlog(args, figures)
    if "drain" in scenarios:
        _run_drain(args, figures)
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


def _run_append(runs: int, figures: dict[str, Any]) -> None:
    for mode in ("commit", "interval", "none"):
        for per_txn in (1, 100, 1000):
            key = f"append {mode:<8} {per_txn:>4}/txn readings/s"
            samples = [bench_append(mode, per_txn) for _ in range(runs)]
            figures[key] = statistics.median(samples)
            _show(figures, key, samples)


def _run_ingest(args: argparse.Namespace, figures: dict[str, Any]) -> None:
    for workers in args.workers or [1]:
        label = f"ingest sync={args.sync} rate={f'{args.rate:.0f}/s' if args.rate else 'max'}"
        results = [
            bench_ingest(args.count, args.rate, args.publishers, args.sync, workers=workers)
            for _ in range(args.runs)
        ]
        _collect(figures, f"{label} workers={workers}", results)


def _run_payload_batches(args: argparse.Namespace, figures: dict[str, Any]) -> None:
    for workers in args.workers or [1]:
        results = [
            bench_ingest(
                args.count,
                args.rate,
                args.publishers,
                args.sync,
                per_message=args.per_message,
                workers=workers,
            )
            for _ in range(args.runs)
        ]
        _collect(figures, f"payload-batches {args.per_message}/message workers={workers}", results)


def _run_end_to_end(args: argparse.Namespace, figures: dict[str, Any]) -> None:
    for workers in args.workers or [1]:
        label = f"end-to-end {args.rate:.0f}/s for {args.duration:.0f} s workers={workers}"
        results = [
            bench_end_to_end(args.rate, args.duration, args.publishers, workers)
            for _ in range(args.runs)
        ]
        _collect(figures, label, results)


def _collect(figures: dict[str, Any], label: str, results: list[dict[str, Any]]) -> None:
    samples_by_key: dict[str, list[float]] = {}
    for result in results:
        for key, value in result.items():
            if isinstance(value, float | int):
                samples_by_key.setdefault(key, []).append(float(value))
    for key, samples in samples_by_key.items():
        figures[f"{label} {key}"] = statistics.median(samples)
        _show(figures, f"{label} {key}", samples)


def _run_backlog(args: argparse.Namespace, figures: dict[str, Any]) -> None:
    result = bench_ingest(
        args.backlog, 0, args.publishers, args.sync, rss_every=max(1, args.backlog // 10)
    )
    figures["backlog rss_mib_by_readings"] = result["rss_mib_by_backlog"]
    figures["backlog peak_rss_mib"] = result["gateway_peak_rss_mib"]
    figures["backlog accepted_per_s"] = result["accepted_per_s"]
    for readings, anon, mapped in result["rss_mib_by_backlog"]:
        label = f"backlog at {readings:,}: RSS MiB anonymous / LMDB map"
        print(f"{label:<58} {anon:>12.1f} / {mapped:.1f}", flush=True)
    print(f"{'backlog peak rss MiB':<58} {result['gateway_peak_rss_mib']:>12.1f}")
    print(f"{'backlog accepted readings/s':<58} {result['accepted_per_s']:>12,.1f}")


def _run_drain(args: argparse.Namespace, figures: dict[str, Any]) -> None:
    for database in ("victoria-metrics", "influxd"):
        samples_by_key: dict[str, list[float]] = {}
        for _ in range(args.runs):
            for key, value in bench_drain(database, args.drain, args.drain_devices).items():
                samples_by_key.setdefault(key, []).append(float(value))
        for key, samples in samples_by_key.items():
            label = f"drain {database} {key}"
            figures[label] = statistics.median(samples)
            _show(figures, label, samples)


def _show(figures: dict[str, Any], key: str, samples: list[float]) -> None:
    spread = f"  (runs: {', '.join(f'{s:,.1f}' for s in samples)})" if len(samples) > 1 else ""
    print(f"{key:<58} {figures[key]:>12,.1f}{spread}", flush=True)
