"""The benchmark's long-outage scenario: a small buffer, the database away for a long time.

A fixed budget (16 MiB) takes 100 devices publishing 1,000 readings/s of reading time (each
device's timestamps 100 ms apart) while influxd is stopped. The outage is `outage_factor` times
what the budget holds raw: the bytes per reading are measured on a first part of the outage, and
the readings the budget holds at the high watermark are worked out from them. The outage is
published flat out (10 readings per JSON message), then a real-time window of one reading per
message at exactly 1,000 readings/s, still in outage and under pressure, gives the PUBACK
delays. Then influxd starts and the drain is timed until the buffer holds neither readings nor
summaries. The database is then read back (gateway/tools/outagecheck.py) against the readings
the simulator's function makes, so no reading is kept in memory.

A policy that drops leaves a hole where the outage was; `compact` leaves summaries there. The
figures say which share of the outage's (device, minute) pairs hold a point, how far the
delivered min, max and mean are from the readings they stand for, how large the buffer's files
grew against the capacity, and whether the accounting identities held at the end.
"""

from __future__ import annotations

import multiprocessing
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.buffer.capacity import readings_budget
from gateway.tools import loadgen, outagecheck, servers
from gateway.tools.demo import DATABASE, scrape
from gateway.tools.measure import LOOP_LAG, Gateway, histogram_max, histogram_quantile, quantile
from gateway.tools.scenarios import PROGRESS, SLOW_POLL_S, publish

# The simulated load: readings per second of reading time, all devices together, and the first
# reading's timestamp (ms).
READINGS_PER_S = 1000
START_MS = 1_700_000_000_000
# Readings per message while the outage is published flat out (a JSON array, as batching
# sensors send); the real-time window sends one per message, as the rate is meant.
OUTAGE_PER_MESSAGE = 10
PUBLISHERS = 2
# How often the buffer's files are measured on disk.
FILE_SAMPLE_S = 0.5
# The gateway taking no reading for this long while it should ends the run with an error.
STALL_S = 120.0
DRAIN_TIMEOUT_S = 900.0
# A scrape waits this long: an answer that late is a figure (the loop lag), not a failure.
SCRAPE_TIMEOUT_S = 60.0
# The deadband run: a band the simulator's readings (0.1 apart) pass every third reading.
DEADBAND = "deadband = { absolute = { temp = 0.3, hum = 0.3 }, heartbeat_s = 60 }\n"


@dataclass(frozen=True, slots=True)
class Shape:
    """The sizes of a run: the issue's by default, `QUICK` for tests."""

    capacity_bytes: int = 16 << 20
    devices: int = 100
    # Seconds of the real-time window.
    realtime_s: float = 60.0
    compact_interval_s: int = 60
    compact_ladder: tuple[int, ...] = (10, 6)
    # The coverage is counted per device and window of this many seconds (a minute).
    coverage_s: int = 60
    # Readings published first, to measure the bytes per reading.
    probe_readings: int = 20_000
    # Below the default (0.9): with these readings a 16 MiB buffer's pages reach the page guard
    # at about 0.75 of the readings budget, which pauses intake whatever the policy, and with
    # the database down nothing frees a page again; the policies must act well before that.
    high_watermark: float = 0.5

    @property
    def low_watermark(self) -> float:
        """Below the high one, as the settings require; only `reject` uses it."""
        return self.high_watermark - 0.1

    @property
    def ts_step_ms(self) -> int:
        """A device's readings this far apart make `READINGS_PER_S` together."""
        return self.devices * 1000 // READINGS_PER_S

    @property
    def steps_s(self) -> tuple[int, ...]:
        """The summary steps, finest first."""
        steps = [self.compact_interval_s]
        for multiplier in self.compact_ladder:
            steps.append(steps[-1] * multiplier)
        return tuple(steps)


# A run of about 20 s for tests: 1 MiB, 10 devices, steps of 1, 5 and 20 s.
QUICK = Shape(
    capacity_bytes=1 << 20,
    devices=10,
    realtime_s=3.0,
    compact_interval_s=1,
    compact_ladder=(5, 4),
    coverage_s=20,
    probe_readings=5_000,
)


def profile_text(policy: str, shape: Shape, *, deadband: bool) -> str:
    """The gateway's configuration (broker, paths and addresses are set by `Gateway`)."""
    ladder = ", ".join(str(m) for m in shape.compact_ladder)
    return (
        '[mqtt]\nhost = "127.0.0.1"\nclient_id = "gateway-long-outage"\n\n'
        '[[mqtt.subscriptions]]\ntopic = "sensors/{device}/{measurement}"\nqos = 1\n'
        f'format = "json"\n{DEADBAND if deadband else ""}\n'
        f'[buffer]\npath = "buffer"\ncapacity = "{shape.capacity_bytes}B"\npolicy = "{policy}"\n'
        f"high_watermark = {shape.high_watermark}\nlow_watermark = {shape.low_watermark}\n"
        f"compact_interval_s = {shape.compact_interval_s}\ncompact_ladder = [{ladder}]\n\n"
        f'[influx]\nurl = "http://127.0.0.1:8086"\napi = "v1"\ndatabase = "{DATABASE}"\n\n'
        "[flush]\nlinger_s = 0.5\n\n"
        # The read API's last-value table must fit a small buffer; one series per device.
        "[api]\nlatest_series = 500\n"
    )


class FileSampler:
    """The largest total size of the buffer's files seen, sampled on a thread."""

    def __init__(self, buffer_dir: Path) -> None:
        """Start sampling the files under `buffer_dir`."""
        self.largest = 0
        self._dir = buffer_dir
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="file-sampler")
        self._thread.start()

    def _run(self) -> None:
        while True:
            total = 0
            for path in self._dir.rglob("*"):
                try:
                    total += path.stat().st_size if path.is_file() else 0
                except OSError:
                    continue  # a file removed while listed
            self.largest = max(self.largest, total)
            if self._stop.wait(FILE_SAMPLE_S):
                return

    def stop(self) -> int:
        """Stop; the largest size in bytes."""
        self._stop.set()
        self._thread.join(timeout=10)
        return self.largest


def loads(
    port: int, shape: Shape, per_device: int, first: int, *, per_message: int, rate: float = 0
) -> list[loadgen.Load]:
    """Each device's readings `first` to `first + per_device`, split over the publishers."""
    share = shape.devices // PUBLISHERS
    return [
        loadgen.Load(
            "127.0.0.1",
            port,
            f"long-outage-{p}-{first}",
            range(p * share, (p + 1) * share),
            per_device * share,
            rate / PUBLISHERS,
            per_message=per_message,
            start_ms=START_MS,
            ts_step_ms=shape.ts_step_ms,
            first_index=first,
        )
        for p in range(PUBLISHERS)
    ]


def run_loads(jobs: list[loadgen.Load]) -> list[loadgen.LoadResult]:
    """Publish the loads in processes of their own; their results."""
    with multiprocessing.get_context("fork").Pool(len(jobs)) as pool:
        return pool.map(publish, jobs)


def wait_received(gateway: Gateway, total: int) -> None:
    """Wait until the gateway received `total` readings; raise if it stops taking them."""
    seen, moved = -1.0, time.monotonic()
    while (now := _received(gateway)) < total:
        if now != seen:
            seen, moved = now, time.monotonic()
        elif time.monotonic() - moved > STALL_S:
            log = (gateway.buffer_dir.parent / "gateway.log").read_text(errors="replace")
            raise servers.ServerError(
                f"the gateway received {now:,.0f} of {total:,} readings and no more for "
                f"{STALL_S:.0f} s; the end of its log:\n{log[-3000:]}"
            )
        PROGRESS.tell(f"{now:,.0f} of {total:,} readings received")
        time.sleep(SLOW_POLL_S)


def _received(gateway: Gateway) -> float:
    """Readings received so far; a gateway busy with drops may take seconds to answer."""
    metrics = scrape(gateway.metrics_url, timeout_s=SCRAPE_TIMEOUT_S)
    return metrics["gateway_readings_total{outcome=received}"]


def buffered(gateway: Gateway) -> float:
    """Readings and summaries the gateway's buffer holds."""
    metrics = scrape(gateway.metrics_url, timeout_s=SCRAPE_TIMEOUT_S)
    summaries = sum(v for k, v in metrics.items() if k.startswith("gateway_buffer_summaries{"))
    return metrics["gateway_buffer_readings"] + summaries


def bench_long_outage(
    policy: str, outage_factor: float = 10.0, *, deadband: bool = False, shape: Shape = Shape()
) -> dict[str, Any]:
    """One run of the scenario under `policy`; its figures (see the module docstring)."""
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        work = Path(tmp)
        profile = work / "long-outage.toml"
        profile.write_text(profile_text(policy, shape, deadband=deadband), encoding="utf-8")
        broker = servers.start_mosquitto(work / "mosquitto")
        db = servers.start_influxd(work / "influxd")
        gateway = sampler = None
        try:
            servers.influxql(db.url, f"CREATE DATABASE {DATABASE}")
            db.stop()
            gateway = Gateway(work, broker.port, "commit", database_url=db.url, profile=profile)
            sampler = FileSampler(gateway.buffer_dir)
            before = scrape(gateway.metrics_url, timeout_s=SCRAPE_TIMEOUT_S)
            outage = _publish_outage(gateway, broker.port, shape, outage_factor)
            window = _realtime_window(gateway, broker.port, shape, outage["per_device"])
            db = servers.start_influxd(db.workdir, port=db.port)
            started = time.perf_counter()
            deadline = time.monotonic() + DRAIN_TIMEOUT_S
            while (left := buffered(gateway)) > 0:
                if time.monotonic() > deadline:
                    raise servers.ServerError(f"{left:,.0f} left after {DRAIN_TIMEOUT_S:.0f} s")
                PROGRESS.tell(f"draining: {left:,.0f} readings and summaries left")
                time.sleep(0.05)
            drain_s = time.perf_counter() - started
            after = scrape(gateway.metrics_url, timeout_s=SCRAPE_TIMEOUT_S)
            lag = histogram_max(after, LOOP_LAG, before)
            span = outagecheck.Span(
                START_MS, shape.ts_step_ms, shape.devices, outage["per_device"], window["last"]
            )
            return {
                **{k: v for k, v in outage.items() if k != "per_device"},
                **{k: v for k, v in window.items() if k != "last"},
                **outagecheck.check(db.url, DATABASE, span, shape.steps_s, shape.coverage_s),
                "drain_s": drain_s,
                "max_file_bytes": sampler.stop(),
                "capacity_bytes": shape.capacity_bytes,
                "loop_lag_max_ms": float("nan") if lag is None else lag * 1000,
                **outagecheck.identities(after),
            }
        finally:
            if sampler is not None:
                sampler.stop()
            if gateway is not None:
                gateway.stop()
            db.stop()
            broker.stop()


def _publish_outage(
    gateway: Gateway, port: int, shape: Shape, outage_factor: float
) -> dict[str, Any]:
    """The outage's readings, flat out: a probe for the bytes per reading, then the rest."""
    probe = _whole(shape.probe_readings // shape.devices)
    PROGRESS.tell(f"publishing {probe * shape.devices:,} readings to measure their size")
    run_loads(loads(port, shape, probe, 0, per_message=OUTAGE_PER_MESSAGE))
    wait_received(gateway, probe * shape.devices)
    metrics = scrape(gateway.metrics_url, timeout_s=SCRAPE_TIMEOUT_S)
    bytes_per_reading = metrics["gateway_buffer_bytes"] / metrics["gateway_buffer_readings"]
    raw_readings = readings_budget(shape.capacity_bytes) * shape.high_watermark
    raw_readings /= bytes_per_reading
    per_device = _whole(int(raw_readings * outage_factor / shape.devices))
    total = per_device * shape.devices
    print(
        f"bench: {bytes_per_reading:.1f} bytes per reading: the budget holds "
        f"{raw_readings:,.0f} raw at the high watermark; an outage of {total:,} readings "
        f"({total / READINGS_PER_S / 60:.1f} min of reading time)",
        file=sys.stderr,
        flush=True,
    )
    started = time.perf_counter()
    run_loads(loads(port, shape, per_device - probe, probe, per_message=OUTAGE_PER_MESSAGE))
    wait_received(gateway, total)
    elapsed = time.perf_counter() - started
    return {
        "bytes_per_reading": bytes_per_reading,
        "budget_raw_readings": raw_readings,
        "outage_readings": total,
        "outage_minutes": total / READINGS_PER_S / 60,
        "outage_taken_per_s": (total - probe * shape.devices) / elapsed,
        "per_device": per_device,
    }


def _realtime_window(gateway: Gateway, port: int, shape: Shape, first: int) -> dict[str, Any]:
    """`realtime_s` at exactly `READINGS_PER_S`, one reading per message, still in outage."""
    per_device = int(shape.realtime_s * READINGS_PER_S / shape.devices)
    before = scrape(gateway.metrics_url, timeout_s=SCRAPE_TIMEOUT_S)
    received = before["gateway_readings_total{outcome=received}"]
    PROGRESS.tell(f"real-time window: {shape.realtime_s:.0f} s at {READINGS_PER_S}/s")
    results = run_loads(loads(port, shape, per_device, first, per_message=1, rate=READINGS_PER_S))
    wait_received(gateway, int(received) + per_device * shape.devices)
    after = scrape(gateway.metrics_url, timeout_s=SCRAPE_TIMEOUT_S)
    ack = "gateway_ack_delay_seconds"
    delta = {k: v - before.get(k, 0.0) for k, v in after.items() if k.startswith(f"{ack}_bucket")}
    latencies = sorted(x for r in results for x in r.puback_latencies_s)
    return {
        "puback_p50_ms": quantile(latencies, 0.5) * 1000,
        "puback_p99_ms": quantile(latencies, 0.99) * 1000,
        "gateway_ack_delay_p99_ms": histogram_quantile(delta, ack, 0.99),
        "last": first + per_device,
    }


def _whole(per_device: int) -> int:
    """Readings per device rounded up to whole messages of `OUTAGE_PER_MESSAGE`."""
    return -(-max(per_device, 1) // OUTAGE_PER_MESSAGE) * OUTAGE_PER_MESSAGE
