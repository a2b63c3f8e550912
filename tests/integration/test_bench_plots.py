"""`gateway bench --plot DIR`: charts drawn from a small real run, beside its JSON; profiles."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from gateway.tools import servers
from gateway.tools.measure import Gateway
from tests.unit.config.test_config import CONFIG_DIR

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.integration

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_bench_draws_throughput_lag_backlog_memory_and_append_charts(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    plots = tmp_path / "plots"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "bench",
            *("--scenario", "append", "--scenario", "end-to-end", "--scenario", "backlog"),
            *("--runs", "1", "--duration", "4", "--rate", "1000", "--backlog", "20000"),
            *("--plot", str(plots), "--json", str(tmp_path / "bench.json")),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("end-to-end.png", "backlog.png", "append.png"):
        path = plots / name
        assert f"bench: plot {path}" in result.stderr
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC), name
        assert len(data) > 10_000, f"{name} holds a chart"
    figures = json.loads((tmp_path / "bench.json").read_text())
    (end_to_end,) = [v for k, v in figures["timelines"].items() if k.startswith("end-to-end")]
    times = [row[0] for row in end_to_end[0]]
    assert times == sorted(times)
    assert end_to_end[0][-1][1] == 4000, "the timeline ends with every reading delivered"
    (backlog,) = [v for k, v in figures["timelines"].items() if k.startswith("backlog")]
    assert max(row[1] for row in backlog[0]) == 20000


def test_a_profile_with_workers_is_waited_for_until_each_connects(tmp_path: Path) -> None:
    """A profile running two workers is measured once both are connected, not after the first."""
    profile = tmp_path / "two-workers.toml"
    small_box = (CONFIG_DIR / "small-box.toml").read_text()
    assert "\nworkers = 1\n" in small_box
    profile.write_text(small_box.replace("\nworkers = 1\n", "\nworkers = 2\n"))
    broker = servers.start_mosquitto(tmp_path / "mosquitto")
    try:
        gateway = Gateway(tmp_path, broker.port, "commit", profile=profile)
        try:
            assert gateway.metric("gateway_mqtt_connected") == 2
        finally:
            gateway.stop()
    finally:
        broker.stop()
