"""The flash-wear figures of a running gateway against what the benchmark measures of it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from gateway.tools import measure
from tests.gatewayproc import publish_in_background, wait_for

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.conftest import Endpoint, InfluxV1
    from tests.gatewayproc import GatewayProcess

pytestmark = pytest.mark.integration

# Both read the same counter, the benchmark a moment after the scrape: what the gateway wrote
# meanwhile (a checkpoint, a commit of the housekeeping) is all they may differ by.
TOLERANCE_BYTES = 1 << 20


def test_bytes_written_are_what_the_benchmark_measures_of_the_process(
    gateway: Callable[..., GatewayProcess], mosquitto: Endpoint, influx: InfluxV1, run_id: str
) -> None:
    """gateway_disk_written_bytes_total is the process's own write_bytes as the benchmark reads
    it, the status answer shows it, and each reading accepted cost some bytes."""
    gw = gateway(influx.config)
    assert gw.process is not None
    count = 5_000
    publish_in_background(mosquitto.port, run_id, count, rate=2500).join()
    wait_for(lambda: gw.readings("delivered") == count, 60, "every reading delivered")
    scraped = gw.metrics()
    read = measure.write_bytes(gw.process.pid)
    written = scraped["gateway_disk_written_bytes_total"]
    assert written > 0
    assert written <= read <= written + TOLERANCE_BYTES
    per_reading = scraped["gateway_disk_written_bytes_per_reading"]
    assert per_reading == pytest.approx(written / count)
    # docs/performance.md's end-to-end figures are 116-175 B a reading; start-up writes add to a
    # short run.
    assert 10 < per_reading < 100_000
    code, status = gw.get("/api/v1/status")
    assert code == 200
    disk = status["runtime"]["disk"]  # type: ignore[index]
    assert written <= disk["written_bytes"] <= measure.write_bytes(gw.process.pid)
    print(f"written {written:.0f} B, {per_reading:.1f} B/reading; benchmark read {read} B")
