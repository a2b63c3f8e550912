"""deploy/compose.yaml brought up whole: readings published to its broker land in its InfluxDB.

Needs a Docker engine with compose (GATEWAY_TEST_SERVERS=docker); the stack binds its
documented ports (1883, 8086, 9108, 9090, 3000), so nothing else may hold them.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.tools import simulate
from tests import backends
from tests.gatewayproc import simulated_plan, wait_for
from tests.integration.test_v2_databases import flux_count

pytestmark = pytest.mark.integration

DEPLOY = Path(__file__).parents[2] / "deploy"
TOKEN = "compose-smoke-token-0123456789"
READINGS = 500
LAND_TIMEOUT_S = 180


def compose(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", "compose", "-f", str(project / "compose.yaml"), "-p", "gateway-smoke", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )


def landed(run_id: str) -> int:
    flux = (
        'from(bucket: "telemetry") |> range(start: 0) '
        f'|> filter(fn: (r) => r.device =~ /^{run_id}/ and r._field == "temp") '
        "|> group() |> count()"
    )
    try:
        return flux_count("http://127.0.0.1:8086", "edge", TOKEN, flux)
    except OSError:
        return 0


def test_the_compose_stack_lands_readings(tmp_path: Path, run_id: str) -> None:
    if backends.BACKEND != "docker" or shutil.which("docker") is None:
        pytest.skip(f"needs a Docker engine with compose ({backends.BACKEND_ENV}=docker)")
    project = tmp_path / "deploy"
    shutil.copytree(DEPLOY, project)
    (project / "influx-token").write_text(TOKEN)
    (project / "grafana-admin-password").write_text("compose-smoke-grafana")
    # The build context is the repository, one level above deploy/.
    text = (project / "compose.yaml").read_text()
    (project / "compose.yaml").write_text(text.replace("context: ..", f"context: {DEPLOY.parent}"))
    up = compose(project, "up", "-d", "--build", "--wait")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        plan = simulated_plan(1883, run_id, READINGS, 5)
        plan = dataclasses.replace(plan, topic=f"sensors/{run_id}-{{device}}/telemetry")
        assert simulate.run(plan).published == READINGS
        wait_for(lambda: landed(run_id) >= READINGS, LAND_TIMEOUT_S, "the readings in InfluxDB")
        assert landed(run_id) == READINGS
    finally:
        compose(project, "down", "-v", "--remove-orphans")
