"""The benchmark's backlog scenario: a backlog built with the database down, then drained.

QoS 1 publishers fill the gateway's buffer as fast as it takes readings while nothing listens
at the database's address; then VictoriaMetrics starts there and the gateway drains into it.
Memory is sampled on a thread all along (gateway/tools/measure.py `PeakSampler`): the peak
anonymous RSS is what a box must have room for, since the LMDB map's file-backed pages are
page cache the kernel reclaims. A configuration file (`profile`) runs in place of the
benchmark's own, so that a profile such as config/small-box.toml is measured as it ships.
"""

from __future__ import annotations

import multiprocessing
import tempfile
import time
from pathlib import Path
from typing import Any

from gateway.tools import servers
from gateway.tools.measure import POLL_S, Gateway, PeakSampler
from gateway.tools.scenarios import (
    NEAR_END,
    PROGRESS,
    SLOW_POLL_S,
    load_plan,
    publish,
    wait_until_delivered,
)

# Publishing the backlog, and draining it, may take this long at most.
PUBLISH_TIMEOUT_S = 900.0
DRAIN_TIMEOUT_S = 900.0
# Once the publishers are done, the gateway taking no reading for this long ends the build
# (while they publish, `PUBLISH_TIMEOUT_S` does): a profile's buffer full under `reject` (the
# database is down, nothing drains) or its topics not matching the benchmark's would otherwise
# leave it waiting for ever.
STALL_S = 30.0


def bench_backlog(
    count: int, publishers: int, sync: str, devices: int, profile: Path | None = None
) -> dict[str, Any]:
    """Buffer `count` readings with the database down, then drain them; the gateway's memory.

    `profile`: the configuration file to run (gateway/tools/measure.py `Gateway`).
    """
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        work = Path(tmp)
        broker = servers.start_mosquitto(work / "mosquitto")
        db_port = servers.free_port()
        db = gateway = sampler = None
        try:
            gateway = Gateway(
                work,
                broker.port,
                sync,
                database_url=f"http://127.0.0.1:{db_port}",
                profile=profile,
            )
            sampler = PeakSampler(gateway)
            built = _build(gateway, broker.port, count, publishers, devices)
            db = servers.start_victoria_metrics(work / "victoria-metrics", port=db_port)
            started = time.perf_counter()
            wait_until_delivered(gateway, count, timeout_s=DRAIN_TIMEOUT_S)
            drain_s = time.perf_counter() - started
            return {
                **built,
                "drain_s": drain_s,
                "drain_points_per_s": count / drain_s,
                "gateway_peak_anon_rss_mib": sampler.stop(),
                "gateway_peak_rss_mib": gateway.rss_mib("VmHWM"),
            }
        finally:
            if sampler is not None:
                sampler.stop()
            if gateway is not None:
                gateway.stop()
            if db is not None:
                db.stop()
            broker.stop()


def _build(
    gateway: Gateway, port: int, count: int, publishers: int, devices: int
) -> dict[str, Any]:
    """Publish the backlog flat out; accepted/s, memory by backlog, and the timeline."""
    jobs = load_plan(port, count, 0, publishers, devices=devices)
    started = time.perf_counter()
    # Anonymous memory is the process's own; file-backed is LMDB's map of its data file.
    rss: list[tuple[int, float, float]] = []
    # (seconds, readings buffered, anonymous MiB, mapped MiB) per poll.
    timeline: list[tuple[float, float, float, float]] = []
    every = max(1, count // 10)
    with multiprocessing.get_context("fork").Pool(publishers) as pool:
        pending = pool.map_async(publish, jobs)
        accepted, total = 0.0, sum(job.count for job in jobs)
        moved = time.monotonic()
        while accepted < total:
            time.sleep(POLL_S if accepted >= total * NEAR_END else SLOW_POLL_S)
            now = gateway.metric("gateway_readings_total{outcome=accepted}")
            if now != accepted:
                accepted, moved = now, time.monotonic()
            elif time.monotonic() - moved > (STALL_S if pending.ready() else PUBLISH_TIMEOUT_S):
                if pending.ready():
                    pending.get()  # a publisher's failure is the better error
                idle_s = time.monotonic() - moved
                raise RuntimeError(
                    f"the gateway took {accepted:,.0f} of {total:,} readings and no more for "
                    f"{idle_s:.0f} s: a buffer too small for the backlog, or topics the "
                    "configuration does not subscribe to (see the gateway's log)"
                )
            PROGRESS.tell(f"{accepted:,.0f} of {total:,} readings accepted")
            anon, mapped = gateway.rss_mib("RssAnon"), gateway.rss_mib("RssFile")
            timeline.append((time.perf_counter() - started, accepted, anon, mapped))
            if accepted >= (len(rss) + 1) * every:
                rss.append((int(accepted), anon, mapped))
        elapsed = time.perf_counter() - started
        pending.get(timeout=PUBLISH_TIMEOUT_S)
    return {
        "readings": int(accepted),
        "accepted_per_s": accepted / elapsed,
        "gateway_anon_rss_mib_at_backlog": gateway.rss_mib("RssAnon"),
        "rss_mib_by_backlog": rss,
        "timeline": timeline,
    }
