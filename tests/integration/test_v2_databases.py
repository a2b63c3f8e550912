"""The v2 write API into each database that serves it, with a real org, bucket and token, and
InfluxDB 3's own write API.

VictoriaMetrics runs on every backend; InfluxDB 2.7 and InfluxDB 3 Core only as containers
(GATEWAY_TEST_SERVERS=docker): Debian packages neither.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING

import pytest

from gateway.tools import servers
from tests import backends
from tests.gatewayproc import publish_messages, publish_simulated, wait_for

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from tests.conftest import Endpoint
    from tests.gatewayproc import GatewayProcess

pytestmark = pytest.mark.integration

READINGS, DEVICES = 2000, 10
ORG, BUCKET, TOKEN = "edge", "telemetry", "gateway-tests-token-0123456789"


def post(url: str, body: bytes, headers: dict[str, str]) -> bytes:
    request = urllib.request.Request(url, body, headers, method="POST")  # noqa: S310 - loopback
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        data: bytes = response.read()
        return data


def flux_count(url: str, org: str, token: str, flux: str) -> int:
    """The single number a Flux `count()` query answers on InfluxDB 2.x (0 for no rows)."""
    answer = post(
        f"{url}/api/v2/query?org={org}",
        json.dumps({"query": flux, "type": "flux"}).encode(),
        {"Authorization": f"Token {token}", "Content-Type": "application/json"},
    ).decode()
    rows = [row.split(",") for row in answer.splitlines() if row and not row.startswith(",result")]
    return int(rows[0][-1]) if rows else 0


def count_influxdb2(url: str, run_id: str) -> int:
    flux = (
        f'from(bucket: "{BUCKET}") |> range(start: 0) |> filter(fn: (r) => r.run == "{run_id}" '
        'and r._field == "temp") |> group() |> count()'
    )
    return flux_count(url, ORG, TOKEN, flux)


def count_influxdb3(url: str, run_id: str) -> int:
    query = urllib.parse.urlencode(
        {"db": BUCKET, "q": f"SELECT count(temp) AS n FROM telemetry WHERE run = '{run_id}'"}
    )
    with urllib.request.urlopen(f"{url}/api/v3/query_sql?{query}&format=json", timeout=30) as r:  # noqa: S310
        rows = json.loads(r.read())
    return int(rows[0]["n"]) if rows else 0


def count_victoria(url: str, run_id: str) -> int:
    exported = servers.victoria_export(url, f'{{__name__="telemetry_temp",run="{run_id}"}}')
    return sum(len(series["timestamps"]) for series in exported)


@pytest.fixture(params=["victoria-metrics", "influxdb-2.7", "influxdb-3-core"])
def v2_database(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, Callable[[str], int]]]:
    """(the [influx] table, a counter of this run's points) of one v2 database."""
    name = request.param
    if name != "victoria-metrics" and backends.BACKEND != "docker":
        pytest.skip(f"{name} runs only as a container ({backends.BACKEND_ENV}=docker)")
    port = servers.free_port()
    ready = servers.http_ok(f"http://127.0.0.1:{port}/ping")
    if name == "victoria-metrics":
        db = backends.start_victoria_metrics(tmp_path / "db", port)
        count = count_victoria
    elif name == "influxdb-2.7":
        spec = backends.influxdb2_spec(tmp_path / "db", port, ORG, BUCKET, TOKEN)
        db = backends.run_container(name, spec, port, tmp_path / "db", ready)
        count = count_influxdb2
    else:
        spec = backends.influxdb3_spec(tmp_path / "db", port)
        db = backends.run_container(name, spec, port, tmp_path / "db", ready)
        count = count_influxdb3
    token_file = tmp_path / "influx-token"
    token_file.write_text(TOKEN)
    table = (
        f'url = "{db.url}"\napi = "v2"\norg = "{ORG}"\nbucket = "{BUCKET}"\n'
        f'token_file = "{token_file}"'
    )
    try:
        yield table, lambda run_id: count(db.url, run_id)
    finally:
        db.stop()


def test_every_reading_lands_through_the_v2_api(
    gateway: Callable[..., GatewayProcess],
    mosquitto: Endpoint,
    run_id: str,
    v2_database: tuple[str, Callable[[str], int]],
) -> None:
    table, count = v2_database
    gw = gateway(table)
    publish_simulated(mosquitto.port, run_id, READINGS, DEVICES)
    wait_for(lambda: gw.readings("delivered") == READINGS, 60, "every reading delivered")
    wait_for(lambda: count(run_id) == READINGS, 30, "every point readable in the database")
    assert gw.readings("dead_lettered") == 0


def test_api_v3_stores_the_batch_and_dead_letters_only_the_refused_line(
    gateway: Callable[..., GatewayProcess], mosquitto: Endpoint, run_id: str, tmp_path: Path
) -> None:
    """A reading whose field changes type is refused alone, with InfluxDB 3's reason; the
    readings around it in the same batch land, in one partial write."""
    if backends.BACKEND != "docker":
        pytest.skip(f"InfluxDB 3 Core runs only as a container ({backends.BACKEND_ENV}=docker)")
    port = servers.free_port()
    spec = backends.influxdb3_spec(tmp_path / "db", port)
    ready = servers.http_ok(f"http://127.0.0.1:{port}/ping")
    db = backends.run_container("influxdb-3-core", spec, port, tmp_path / "db", ready)
    try:
        gw = gateway(f'url = "{db.url}"\napi = "v3"\ndatabase = "{BUCKET}"')
        topic = f"{run_id}/dev-1/telemetry"
        publish_messages(mosquitto.port, [(topic, json.dumps({"temp": 1.5}))])
        wait_for(lambda: count_influxdb3(db.url, run_id) == 1, 60, "the first reading stored")
        readings = [json.dumps({"temp": 2.5 + n}) for n in range(READINGS)]
        readings[READINGS // 2] = json.dumps({"temp": "a string now"})
        publish_messages(mosquitto.port, [(topic, r) for r in readings])
        wait_for(
            lambda: gw.readings("delivered") + gw.readings("dead_lettered") == READINGS + 1,
            60,
            "every reading delivered or dead-lettered",
        )
        assert gw.readings("dead_lettered") == 1
        assert count_influxdb3(db.url, run_id) == READINGS
        assert gw.metrics().get("gateway_writes_total{result=partial}", 0) >= 1
        assert "invalid column type" in gw.log()
    finally:
        db.stop()
