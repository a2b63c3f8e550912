"""`gateway bench --scenario long-outage --quick`: the scenario runs end to end and its figures
say what the policies promise."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from gateway.tools import longoutage

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.integration


def test_long_outage_quick_run_reports_coverage_errors_and_identities(tmp_path: Path) -> None:
    """A small long outage: drop_oldest leaves a hole, compact covers every window with exact
    min and max, both keep the files under the capacity and the identities exact, and the
    deadband stores a fraction of the simulator's slowly moving readings."""
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [
            *(sys.executable, "-m", "gateway", "bench", "--scenario", "long-outage", "--quick"),
            *("--runs", "1", "--outage-factor", "2", "--json", str(out)),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    figures = json.loads(out.read_text())

    def figure(run: str, name: str) -> float:
        value: float = figures[f"long-outage quick x2 {run} {name}"]
        return value

    capacity = longoutage.QUICK.capacity_bytes
    for run in ("drop_oldest", "compact", "compact+deadband"):
        assert figure(run, "identities_exact") == 1, run
        assert figure(run, "raw_points_wrong") == 0, run
        assert 0 < figure(run, "max_file_bytes") <= capacity, run
        assert figure(run, "drain_s") > 0, run
    assert figure("drop_oldest", "coverage_share") < 1
    assert figure("drop_oldest", "dropped") > 0
    assert figure("compact", "coverage_share") == 1
    assert figure("compact", "summary_points") > 0
    assert figure("compact", "max_abs_err_min") == figure("compact", "max_abs_err_max") == 0
    assert figure("compact", "summary_windows_count_off") == 0
    assert figure("compact", "dropped") == 0
    # A band of 0.3 on readings 0.1 apart keeps about one in three.
    assert 0.2 < figure("compact+deadband", "stored_per_received") < 0.45
    assert "long-outage quick x2 compact coverage_share" in result.stdout
