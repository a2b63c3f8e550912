"""Measuring a gateway run from outside: its processes' CPU and memory, and its metrics.

Used by the benchmark's scenarios (gateway/tools/scenarios.py). CPU and memory come from
/proc for the gateway's processes (the parent and its workers), the machine's busy CPU from
/proc/stat; quantiles from samples or from a Prometheus histogram.
"""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from gateway.config.loader import ENV_PREFIX, load
from gateway.observe import procio
from gateway.tools import servers
from gateway.tools.demo import scrape, write_config

POLL_S = 0.05
# The buffer's disk budget in the benchmark: large, so that no scenario meets it by accident.
CAPACITY_BYTES = 8 << 30
GIB = 1 << 30


class Gateway:
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
        flush: str = "",
        sparkplug: bool = False,
        profile: Path | None = None,
        far_url: str = "",
        replication: str = "",
        buffer_name: str = "buffer",
    ) -> None:
        """Start it on `broker_port` and wait until it is connected; `flush`: `[flush]` lines.

        `replication`: a `[replication]` table; as a standby it is waited for until it follows
        (it takes the broker's session only when it takes over). `buffer_name`: its buffer's
        directory under `work`, and the name of its configuration and log there.

        `sparkplug`: subscribe to Sparkplug B too (gateway/tools/demo.py `write_config`).
        `profile`: a configuration file to run instead of the benchmark's own (`sync`, `api`,
        `flush` and `sparkplug` then unused): its broker, buffer path, database URL, metrics
        address and log level are replaced through the environment, the rest is measured as is.
        """
        metrics_port = servers.free_port()
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        config = work / f"{buffer_name}.toml"
        self.buffer_dir = work / buffer_name
        database_url = database_url or f"http://127.0.0.1:{servers.free_port()}"
        environ = dict(os.environ)
        if profile is None:
            write_config(
                config,
                broker_port,
                database_url,
                self.buffer_dir,
                metrics_port,
                capacity=f"{CAPACITY_BYTES}B",
                sync=sync,
                log_level="warning",
                api=api,
                workers=workers,
                flush=flush,
                sparkplug=sparkplug,
                far_url=far_url,
                extra=replication,
            )
        else:
            config = profile
            environ.update(
                {
                    f"{ENV_PREFIX}MQTT__HOST": "127.0.0.1",
                    f"{ENV_PREFIX}MQTT__PORT": str(broker_port),
                    f"{ENV_PREFIX}BUFFER__PATH": str(self.buffer_dir),
                    f"{ENV_PREFIX}INFLUX__URL": database_url,
                    f"{ENV_PREFIX}METRICS__LISTEN": f"127.0.0.1:{metrics_port}",
                    f"{ENV_PREFIX}LOG__LEVEL": "warning",
                }
            )
            # A profile may run several workers: each reports its connection.
            workers = load(profile, environ).mqtt.workers
        # The child keeps its own descriptor of the log; this process's is closed at once.
        with (work / f"{buffer_name}.log").open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway", "run", "--config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environ,
            )
        deadline = time.monotonic() + 30
        standby = 'role = "standby"' in replication
        while (
            self.metric("gateway_replication_role{role=standby}") != 1
            if standby
            else self.metric("gateway_mqtt_connected") != workers
        ):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise servers.ServerError("the gateway did not start; see its log")
            time.sleep(POLL_S)

    def metric(self, name: str) -> float:
        """One sample of its /metrics; 0 while it does not answer."""
        try:
            return scrape(self.metrics_url).get(name, 0.0)
        except OSError:
            return 0.0

    def _pids(self) -> list[int]:
        """The gateway's process, and its workers' when it has them."""
        return [self.process.pid, *servers.children_of(self.process.pid)]

    def cpu_s(self) -> float:
        """CPU seconds its processes used so far."""
        return sum(cpu_s(pid) for pid in self._pids())

    def rss_mib(self, key: str = "VmRSS") -> float:
        """Resident memory of its processes (`VmHWM`: their peaks)."""
        return sum(rss_mib(pid, key) for pid in self._pids())

    def write_bytes(self) -> int:
        """Bytes its processes caused to be written to storage so far (/proc/<pid>/io)."""
        return sum(write_bytes(pid) for pid in self._pids())

    def data_file_bytes(self) -> int:
        """Size of the buffer's LMDB data files (one per worker environment)."""
        return sum(f.stat().st_size for f in self.buffer_dir.rglob("data.mdb"))

    def disk_figures(self, written_before: int, readings: float) -> dict[str, float]:
        """What the buffer cost the disk: written per reading, file size, readings per GiB.

        `written_before`: `write_bytes()` when the measured readings started; `readings`: how
        many arrived since.
        """
        metrics = scrape(self.metrics_url)
        buffered = metrics.get("gateway_buffer_readings", 0.0)
        accounted = metrics.get("gateway_buffer_bytes", 0.0)
        budget = metrics.get("gateway_buffer_budget_bytes", 0.0)
        file_bytes = self.data_file_bytes()
        return {
            "written_bytes_per_reading": (self.write_bytes() - written_before) / max(readings, 1),
            "file_bytes_per_buffered_reading": file_bytes / buffered if buffered else 0.0,
            # How many readings the budget holds at this size per reading, per GiB of capacity:
            # what a full buffer keeps when the database is away.
            "readings_per_gib_capacity": (
                budget / (accounted / buffered) / (CAPACITY_BYTES / GIB) if accounted else 0.0
            ),
        }

    def stop(self) -> None:
        """SIGTERM, and SIGKILL after 30 s."""
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


class PeakSampler:
    """Samples a gateway's memory on a thread, keeping the largest anonymous RSS seen.

    Anonymous memory is the process's own (heap, stacks); VmHWM also counts the LMDB map's
    file-backed pages, clean page cache the kernel takes back under pressure.
    """

    def __init__(self, gateway: Gateway, interval_s: float = POLL_S) -> None:
        """Start sampling `gateway` every `interval_s`."""
        self.peak_anon_mib = 0.0
        self._gateway = gateway
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="peak-rss")
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                anon = self._gateway.rss_mib("RssAnon")
            except OSError:
                anon = 0.0  # a worker that just left
            self.peak_anon_mib = max(self.peak_anon_mib, anon)
            if self._stop.wait(self._interval_s):
                return

    def stop(self) -> float:
        """Stop sampling; the peak anonymous RSS in MiB."""
        self._stop.set()
        self._thread.join(timeout=10)
        return self.peak_anon_mib


def rss_mib(pid: int, key: str = "VmRSS") -> float:
    """Resident memory of one process, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def write_bytes(pid: int) -> int:
    """Bytes one process caused to be written to storage (0 where /proc does not say)."""
    return procio.read_write_bytes(pid) or 0


def cpu_s(pid: int) -> float:
    """User and system CPU seconds of one process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def box_cpu_s() -> float:
    """CPU seconds all cores spent busy since boot (not idle, not waiting on I/O)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def quantile(values: list[float], q: float) -> float:
    """The q-quantile of sorted `values` (nearest rank)."""
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def histogram_quantile(metrics: dict[str, float], name: str, q: float) -> float:
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


# The gateway's own event-loop lag histogram, where the gateway has one.
LOOP_LAG = "gateway_event_loop_lag_seconds"
# How often the stall probe asks /healthz; a stall shows as one answer this much late at most.
STALL_POLL_S = 0.01


class StallProbe:
    """Times the gateway's `/healthz` answers from outside, back to back, on a thread.

    The HTTP server runs in the gateway's event loop, so an answer that takes long is a loop
    that did not turn: the longest answer is the longest stall seen (within `STALL_POLL_S`).
    """

    def __init__(self, base_url: str) -> None:
        """Start asking `base_url`/healthz."""
        self.url = f"{base_url}/healthz"
        self.longest_s = 0.0
        self.answers = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="stall-probe")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(STALL_POLL_S):
            started = time.perf_counter()
            try:
                # No timeout worth the name: a stall of a minute must be measured, not cut.
                with urllib.request.urlopen(self.url, timeout=300) as response:  # noqa: S310
                    response.read()
            except urllib.error.HTTPError:
                pass  # a 503 (the gateway saw the stall itself) is an answer too
            except (OSError, http.client.HTTPException):
                continue
            self.longest_s = max(self.longest_s, time.perf_counter() - started)
            self.answers += 1

    def stop(self) -> float:
        """Stop asking; the longest answer in seconds."""
        self._stop.set()
        self._thread.join(timeout=310)
        return self.longest_s


def histogram_max(
    metrics: dict[str, float], name: str, before: dict[str, float] | None = None
) -> float | None:
    """Upper bound of the highest bucket with an observation (since `before`), in seconds.

    None when the gateway has no such histogram; 0.0 when nothing was observed.
    """
    buckets = sorted(
        (float(key.split("le=")[1].rstrip("}")), value - (before or {}).get(key, 0.0))
        for key, value in metrics.items()
        if key.startswith(f"{name}_bucket{{")
    )
    if not buckets:
        return None
    total = buckets[-1][1]
    if not total:
        return 0.0
    return next(bound for bound, cumulative in buckets if cumulative >= total)
