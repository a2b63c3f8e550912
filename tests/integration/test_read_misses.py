"""Misses of the read API against a real InfluxDB 1.x, queries counted at the database's door.

A relay in front of influxd (tests/fault/relay.py) counts the queries that reach it and holds
them, so the test sees how many misses read the database while others arrive.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import urllib.parse
from typing import TYPE_CHECKING

import aiohttp
import pytest

from tests.fault.relay import FaultyRelay
from tests.gatewayproc import publish_messages, wait_for
from tests.integration.test_read_api import latest, reading

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.conftest import Endpoint, InfluxV1
    from tests.gatewayproc import GatewayProcess

pytestmark = pytest.mark.integration

NAMES = 500
MAX_READS = 4  # [api] max_database_reads, the default
DEADLINE_S = 30.0


async def ask_all(base_url: str, names: list[str], relay: FaultyRelay) -> list[tuple[int, str]]:
    """GET the latest of every name at once; the held queries are let go once the rest answered.

    (status, Retry-After) of each answer, in the order of `names`.
    """

    async def ask(session: aiohttp.ClientSession, name: str) -> tuple[int, str]:
        url = f"{base_url}/api/v1/devices/{urllib.parse.quote(name, safe='')}/latest"
        async with session.get(url) as response:
            await response.read()
            return response.status, response.headers.get("Retry-After", "")

    connector = aiohttp.TCPConnector(limit=64)
    timeout = aiohttp.ClientTimeout(total=DEADLINE_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = [asyncio.ensure_future(ask(session, name)) for name in names]
        deadline = time.monotonic() + DEADLINE_S
        while sum(t.done() for t in tasks) < len(names) - MAX_READS:
            assert time.monotonic() < deadline, "the misses beyond the bound were not answered"
            await asyncio.sleep(0.02)
        relay.queries_open.set()
        return list(await asyncio.gather(*tasks))


def test_random_names_cost_a_bounded_number_of_queries_and_a_repeat_none(
    gateway: Callable[..., GatewayProcess], influx: InfluxV1
) -> None:
    """500 unknown names at once: 4 reach the database, the rest get 503 + Retry-After; a name
    the database did not know is then answered 404 from memory, without a query."""
    relay = FaultyRelay(urllib.parse.urlsplit(influx.url).port or 8086)
    try:
        gw = gateway(f'url = "{relay.url}"\napi = "v1"\ndatabase = "{influx.database}"')
        names = [f"nobody-{secrets.token_hex(6)}" for _ in range(NAMES)]
        relay.queries_open.clear()
        answers = asyncio.run(ask_all(gw.base_url, names, relay))
        codes = [code for code, _ in answers]
        assert codes.count(404) == MAX_READS
        assert codes.count(503) == NAMES - MAX_READS
        assert {after for code, after in answers if code == 503} == {"1"}
        assert relay.queries == MAX_READS
        read = [name for name, (code, _) in zip(names, answers, strict=True) if code == 404]
        assert [gw.get(f"/api/v1/devices/{name}/latest")[0] for name in read] == [404] * MAX_READS
        assert relay.queries == MAX_READS  # the repeats were answered from memory
        refused = next(name for name, (code, _) in zip(names, answers, strict=True) if code == 503)
        assert gw.get(f"/api/v1/devices/{refused}/latest")[0] == 404
        wait_for(lambda: relay.queries == MAX_READS + 1, 5, "a refused name to be read now")
    finally:
        relay.close()


def test_a_database_that_refuses_the_flux_query_is_a_502_not_a_server_error(
    gateway: Callable[..., GatewayProcess], influx: InfluxV1
) -> None:
    """InfluxDB 1.x has no Flux endpoint: its HTTP error is the read API's 502, and the slot
    of the read is given back (a later miss reads the database again, not a 503)."""
    gw = gateway(influx.config, metrics_extra='\n[api]\ndatabase_query = "flux"\n')
    for _ in range(MAX_READS + 1):
        code, body = gw.get("/api/v1/devices/nobody/latest")
        assert code == 502
        assert "flux query answered HTTP 404" in str(body["error"])  # type: ignore[index]
    assert "Error handling request" not in gw.log()


def test_a_device_the_gateway_holds_is_not_cached_as_unknown(
    gateway: Callable[..., GatewayProcess], mosquitto: Endpoint, influx: InfluxV1, run_id: str
) -> None:
    """A buffered device whose series left the last-value table (it keeps `latest_series`)
    misses to a database that has nothing yet: a 404 then, but not remembered, so once the
    readings are delivered the next request finds them instead of a cached 404."""
    gw = gateway(influx.config, flush="linger_s = 5\n", api="latest_series = 1\n")
    now_ms = time.time_ns() // 10**6
    publish_messages(mosquitto.port, [reading(run_id, "early", now_ms, 1.5)])
    publish_messages(mosquitto.port, [reading(run_id, "later", now_ms, 2.5)])
    wait_for(lambda: gw.readings("accepted") == 2, 10, "both readings accepted")
    assert latest(gw, "early")[0] == 404  # evicted by "later", and not in the database yet
    wait_for(lambda: influx.count() == 2, 30, "both readings delivered")
    code, body = latest(gw, "early")
    assert (code, body.get("source")) == (200, "database")
