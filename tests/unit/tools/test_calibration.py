"""The benchmark's host calibration: the host described, and two timings taken for real."""

from __future__ import annotations

from gateway.tools.calibration import calibrate, render


def test_the_calibration_times_the_reference_work_and_the_disk() -> None:
    """A small calibration still decodes, packs and fsyncs, and says so in its first lines."""
    host = calibrate(reference_readings=200, fsync_samples=5)
    assert host["cpus"] >= 1
    assert host["reference_ms"] > 0
    assert 0 < host["fsync_p50_ms"] <= host["fsync_p99_ms"]
    assert host["libraries"]["lmdb"] != "not installed"
    text = render(host)
    assert "200 readings" in text
    assert f"{host['fsync_p50_ms']:.2f} ms" in text
