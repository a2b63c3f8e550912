"""Near capacity with the reject policy, and a full disk: intake pauses and nothing is lost."""

from __future__ import annotations

import shutil
import subprocess
from typing import TYPE_CHECKING

import pytest

from gateway.tools import servers
from tests import backends
from tests.gatewayproc import SMALL_API, assert_identities, publish_in_background, wait_for

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from tests.conftest import Endpoint
    from tests.gatewayproc import GatewayProcess

pytestmark = pytest.mark.fault


def distinct_points(db: servers.Server, run_id: str) -> set[tuple[str, int]]:
    """(device, timestamp) of every point VictoriaMetrics holds for this run.

    Distinct points: VictoriaMetrics keeps identical raw samples apart unless deduplication is
    configured.
    """
    return {
        (s["metric"]["device"], ts)
        for s in servers.victoria_export(db.url, f'telemetry_temp{{run="{run_id}"}}')
        for ts in s["timestamps"]
    }


def test_reject_pauses_at_high_watermark_and_loses_no_qos1_reading(
    gateway: Callable[..., GatewayProcess], mosquitto: Endpoint, run_id: str, tmp_path: Path
) -> None:
    """With the database down and twice the budget published, intake pauses (the gateway leaves
    the broker) within the budget; once the database is back every reading lands once."""
    db = backends.start_victoria_metrics(tmp_path / "vm")
    try:
        gw = gateway(
            f'url = "{db.url}"\napi = "v2"\norg = "o"\nbucket = "b"',
            flush="linger_s = 0.1\nretry_max_s = 1\n",
            buffer='capacity = "1MiB"\n',
            api=SMALL_API,
        )
        db.kill()
        # About twice what the readings budget holds (2.25 MiB of 75-byte readings).
        count = 60_000
        publisher = publish_in_background(mosquitto.port, run_id, count)
        wait_for(lambda: gw.metrics()["gateway_intake_paused"] == 1, 60, "intake to pause")
        paused = assert_identities(gw)
        assert paused["gateway_mqtt_connected"] == 0
        high = 0.9 * paused["gateway_buffer_budget_bytes"]
        assert high - 1000 <= paused["gateway_buffer_bytes"] <= high
        assert paused["gateway_readings_total{outcome=accepted}"] < count
        publisher.join(timeout=60)

        db = backends.start_victoria_metrics(db.workdir, port=db.port)

        def drained() -> bool:
            m = assert_identities(gw)
            return m["gateway_readings_total{outcome=delivered}"] >= count and (
                m["gateway_buffer_readings"] == 0
            )

        wait_for(drained, 90, "every reading delivered and the buffer empty")
        m = assert_identities(gw)
        # Leaving the broker at the pause waits until it has read every PUBACK: no committed
        # message comes again.
        assert m["gateway_readings_total{outcome=accepted}"] == count
        assert m["gateway_intake_pauses_total{cause=watermark}"] >= 1
        assert m["gateway_intake_paused"] == 0
        # A restarted VictoriaMetrics may answer an export before it shows what it took.
        wait_for(lambda: len(distinct_points(db, run_id)) >= count, 30, "the points to show")
        assert len(distinct_points(db, run_id)) == count
        assert "intake resumed" in gw.log()
    finally:
        db.stop()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 32 MiB tmpfs, standing for a disk that other processes fill."""
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mountpoint)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def test_full_disk_pauses_intake_until_space_returns(
    gateway: Callable[..., GatewayProcess],
    mosquitto: Endpoint,
    run_id: str,
    tmp_path: Path,
    small_disk: Path,
) -> None:
    """Another process fills the disk under a buffer whose budget is far from full: intake
    pauses (no crash, nothing acknowledged lost) and resumes once there is space again."""
    db = backends.start_victoria_metrics(tmp_path / "vm")
    gw = None
    try:
        gw = gateway(
            f'url = "{db.url}"\napi = "v2"\norg = "o"\nbucket = "b"',
            flush="linger_s = 0.1\nretry_max_s = 1\n",
            buffer=f'path = "{small_disk / "buffer"}"\ncapacity = "1GiB"\n',
        )
        db.kill()
        filler = small_disk / "filler"
        free = shutil.disk_usage(small_disk).free
        # The journal takes about 20 bytes a reading: 40,000 readings need three times what is
        # left free.
        filler.write_bytes(b"\0" * (free - (256 << 10)))
        count = 40_000
        publisher = publish_in_background(mosquitto.port, run_id, count)
        wait_for(lambda: gw.metrics()["gateway_intake_paused"] == 1, 60, "intake to pause")
        m = assert_identities(gw)
        assert m["gateway_intake_pauses_total{cause=disk_full}"] >= 1
        assert m["gateway_readings_total{outcome=accepted}"] < count
        assert "disk full" in gw.log()
        filler.unlink()
        publisher.join(timeout=60)
        wait_for(
            lambda: gw.metrics()["gateway_readings_total{outcome=accepted}"] >= count,
            60,
            "intake to resume and take every reading",
        )
        db = backends.start_victoria_metrics(db.workdir, port=db.port)
        wait_for(
            lambda: assert_identities(gw)["gateway_buffer_readings"] == 0, 90, "the buffer to drain"
        )
        assert len(distinct_points(db, run_id)) == count
    finally:
        if gw is not None:
            gw.kill()
        db.stop()
