"""What a host is, so that the benchmark's figures can be compared with another host's.

Printed first by `gateway bench` and stored in its JSON: the CPU and how many, the Python and
library versions, the time of a fixed reference workload (decoding and packing the simulator's
default reading 100,000 times, the gateway's own per-reading work without I/O), and the fsync
latency of the disk the benchmark's buffers live on. A figure from a host whose reference time
is twice as long is expected to be about half as fast.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from gateway.config.mqtt import Subscription
from gateway.config.sections import LimitSettings
from gateway.ingest.core.decode import Decoder
from gateway.points.record import pack
from gateway.tools.simulate import values

REFERENCE_READINGS = 100_000
FSYNC_SAMPLES = 50
LIBRARIES = ("paho-mqtt", "aiomqtt", "lmdb", "pydantic", "uvloop", "anyio")
_TIMESTAMP_MS = 1_700_000_000_000


def calibrate(
    reference_readings: int = REFERENCE_READINGS, fsync_samples: int = FSYNC_SAMPLES
) -> dict[str, Any]:
    """The host's description and its two reference timings."""
    fsyncs = _fsync_ms(fsync_samples)
    return {
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "libraries": {name: _version(name) for name in LIBRARIES},
        "reference_readings": reference_readings,
        "reference_ms": _reference_ms(reference_readings),
        "fsync_p50_ms": statistics.median(fsyncs),
        "fsync_p99_ms": fsyncs[min(len(fsyncs) - 1, int(0.99 * len(fsyncs)))],
        "fsync_dir": tempfile.gettempdir(),
    }


def render(calibration: dict[str, Any]) -> str:
    """The calibration as the first lines of the benchmark's output."""
    libraries = ", ".join(f"{k} {v}" for k, v in calibration["libraries"].items())
    return "\n".join(
        [
            f"host: {calibration['cpu']} x {calibration['cpus']}, Python {calibration['python']}",
            f"libraries: {libraries}",
            (
                f"reference: decode and pack {calibration['reference_readings']:,} readings in "
                f"{calibration['reference_ms']:,.0f} ms"
            ),
            (
                f"fsync of a 4 KiB write in {calibration['fsync_dir']}: p50 "
                f"{calibration['fsync_p50_ms']:.2f} ms, p99 {calibration['fsync_p99_ms']:.2f} ms"
            ),
        ]
    )


def _reference_ms(readings: int) -> float:
    """Best of three: the least disturbed by whatever else the machine does."""
    decoder = Decoder(
        [Subscription(topic="sensors/{device}/{measurement}", format="json")], LimitSettings()
    )
    payload = _payload()
    received_ns = _TIMESTAMP_MS * 10**6
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(readings):
            for reading in decoder.decode("sensors/dev-1/telemetry", payload, received_ns).readings:
                pack(reading)
        best = min(best, time.perf_counter() - started)
    return best * 1000


def _payload() -> bytes:
    return json.dumps({"ts": _TIMESTAMP_MS, **values(1, 1)}).encode()


def _fsync_ms(samples: int) -> list[float]:
    """Sorted latencies of writing 4 KiB and fdatasync'ing it, where the buffers will be."""
    block = os.urandom(4096)
    times = []
    with tempfile.TemporaryDirectory(prefix="gateway-calibration-") as tmp:
        path = Path(tmp) / "probe"
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            for n in range(samples):
                started = time.perf_counter()
                os.pwrite(descriptor, block, (n % 16) * 4096)
                os.fdatasync(descriptor)
                times.append((time.perf_counter() - started) * 1000)
        finally:
            os.close(descriptor)
    return sorted(times)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"
