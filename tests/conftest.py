"""Shared fixtures: real servers for the whole session, fresh state per test.

Servers come from their binaries on PATH (scripts/test installs them), each on a free loopback
port; from containers with GATEWAY_TEST_SERVERS=docker (tests/backends.py); or from the
environment: GATEWAY_TEST_MQTT (host:port), GATEWAY_TEST_INFLUXDB_V1_URL (an
InfluxDB 1.x) and GATEWAY_TEST_V2_URL (a VictoriaMetrics: tests read back through its export API).
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from gateway.tools import servers
from tests import backends
from tests.gatewayproc import GatewayProcess, config_text, stored_points

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from tests.gatewayproc import Points


def pytest_report_header() -> str:
    """Which backend the servers come from, first in the output."""
    return f"test servers: {backends.BACKEND} ({backends.BACKEND_ENV})"


@pytest.fixture
def anyio_backend() -> str:
    """The gateway runs on asyncio (aiomqtt, aiohttp); trio, installed for selenium, is not one."""
    return "asyncio"


@pytest.fixture(autouse=True)
def _fail_on_logged_error(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """An ERROR record in the test process is a bug unless the test expects it."""
    yield
    errors = [r for r in caplog.get_records("call") if r.levelno >= logging.ERROR]
    if errors and not getattr(caplog, "errors_expected", False):
        pytest.fail(f"logged at ERROR: {errors[0].getMessage()}")


@dataclass(frozen=True)
class Endpoint:
    """Where a server listens."""

    host: str
    port: int

    @property
    def url(self) -> str:
        """HTTP base URL."""
        return f"http://{self.host}:{self.port}"


@pytest.fixture(scope="session")
def servers_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("servers")


@contextlib.contextmanager
def server_or_env(
    variable: str, start: Callable[[Path], servers.Server], workdir: Path
) -> Iterator[str]:
    """The address in `variable` when set, else that of a server started (and stopped) here."""
    if variable in os.environ:
        yield os.environ[variable]
        return
    server = start(workdir)
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mosquitto(servers_dir: Path) -> Iterator[Endpoint]:
    with server_or_env(
        "GATEWAY_TEST_MQTT", backends.start_mosquitto, servers_dir / "mosquitto"
    ) as address:
        host, _, port = address.removeprefix("http://").rpartition(":")
        yield Endpoint(host, int(port))


@pytest.fixture(scope="session")
def influxd_url(servers_dir: Path) -> Iterator[str]:
    with server_or_env(
        "GATEWAY_TEST_INFLUXDB_V1_URL", backends.start_influxd, servers_dir / "influxd"
    ) as url:
        yield url


@pytest.fixture(scope="session")
def victoria_url(servers_dir: Path) -> Iterator[str]:
    with server_or_env(
        "GATEWAY_TEST_V2_URL", backends.start_victoria_metrics, servers_dir / "victoria-metrics"
    ) as url:
        yield url


@pytest.fixture
def own_victoria(tmp_path: Path) -> Iterator[servers.Server]:
    """A VictoriaMetrics of this test's own, which the test may stop and start again."""
    db = backends.start_victoria_metrics(tmp_path / "vm")
    try:
        yield db
    finally:
        db.stop()


@pytest.fixture
def restartable_victoria(tmp_path: Path) -> Iterator[list[servers.Server]]:
    """A VictoriaMetrics of this test's own; the test appends the one it starts again on its data.

    Every server in the list is stopped afterwards.
    """
    started = [backends.start_victoria_metrics(tmp_path / "vm")]
    yield started
    for server in started:
        server.stop()


@pytest.fixture
def run_id() -> str:
    """A name unique to this test, for its database, topics and tags."""
    return f"t{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class InfluxV1:
    """A database of this test's own on the session's InfluxDB 1.x."""

    url: str
    database: str

    @property
    def config(self) -> str:
        """The body of an [influx] table that writes here."""
        return f'url = "{self.url}"\napi = "v1"\ndatabase = "{self.database}"'

    def query(self, statement: str) -> list[dict[str, Any]]:
        """The series of an InfluxQL statement on this database."""
        return servers.influxql(self.url, statement, self.database)

    def points(self) -> Points:
        """(device, ts ms) -> fields of the simulated readings stored (tests.gatewayproc)."""
        return stored_points(self.query('SELECT "temp", "hum", "device" FROM "telemetry"'))

    def count(self, field: str = "temp", measurement: str = "telemetry") -> int:
        """How many points hold `field`."""
        series = self.query(f'SELECT count("{field}") FROM "{measurement}"')
        return int(series[0]["values"][0][1]) if series else 0


@pytest.fixture
def influx(influxd_url: str, run_id: str) -> Iterator[InfluxV1]:
    """A fresh InfluxDB 1.x database for this test, dropped afterwards."""
    servers.influxql(influxd_url, f"CREATE DATABASE {run_id}")
    yield InfluxV1(influxd_url, run_id)
    servers.influxql(influxd_url, f"DROP DATABASE {run_id}")


JSON_SUBSCRIPTION = """
[[mqtt.subscriptions]]
topic = "{run}/{{device}}/{{measurement}}"
qos = 1
format = "json"
tags = {{ run = "{run}" }}
"""


@pytest.fixture
def gateway(
    tmp_path: Path, mosquitto: Endpoint, run_id: str
) -> Iterator[Callable[..., GatewayProcess]]:
    """Starts gateways for this test (each with its own buffer) and stops them all afterwards."""
    started: list[GatewayProcess] = []

    def start(
        influx: str,
        subscriptions: str | None = None,
        *,
        mqtt_port: int | None = None,
        env: dict[str, str] | None = None,
        wait_connected: bool = True,
        workers: int = 1,
        open_files: int | None = None,
        event_loop: str = "default",
        **kwargs: str,
    ) -> GatewayProcess:
        workdir = tmp_path / f"gateway-{len(started)}"
        workdir.mkdir()
        port = servers.free_port()
        text = config_text(
            mqtt_port=mqtt_port or mosquitto.port,
            buffer_dir=workdir / "buffer",
            influx=influx,
            metrics_port=port,
            client_id=f"gw-{run_id}",
            subscriptions=subscriptions or JSON_SUBSCRIPTION.format(run=run_id),
            **kwargs,
        )
        if workers > 1:
            text = text.replace("[mqtt]\n", f"[mqtt]\nworkers = {workers}\n", 1)
        process = GatewayProcess(workdir, text, port)
        process.connections = workers
        process.extra_env = env or {}
        process.open_files = open_files
        process.event_loop = event_loop
        started.append(process)
        return process.start(wait_connected=wait_connected)

    yield start
    for process in started:
        process.kill()
