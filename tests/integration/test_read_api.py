"""The read API against real servers: read-your-writes before the database has them, misses
read through from InfluxDB 1.x (InfluxQL) and VictoriaMetrics (its query API), and every answer
conforming to the OpenAPI document the gateway serves."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING, Any

import pytest

from gateway.api import apispec
from gateway.tools import servers
from tests import backends
from tests.gatewayproc import publish_messages, wait_for

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.conftest import Endpoint, InfluxV1
    from tests.gatewayproc import GatewayProcess

pytestmark = pytest.mark.integration


def reading(run_id: str, device: str, ts_ms: int, temp: float) -> tuple[str, str]:
    return f"{run_id}/{device}/telemetry", json.dumps({"ts": ts_ms, "temp": temp, "hum": 40.5})


def latest(gw: GatewayProcess, device: str) -> tuple[int, dict[str, Any]]:
    return gw.get(f"/api/v1/devices/{urllib.parse.quote(device, safe='')}/latest")


def only_measurement(body: dict[str, Any]) -> dict[str, Any]:
    (measurement,) = body["measurements"]
    return measurement


def victoria_config(url: str) -> str:
    return f'url = "{url}"\napi = "v2"\norg = "edge"\nbucket = "telemetry"'


API_PROMETHEUS = '\n[api]\ndatabase_query = "prometheus"\n'


def test_a_reading_is_read_back_buffered_then_delivered(
    gateway: Callable[..., GatewayProcess],
    mosquitto: Endpoint,
    own_victoria: servers.Server,
    run_id: str,
) -> None:
    """Database stopped: the newest reading is served at once, marked buffered; once the
    database is back and the flush is done, it is marked delivered. A late, older reading does
    not replace it."""
    gw = gateway(victoria_config(own_victoria.url), metrics_extra=API_PROMETHEUS)
    own_victoria.stop()
    now_ms = time.time_ns() // 10**6
    publish_messages(
        mosquitto.port,
        [
            reading(run_id, "pump-1", now_ms - 2000, 20.0),
            reading(run_id, "pump-1", now_ms, 21.5),
            reading(run_id, "pump-1", now_ms - 1000, 19.0),  # late
        ],
    )
    wait_for(lambda: gw.readings("accepted") == 3, 10, "3 readings accepted")
    code, body = latest(gw, "pump-1")
    assert (code, body["source"]) == (200, "cache")
    m = only_measurement(body)
    assert (m["measurement"], m["state"], m["time_ns"]) == ("telemetry", "buffered", now_ms * 10**6)
    assert m["fields"] == {
        "temp": {"value": 21.5, "state": "buffered"},
        "hum": {"value": 40.5, "state": "buffered"},
    }
    assert m["tags"] == {"device": "pump-1", "run": run_id}
    code, listed = gw.get("/api/v1/devices")
    assert code == 200
    (row,) = [d for d in listed["devices"] if d["device"] == "pump-1"]
    assert row["buffered_readings"] == 3
    assert row["last_seen"] is not None

    back = backends.start_victoria_metrics(own_victoria.workdir, port=own_victoria.port)
    try:
        wait_for(lambda: gw.metrics()["gateway_buffer_readings"] == 0, 60, "the flush")
        code, body = latest(gw, "pump-1")
        m = only_measurement(body)
        assert (code, body["source"], m["state"]) == (200, "cache", "delivered")
        assert m["fields"]["temp"] == {"value": 21.5, "state": "delivered"}
    finally:
        back.stop()


def test_a_miss_is_read_from_influxdb_then_served_from_the_cache(
    gateway: Callable[..., GatewayProcess], mosquitto: Endpoint, influx: InfluxV1, run_id: str
) -> None:
    """A gateway with a fresh buffer knows nothing of a device another one delivered: the
    first request reads InfluxDB (InfluxQL), the next one is served from the cache."""
    first = gateway(influx.config)
    now_ms = time.time_ns() // 10**6
    publish_messages(
        mosquitto.port,
        [
            reading(run_id, "valve-7", now_ms - 1000, 18.25),
            reading(run_id, "valve-7", now_ms, 18.5),
        ],
    )
    wait_for(lambda: influx.count() == 2, 30, "2 points in InfluxDB")
    assert first.stop() == 0
    # Another writer's device with a tag valve-7 lacks: InfluxQL's GROUP BY * then gives
    # valve-7's series that tag, empty, which no reading of valve-7 has.
    request = urllib.request.Request(  # noqa: S310 - loopback
        f"{influx.url}/write?db={influx.database}",
        f"telemetry,device=other,room=r temp=1 {now_ms * 10**6}".encode(),
        method="POST",
    )
    urllib.request.urlopen(request, timeout=10).close()  # noqa: S310

    fresh = gateway(influx.config)
    code, body = latest(fresh, "valve-7")
    assert (code, body["source"]) == (200, "database")
    m = only_measurement(body)
    assert (m["state"], m["time_ns"]) == ("delivered", now_ms * 10**6)
    assert {k: v["value"] for k, v in m["fields"].items()} == {"temp": 18.5, "hum": 40.5}
    assert m["tags"] == {"device": "valve-7", "run": run_id}
    code, again = latest(fresh, "valve-7")
    assert (code, again["source"]) == (200, "cache")
    assert again["measurements"] == body["measurements"]
    code, missing = latest(fresh, "no-such-device")
    assert code == 404
    assert "no-such-device" in missing["error"]


def test_a_miss_is_read_from_victoria_metrics(
    gateway: Callable[..., GatewayProcess],
    mosquitto: Endpoint,
    own_victoria: servers.Server,
    run_id: str,
) -> None:
    """The same read-through with VictoriaMetrics and its query API."""
    first = gateway(victoria_config(own_victoria.url), metrics_extra=API_PROMETHEUS)
    now_ms = time.time_ns() // 10**6
    publish_messages(mosquitto.port, [reading(run_id, "meter-3", now_ms, 7.75)])
    wait_for(lambda: first.readings("delivered") == 1, 30, "the point delivered")
    assert first.stop() == 0
    # VictoriaMetrics shows a point to queries a while after taking it: without the negative
    # cache, each poll below asks the database again.
    no_miss_cache = API_PROMETHEUS + "miss_cache_s = 0\n"
    fresh = gateway(victoria_config(own_victoria.url), metrics_extra=no_miss_cache)

    def from_database() -> dict[str, Any] | None:
        servers.victoria_export(own_victoria.url, '{device="meter-3"}')  # flushes its buffers
        code, body = latest(fresh, "meter-3")
        return body if code == 200 else None

    body = wait_for(from_database, 30, "the database to answer")
    assert isinstance(body, dict)
    assert body["source"] == "database"
    m = only_measurement(body)
    assert (m["measurement"], m["time_ns"]) == ("telemetry", now_ms * 10**6)
    assert {k: v["value"] for k, v in m["fields"].items()} == {"temp": 7.75, "hum": 40.5}
    assert latest(fresh, "meter-3")[1]["source"] == "cache"


def test_status_answers_with_runtime_state(
    gateway: Callable[..., GatewayProcess], influx: InfluxV1
) -> None:
    gw = gateway(influx.config)
    code, body = gw.get("/api/v1/status?top=5")
    assert code == 200
    assert body["runtime"]["mqtt_connected"] is True
    assert body["runtime"]["sink"]["state"] == "ok"
    assert body["runtime"]["admission"]["policy"] == "reject"
    assert gw.get("/api/v1/status?top=-1")[0] == 400
    code, document = gw.get("/api/v1/openapi.json")
    assert (code, document) == (200, json.loads(json.dumps(apispec.DOCUMENT)))
    # `gateway status` shows the same figures, with the service's own while it runs.
    assert "database ok, intake taking readings" in gw.cli("status")
    assert json.loads(gw.cli("status", "--json"))["runtime"]["sink"]["state"] == "ok"
    assert gw.stop() == 0
    assert "read from disk" in gw.cli("status")
    assert "runtime" not in json.loads(gw.cli("status", "--json"))


def test_the_openapi_document_is_valid() -> None:
    from openapi_spec_validator import validate  # noqa: PLC0415

    validate(apispec.DOCUMENT)


def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    gateway: Callable[..., GatewayProcess], mosquitto: Endpoint, influx: InfluxV1, run_id: str
) -> None:
    """Property test of every operation from the document the gateway serves: generated
    devices (any text) and parameters never get a 5xx or an answer the document does not
    describe. One device has readings, so the 200 answers are checked too."""
    import schemathesis  # noqa: PLC0415
    from hypothesis import HealthCheck, given, settings  # noqa: PLC0415
    from schemathesis.checks import not_a_server_error  # noqa: PLC0415
    from schemathesis.specs.openapi.checks import (  # noqa: PLC0415
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    gw = gateway(influx.config)
    publish_messages(mosquitto.port, [reading(run_id, "known", time.time_ns() // 10**6, 1.5)])
    wait_for(lambda: gw.readings("accepted") == 1, 10, "a reading")
    schema = schemathesis.openapi.from_url(f"{gw.base_url}/api/v1/openapi.json")
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    tried = 0
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(
            max_examples=150,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def check(case: Any) -> None:
            nonlocal tried
            tried += 1
            case.call_and_validate(base_url=gw.base_url, checks=checks)

        check()
    assert tried >= 4 * 10
    code, body = latest(gw, "known")
    assert (code, body["source"]) == (200, "cache")


def test_with_workers_the_parent_merges_the_workers_answers(
    gateway: Callable[..., GatewayProcess],
    mosquitto: Endpoint,
    own_victoria: servers.Server,
    run_id: str,
) -> None:
    """Two workers share one device's readings: the parent's API adds the backlogs and serves
    the newest reading, whichever worker took it."""
    gw = gateway(victoria_config(own_victoria.url), workers=2, metrics_extra=API_PROMETHEUS)
    own_victoria.stop()
    now_ms = time.time_ns() // 10**6
    count = 200
    publish_messages(
        mosquitto.port, [reading(run_id, "fan-2", now_ms - count + i, i) for i in range(count)]
    )
    wait_for(lambda: gw.readings("accepted") == count, 20, "200 readings accepted")
    assert all(n > 0 for n in gw.per_worker("gateway_readings_total{outcome=accepted}").values())
    code, body = latest(gw, "fan-2")
    m = only_measurement(body)
    assert (code, body["source"], m["state"]) == (200, "cache", "buffered")
    assert (m["time_ns"], m["fields"]["temp"]["value"]) == ((now_ms - 1) * 10**6, count - 1)
    code, listed = gw.get("/api/v1/devices")
    assert code == 200
    assert [d["buffered_readings"] for d in listed["devices"] if d["device"] == "fan-2"] == [count]
    code, view = gw.get("/api/v1/status")
    assert (code, view["readings"], view["runtime"]["readings"]["accepted"]) == (200, count, count)
    wait_for(
        lambda: gw.get("/api/v1/status")[1]["runtime"]["sink"]["state"] == "failing",
        20,
        "the sink to be failing",
    )
    code, missing = latest(gw, "nobody")  # a miss, and the database is down
    assert code == 502
    assert "database read failed" in missing["error"]
    assert json.loads(gw.cli("status", "--json"))["runtime"]["readings"]["accepted"] == count
    # The status page and its lists, merged by the parent.
    publish_messages(mosquitto.port, [(f"{run_id}/bad/telemetry", "{not json")])
    wait_for(lambda: gw.get("/api/v1/rejects")[1]["rejects"], 20, "the reject in the list")
    code, rejects = gw.get("/api/v1/rejects?limit=5")
    assert code == 200
    assert [r["topic"] for r in rejects["rejects"]] == [f"{run_id}/bad/telemetry"]
    assert gw.get("/api/v1/dead-letters") == (200, {"count": 0, "dead_letters": []})
    assert gw.get("/api/v1/dead-letters?limit=x")[0] == 400
    with urllib.request.urlopen(gw.base_url + "/", timeout=5) as page:  # noqa: S310 - loopback
        assert b"gateway status" in page.read()
