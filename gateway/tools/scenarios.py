"""The benchmark's scenarios: each runs real parts on this machine and returns its figures.

See gateway/tools/bench.py for what each measures and how the runner reports it.
"""

from __future__ import annotations

import itertools
import multiprocessing
import statistics
import struct
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import lmdb

from gateway.buffer.store import Buffer
from gateway.points.model import Reading
from gateway.points.record import pack
from gateway.service.progress import Ticker
from gateway.tools import loadgen, servers, simulate
from gateway.tools.demo import scrape
from gateway.tools.measure import (
    LOOP_LAG,
    POLL_S,
    Gateway,
    StallProbe,
    box_cpu_s,
    cpu_s,
    histogram_max,
    histogram_quantile,
    quantile,
    rss_mib,
)

APPEND_SECONDS = 2.0


SYNC_INTERVAL_S = 1.0


BENCH_DEVICES = 50


SLOW_POLL_S = 0.5


NEAR_END = 0.9
# The timestamp (ms) of the first prefilled reading of each device, as the load generator's.
PREFILL_START_MS = 1_700_000_000_000
# The live-first scenario: how long the new readings keep coming, and how often it samples.
LIVE_LOAD_S = 30.0
LIVE_SAMPLE_S = 0.2
# Bytes of request bodies the gateway sent to the database (compressed as sent).
SENT_BYTES = "gateway_sink_sent_bytes_total"
# A line a second on stderr while a run waits on the gateway (stdout keeps the figures).
PROGRESS = Ticker("bench")
# The outage scenario: steady load this long before the outage and after it.
OUTAGE_MARGIN_S = 10.0
# ... and how often it looks for the first batch after the database's return.
OUTAGE_POLL_S = 0.02


# How often the end-to-end scenario samples the gateway's lag, backlog and batch size.
E2E_SAMPLE_S = 0.5
# The seal scenario: the journal seals once it holds this many readings (SEAL_READINGS in
# gateway/buffer/checkpoint.py; the benchmark's capacity keeps the byte threshold above it);
# a fifth more are published so that the seal falls inside the run.
SEAL_READINGS = 131_072
SEAL_MARGIN = 1.2
# ... and how long it waits, once all are accepted, for the seal to be committed.
SEAL_WAIT_S = 300.0


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


def publish(load: loadgen.Load) -> loadgen.LoadResult:
    """One publisher's load, in a process of the pool."""
    return loadgen.publish(load)


def bench_ingest(
    count: int,
    rate: float,
    publishers: int,
    sync: str,
    *,
    rss_every: int = 0,
    per_message: int = 1,
    workers: int = 1,
    devices: int = BENCH_DEVICES,
    sparkplug: bool = False,
) -> dict[str, Any]:
    """Publish `count` QoS 1 readings (`per_message` per message) into a gateway; its figures.

    `sparkplug`: each publisher is a Sparkplug B edge node (gateway/tools/loadgen.py).
    """
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        work = Path(tmp)
        broker = servers.start_mosquitto(work / "mosquitto")
        gateway = None
        try:
            gateway = Gateway(work, broker.port, sync, workers=workers, sparkplug=sparkplug)
            jobs = load_plan(
                broker.port,
                count,
                rate,
                publishers,
                per_message,
                devices=devices,
                sparkplug=sparkplug,
            )
            cpu0, started = gateway.cpu_s(), time.perf_counter()
            broker_cpu0, box0 = cpu_s(broker.process.pid), box_cpu_s()
            written0 = gateway.write_bytes()
            # Anonymous memory is the process's own; file-backed is LMDB's map of its data file,
            # clean page cache the kernel reclaims under pressure.
            rss: list[tuple[int, float, float]] = []
            # With `rss_every`: (seconds, readings buffered, anonymous MiB, mapped MiB) per poll.
            timeline: list[tuple[float, float, float, float]] = []
            with multiprocessing.get_context("fork").Pool(publishers) as pool:
                pending = pool.map_async(publish, jobs)
                accepted, total = 0.0, sum(job.count for job in jobs)
                while accepted < total:
                    # A scrape costs the gateway CPU (with workers, the parent merges their
                    # pages): look often only near the end, where the timing needs it.
                    time.sleep(POLL_S if accepted >= total * NEAR_END else SLOW_POLL_S)
                    accepted = gateway.metric("gateway_readings_total{outcome=accepted}")
                    PROGRESS.tell(f"{accepted:,.0f} of {total:,} readings accepted")
                    if rss_every:
                        anon, mapped = gateway.rss_mib("RssAnon"), gateway.rss_mib("RssFile")
                        timeline.append((time.perf_counter() - started, accepted, anon, mapped))
                        if accepted >= (len(rss) + 1) * rss_every:
                            rss.append((int(accepted), anon, mapped))
                elapsed = time.perf_counter() - started
                results = pending.get(timeout=600)
            metrics = scrape(gateway.metrics_url)
            latencies = sorted(x for r in results for x in r.puback_latencies_s)
            commits = metrics["gateway_commit_readings_count"]
            broker_s = max(cpu_s(broker.process.pid) - broker_cpu0, 1e-9)
            messages = accepted / per_message
            return {
                "readings": int(accepted),
                "accepted_per_s": accepted / elapsed,
                "commits_per_s": commits / elapsed,
                "readings_per_commit": metrics["gateway_commit_readings_sum"] / commits,
                "ack_delay_p50_ms": histogram_quantile(metrics, "gateway_ack_delay_seconds", 0.5),
                "ack_delay_p99_ms": histogram_quantile(metrics, "gateway_ack_delay_seconds", 0.99),
                "broker_puback_p50_ms": quantile(latencies, 0.5) * 1000,
                "broker_puback_p99_ms": quantile(latencies, 0.99) * 1000,
                "broker_puback_p999_ms": quantile(latencies, 0.999) * 1000,
                "gateway_cpu_percent": (gateway.cpu_s() - cpu0) / elapsed * 100,
                "broker_cpu_percent": (cpu_s(broker.process.pid) - broker_cpu0) / elapsed * 100,
                # Busy time of all cores together (200 % is a saturated 2-core box).
                "machine_cpu_percent": (box_cpu_s() - box0) / elapsed * 100,
                # The steadiest figure on a busy machine: CPU time over readings accepted.
                "gateway_cpu_us_per_reading": (gateway.cpu_s() - cpu0) / accepted * 1e6,
                # The broker's work per message in the same run: its ratio to the gateway's
                # varies less between hosts than either does.
                "broker_cpu_us_per_message": broker_s / messages * 1e6,
                "gateway_to_broker_cpu_ratio": (gateway.cpu_s() - cpu0) / broker_s,
                "gateway_peak_rss_mib": gateway.rss_mib("VmHWM"),
                "gateway_anon_rss_mib": gateway.rss_mib("RssAnon"),
                **gateway.disk_figures(written0, accepted),
                "rss_mib_by_backlog": rss,
                "timeline": timeline,
            }
        finally:
            if gateway is not None:
                gateway.stop()
            broker.stop()


def load_plan(
    port: int,
    count: int,
    rate: float,
    publishers: int,
    per_message: int = 1,
    *,
    devices: int = BENCH_DEVICES,
    start_ms: int = PREFILL_START_MS,
    sparkplug: bool = False,
    fields: int = 0,
) -> list[loadgen.Load]:
    """`count` readings at `rate` from `devices` devices, split over `publishers`.

    `start_ms`: the first reading's timestamp; `fields`: see `loadgen.Load`.
    """
    publishers = min(publishers, devices)
    devices //= publishers
    return [
        loadgen.Load(
            "127.0.0.1",
            port,
            f"bench-{p}",
            range(p * devices, (p + 1) * devices),
            count // publishers,
            rate / publishers,
            per_message=per_message,
            start_ms=start_ms,
            sparkplug=sparkplug,
            fields=fields,
        )
        for p in range(publishers)
    ]


def bench_end_to_end(
    rate: float,
    duration_s: float,
    publishers: int,
    workers: int = 1,
    *,
    devices: int = BENCH_DEVICES,
    sinks: int = 1,
    replication: str = "off",
) -> dict[str, Any]:
    """Steady load at `rate` for `duration_s` into a local influxd: lag, backlog, CPU, RSS.

    `sinks` = 2: VictoriaMetrics as a second sink beside influxd; a reading counts as
    delivered once both had it, and each sink's lag is sampled too. `replication` "sync" or
    "async": a standby gateway on the same broker follows the measured one (the primary);
    its CPU and disk writes per reading are measured too.
    """
    count = int(rate * duration_s)
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        work = Path(tmp)
        broker = servers.start_mosquitto(work / "mosquitto")
        db = servers.start_influxd(work / "influxd")
        servers.influxql(db.url, "CREATE DATABASE telemetry")
        far = servers.start_victoria_metrics(work / "vm") if sinks > 1 else None
        gateway = standby = None
        try:
            gateway = Gateway(
                work,
                broker.port,
                "commit",
                database_url=db.url,
                workers=workers,
                far_url=far.url if far is not None else "",
                replication=_pair_section("a", "primary", replication),
            )
            standby = _start_standby(gateway, work, broker.port, db.url, replication)
            jobs = load_plan(broker.port, count, rate, publishers, devices=devices)
            cpu0, db_cpu0 = gateway.cpu_s(), cpu_s(db.process.pid)
            standby_before = (standby.cpu_s(), standby.write_bytes()) if standby else (0.0, 0)
            broker_cpu0 = cpu_s(broker.process.pid)
            written0 = gateway.write_bytes()
            started = time.perf_counter()
            lags, backlogs, sizes = [], [], []
            sink_lags: dict[str, list[float]] = {"near": [], "far": []} if far else {}
            # (seconds, readings delivered, lag s, backlog) per sample, for `bench --plot`.
            timeline: list[tuple[float, float, float, float]] = []
            with multiprocessing.get_context("fork").Pool(publishers) as pool:
                pending = pool.map_async(publish, jobs)
                delivered = 0.0
                while delivered < sum(job.count for job in jobs):
                    time.sleep(E2E_SAMPLE_S)
                    metrics = scrape(gateway.metrics_url)
                    delivered = metrics["gateway_readings_total{outcome=delivered}"]
                    PROGRESS.tell(f"{delivered:,.0f} readings delivered")
                    lags.append(metrics["gateway_buffer_lag_seconds"])
                    backlogs.append(metrics["gateway_buffer_readings"])
                    sizes.append(metrics["gateway_batch_size"])
                    for name, found in sink_lags.items():
                        found.append(metrics.get(f"gateway_sink_lag_seconds{{sink={name}}}", 0.0))
                    timeline.append(
                        (time.perf_counter() - started, delivered, lags[-1], backlogs[-1])
                    )
                elapsed = time.perf_counter() - started
                loads = pending.get(timeout=600)
            half = len(backlogs) // 2
            gateway_s = gateway.cpu_s() - cpu0
            pair = _standby_figures(standby, standby_before, delivered) if standby else {}
            broker_s = max(cpu_s(broker.process.pid) - broker_cpu0, 1e-9)
            return (
                {
                    "delivered_per_s": delivered / elapsed,
                    "lag_p50_s": quantile(sorted(lags), 0.5),
                    "lag_p99_s": quantile(sorted(lags), 0.99),
                    "backlog_first_half_max": max(backlogs[:half] or [0]),
                    "backlog_second_half_max": max(backlogs[half:] or [0]),
                    "batch_size_median": statistics.median(sizes),
                    # Ingest and flush together, one reading per message.
                    "gateway_cpu_us_per_reading": gateway_s / delivered * 1e6,
                    "gateway_cpu_percent": gateway_s / elapsed * 100,
                    "broker_cpu_us_per_message": broker_s / delivered * 1e6,
                    "gateway_to_broker_cpu_ratio": gateway_s / broker_s,
                    "gateway_peak_rss_mib": gateway.rss_mib("VmHWM"),
                    "database_cpu_percent": (cpu_s(db.process.pid) - db_cpu0) / elapsed * 100,
                    "database_rss_mib": rss_mib(db.process.pid),
                    "written_bytes_per_reading": (gateway.write_bytes() - written0) / delivered,
                    "wire_bytes_per_reading": metrics.get(SENT_BYTES, 0.0) / delivered,
                    **_puback_figures(loads),
                    "timeline": timeline,
                }
                | pair
                | {
                    f"{name}_lag_p99_s": quantile(sorted(found), 0.99)
                    for name, found in sink_lags.items()
                }
            )
        finally:
            if standby is not None:
                standby.stop()
            if gateway is not None:
                gateway.stop()
            db.stop()
            if far is not None:
                far.stop()
            broker.stop()


def _puback_figures(loads: list[loadgen.LoadResult]) -> dict[str, float]:
    """The publishers' PUBACK latency: when the broker had each message acknowledged."""
    latencies = sorted(x for r in loads for x in r.puback_latencies_s)
    return {
        "broker_puback_p50_ms": quantile(latencies, 0.5) * 1000,
        "broker_puback_p99_ms": quantile(latencies, 0.99) * 1000,
    }


def _start_standby(
    primary: Gateway, work: Path, broker_port: int, database_url: str, mode: str
) -> Gateway | None:
    """A standby following `primary` (None with replication off), once its acks wait for it."""
    if mode == "off":
        return None
    standby = Gateway(
        work,
        broker_port,
        "commit",
        database_url=database_url,
        replication=_pair_section("b", "standby", mode),
        buffer_name="standby",
    )
    _wait_durability(primary, "sync" if mode == "sync" else "async")
    return standby


def _standby_figures(
    standby: Gateway, before: tuple[float, int], delivered: float
) -> dict[str, float]:
    """What the standby cost per reading the pair delivered: CPU, disk writes, memory."""
    cpu0, written0 = before
    return {
        "standby_cpu_us_per_reading": (standby.cpu_s() - cpu0) / delivered * 1e6,
        "standby_written_bytes_per_reading": (standby.write_bytes() - written0) / delivered,
        "standby_peak_rss_mib": standby.rss_mib("VmHWM"),
    }


def _pair_section(node: str, role: str, mode: str) -> str:
    """The `[replication]` table of one box of a benchmarked pair ("" without one)."""
    if mode == "off":
        return ""
    return f'\n[replication]\nrole = "{role}"\nnode = "{node}"\nmode = "{mode}"\n'


def _wait_durability(gateway: Gateway, state: str, timeout_s: float = 60) -> None:
    """Until the primary's acks mean `state` (its standby caught up and followed)."""
    deadline = time.monotonic() + timeout_s
    while gateway.metric(f"gateway_replication_durability{{state={state}}}") != 1:
        if time.monotonic() > deadline:
            raise servers.ServerError(f"the pair did not reach {state} in {timeout_s:g} s")
        time.sleep(POLL_S)


def bench_outage(
    rate: float, outage_s: float, publishers: int, devices: int = BENCH_DEVICES
) -> dict[str, Any]:
    """A steady `rate` into VictoriaMetrics, which is down for `outage_s` in the middle.

    The figures: how long after the database accepted writes again the first batch landed,
    the backlog then, and how long the backlog took to drain. Default flush settings, so the
    write backoff has grown to `retry_max_s` by the end of a long outage.
    """
    before_s = after_s = OUTAGE_MARGIN_S
    count = int(rate * (before_s + outage_s + after_s))
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        work = Path(tmp)
        broker = servers.start_mosquitto(work / "mosquitto")
        db = servers.start_victoria_metrics(work / "victoria-metrics")
        gateway = None
        try:
            gateway = Gateway(work, broker.port, "commit", database_url=db.url, api="v2")
            jobs = load_plan(broker.port, count, rate, publishers, devices=devices)
            with multiprocessing.get_context("fork").Pool(publishers) as pool:
                pending = pool.map_async(publish, jobs)
                time.sleep(before_s)
                db.kill()
                time.sleep(outage_s)
                landed = gateway.metric("gateway_readings_total{outcome=delivered}")
                db = servers.start_victoria_metrics(db.workdir, port=db.port)
                back = time.perf_counter()
                backlog = gateway.metric("gateway_buffer_readings")
                while gateway.metric("gateway_readings_total{outcome=delivered}") == landed:
                    PROGRESS.tell("the database is back; waiting for the first batch")
                    time.sleep(OUTAGE_POLL_S)
                resumed = time.perf_counter() - back
                while (left := gateway.metric("gateway_buffer_readings")) > backlog / 100:
                    PROGRESS.tell(f"draining: {left:,.0f} readings left")
                    time.sleep(OUTAGE_POLL_S)
                drained = time.perf_counter() - back
                pending.get(timeout=600)
            wait_until_delivered(gateway, count)
            return {
                "first_batch_after_return_s": resumed,
                "backlog_at_return": backlog,
                "backlog_99pct_drained_after_s": drained,
                "probes_ok": gateway.metric("gateway_sink_probes_total{result=ok}"),
            }
        finally:
            if gateway is not None:
                gateway.stop()
            db.stop()
            broker.stop()


def wait_until_delivered(gateway: Gateway, count: int, timeout_s: float = 120) -> None:
    """Wait until `count` readings were delivered; raises if that takes too long."""
    deadline = time.monotonic() + timeout_s
    while gateway.metric("gateway_readings_total{outcome=delivered}") < count:
        if time.monotonic() > deadline:
            raise servers.ServerError(f"{count} readings were not all delivered")
        PROGRESS.tell(f"waiting for {count:,} readings to be delivered")
        time.sleep(POLL_S)


def prefill(path: Path, readings: int, devices: int, *, crash: bool = False) -> None:
    """A buffer holding `readings` simulated readings spread over `devices` devices.

    `crash`: left as kill -9 would leave it, without the closing checkpoint.
    """
    buffer = Buffer(path, 8 << 30, "none")
    try:
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
                                (PREFILL_START_MS + i) * 10**6,
                            )
                        ),
                    )
                )
            buffer.append(batch)
        buffer.sync()
    finally:
        if crash:
            buffer.abandon()
        else:
            buffer.close()


def bench_startup(readings: int, devices: int) -> dict[str, Any]:
    """Open a buffer holding `readings` after a crash and after a clean close; start on it."""
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        work = Path(tmp)
        prefill(work / "buffer", readings, devices, crash=True)
        opened: list[float] = []
        for _ in ("after kill -9", "after a clean stop"):
            started = time.perf_counter()
            with Buffer(work / "buffer", 8 << 30, "commit") as buffer:
                opened.append(time.perf_counter() - started)
                if buffer.totals().readings != readings:
                    raise servers.ServerError("the reopened buffer lost readings")
        broker = servers.start_mosquitto(work / "mosquitto")
        try:
            took = []
            empty = work / "empty"
            empty.mkdir()
            for where in (work, empty):
                started = time.perf_counter()
                gateway = Gateway(where, broker.port, "commit")
                took.append(time.perf_counter() - started)
                gateway.stop()
        finally:
            broker.stop()
        return {
            "open_after_kill9_s": opened[0],
            "open_after_clean_stop_s": opened[1],
            "gateway_connected_with_backlog_s": took[0],
            "gateway_connected_empty_s": took[1],
            "data_files_bytes_per_reading": sum(
                f.stat().st_size for f in (work / "buffer").glob("*.mdb")
            )
            / readings,
        }


def bench_drain(
    database: str,
    readings: int,
    devices: int,
    max_bytes_per_s: float | None = None,
    *,
    gzip: bool = True,
) -> dict[str, Any]:
    """Drain a prefilled backlog into a local influxd (v1) or VictoriaMetrics (v2).

    `max_bytes_per_s`: the uplink budget (`[flush] max_bytes_per_s`); the rate kept is measured
    from the first body sent to the last. `gzip`: `[flush] gzip`.
    """
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
            db_cpu0 = cpu_s(db.process.pid)
            started = time.perf_counter()
            api = "v1" if database == "influxd" else "v2"
            flush = f"gzip = {str(gzip).lower()}\n"
            if max_bytes_per_s:
                flush += f"max_bytes_per_s = {max_bytes_per_s}\n"
            gateway = Gateway(
                work, broker.port, "commit", database_url=db.url, api=api, flush=flush
            )
            sizes: list[float] = []
            sent: list[tuple[float, float]] = []
            while (left := gateway.metric("gateway_buffer_readings")) > 0 or not sizes:
                sizes.append(gateway.metric("gateway_batch_size"))
                sent.append((time.perf_counter(), gateway.metric(SENT_BYTES)))
                PROGRESS.tell(f"draining: {left:,.0f} readings left")
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
                "write_p50_ms": histogram_quantile(metrics, "gateway_write_duration_seconds", 0.5),
                "write_p99_ms": histogram_quantile(metrics, "gateway_write_duration_seconds", 0.99),
                "gateway_cpu_percent": gateway.cpu_s() / elapsed * 100,
                "gateway_cpu_us_per_point": gateway.cpu_s() / readings * 1e6,
                "database_cpu_percent": (cpu_s(db.process.pid) - db_cpu0) / elapsed * 100,
                # Deleting what landed writes too; the gateway wrote nothing before the drain.
                "written_bytes_per_reading": gateway.write_bytes() / readings,
                "wire_bytes_per_reading": metrics.get(SENT_BYTES, 0.0) / readings,
                "uplink_bytes_per_s": _send_rate(sent),
            }
        finally:
            if gateway is not None:
                gateway.stop()
            db.stop()
            broker.stop()


def _send_rate(sent: list[tuple[float, float]]) -> float:
    """Bytes/s between the first sample that saw a body go out and the last that saw one more.

    The counter counts a body when it goes out, so the span from the first to the last body
    covers all but the last one's bytes.
    """
    moved = [(t, b) for t, b in sent if b > 0]
    changes = [moved[0]] if moved else []
    changes += [later for earlier, later in itertools.pairwise(moved) if later[1] > earlier[1]]
    if len(changes) < 2:  # noqa: PLR2004 - a rate needs two points
        return 0.0
    (t0, b0), (t1, b1) = changes[0], changes[-1]
    return (b1 - b0) / (t1 - t0)


def bench_live_first(
    readings: int, devices: int, rate: float, publishers: int, *, live_first: bool
) -> dict[str, Any]:
    """A prefilled backlog drains into VictoriaMetrics while new readings arrive at `rate`.

    The figures: the lag of the new readings (their oldest undelivered one's age, sampled),
    and how soon the backlog was delivered (only about a second of new readings left).
    """
    count = int(rate * LIVE_LOAD_S)
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        work = Path(tmp)
        prefill(work / "buffer", readings, devices)
        broker = servers.start_mosquitto(work / "mosquitto")
        db = servers.start_victoria_metrics(work / "victoria-metrics")
        gateway = None
        try:
            started = time.perf_counter()
            flush = f"live_first = {str(live_first).lower()}\n"
            gateway = Gateway(
                work, broker.port, "commit", database_url=db.url, api="v2", flush=flush
            )
            # Stamped after the backlog, as readings that come after an outage are.
            newer = PREFILL_START_MS + readings // devices + 1
            jobs = load_plan(broker.port, count, rate, publishers, devices=devices, start_ms=newer)
            lags: list[float] = []
            drained_s = 0.0
            with multiprocessing.get_context("fork").Pool(publishers) as pool:
                pending = pool.map_async(publish, jobs)
                while not drained_s or not pending.ready():
                    time.sleep(LIVE_SAMPLE_S)
                    metrics = scrape(gateway.metrics_url)
                    lags.append(metrics["gateway_buffer_live_lag_seconds"])
                    PROGRESS.tell(f"live lag {lags[-1]:.2f} s")
                    if not drained_s and metrics["gateway_buffer_readings"] <= rate:
                        drained_s = time.perf_counter() - started
                pending.get(timeout=600)
            wait_until_delivered(gateway, readings + count)
            return {
                "new_readings_lag_max_s": max(lags),
                "new_readings_lag_p50_s": quantile(sorted(lags), 0.5),
                "backlog_delivered_after_s": drained_s,
                "backlog_points_per_s": readings / drained_s,
            }
        finally:
            if gateway is not None:
                gateway.stop()
            db.stop()
            broker.stop()


def bench_seal(devices: int, fields: int, rate: float, publishers: int) -> dict[str, Any]:
    """The longest event-loop stall while the journal fills and seals, the database down.

    Readings of `fields` fields from `devices` devices at `rate`, until the journal sealed.
    Measured from outside by the slowest `/healthz` answer (`StallProbe`) and, where the
    gateway has its loop-lag histogram, by that histogram's highest bucket in the run.
    """
    count = int(SEAL_READINGS * SEAL_MARGIN)
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        work = Path(tmp)
        broker = servers.start_mosquitto(work / "mosquitto")
        gateway = None
        try:
            gateway = Gateway(work, broker.port, "commit")
            jobs = load_plan(broker.port, count, rate, publishers, devices=devices, fields=fields)
            total = sum(job.count for job in jobs)
            before = scrape(gateway.metrics_url)
            probe = StallProbe(gateway.metrics_url.removesuffix("/metrics"))
            started = time.perf_counter()
            with multiprocessing.get_context("fork").Pool(publishers) as pool:
                pending = pool.map_async(publish, jobs)
                accepted = 0.0
                while accepted < total:
                    time.sleep(SLOW_POLL_S)
                    # A stalled gateway does not answer (0): keep what it said last.
                    now = gateway.metric("gateway_readings_total{outcome=accepted}")
                    accepted = max(accepted, now)
                    PROGRESS.tell(f"{accepted:,.0f} of {total:,} readings accepted")
                pending.get(timeout=600)
            deadline = time.monotonic() + SEAL_WAIT_S
            while not (sealed := seals(gateway.buffer_dir)):
                if time.monotonic() > deadline:
                    raise servers.ServerError(f"no seal {SEAL_WAIT_S:.0f} s after the last reading")
                PROGRESS.tell("waiting for the journal to seal")
                time.sleep(SLOW_POLL_S)
            elapsed = time.perf_counter() - started
            # The seal is committed; an answer still held up by what follows it (the journal's
            # deletion) is waited for by `stop`.
            longest = probe.stop()
            after = scrape(gateway.metrics_url)
            lag = histogram_max(after, LOOP_LAG, before)
            return {
                "readings": accepted,
                "reading_bytes": after["gateway_buffer_bytes"] / after["gateway_buffer_readings"],
                "seals": sealed,
                # Fewer, larger group commits make a journal record hold more devices.
                "readings_per_commit": after["gateway_commit_readings_sum"]
                / after["gateway_commit_readings_count"],
                "elapsed_s": elapsed,
                "longest_healthz_answer_ms": longest * 1000,
                "loop_lag_max_ms": float("nan") if lag is None else lag * 1000,
                "longest_stall_ms": (longest if lag is None else lag) * 1000,
                "healthz_answers": probe.answers,
            }
        finally:
            if gateway is not None:
                gateway.stop()
            broker.stop()


def seals(buffer_dir: Path) -> int:
    """How many seals the buffer's store has committed (its `meta` table's `next_seal`)."""
    env = lmdb.open(str(buffer_dir), readonly=True, lock=True, max_dbs=8)
    try:
        with env.begin() as txn:
            meta = env.open_db(b"meta", txn=txn, create=False)
            raw = txn.get(b"next_seal", db=meta)
    finally:
        env.close()
    return struct.unpack(">I", raw)[0] if raw else 0
