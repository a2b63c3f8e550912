"""The read side of a cache miss: a device's newest point of each series, from the database.

Returned as line protocol (one line per series), the form the last-value table keeps. Three
query languages, by `[api] database_query`: InfluxQL (`/query`, InfluxDB 1.x), Flux (InfluxDB 2
and later, through influxdb-client) and the Prometheus query API (VictoriaMetrics, which stores
`measurement_field` as the metric name; the name is split at its first underscore, so a
measurement named with an underscore reads back split in the wrong place).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import aiohttp

from gateway.api.core import querytext
from gateway.errors import DecodeError, GatewayError
from gateway.flush.sink import import_client
from gateway.points.lineproto import encode_fields, encode_series
from gateway.points.model import Reading
from gateway.points.names import Names
from gateway.tls import client_context

if TYPE_CHECKING:
    from gateway.config.sections import ApiSettings, InfluxSettings
    from gateway.points.model import FieldValue

NS_PER_S = 10**9
NS_PER_MS = 10**6


class DatabaseReadError(GatewayError):
    """The database could not be asked, or did not answer as expected."""


Point = tuple[str, dict[str, str], dict[str, "FieldValue"], int]


async def latest_lines(influx: InfluxSettings, api: ApiSettings, device: str) -> list[bytes]:
    """The newest point of each series of `device` as line-protocol lines (empty: none).

    Raises:
        DatabaseReadError: naming what failed.
    """
    language = api.query_language(influx.api)
    try:
        if language == "influxql":
            points = await _influxql(influx, api, device)
        elif language == "prometheus":
            points = await _prometheus(influx, api, device)
        else:
            points = await _flux(influx, api, device)
    except (aiohttp.ClientError, TimeoutError, KeyError, IndexError, TypeError, ValueError) as exc:
        # TypeError: an answer of another shape than the query API's (a list for an object).
        raise DatabaseReadError(f"{language} query failed: {type(exc).__name__}: {exc}") from exc
    return [_line(kept) for point in points if (kept := _storable(point)) is not None]


# Names read back have not passed ingest's checks: held to the same (any length), so that a
# line the last-value table keeps splits and decodes as the lines of readings do.
_NAMES = Names(max_len=2**31)


def _storable(point: Point) -> Point | None:
    """The point without its empty tags; None when it holds what ingest would refuse.

    InfluxQL's GROUP BY * gives a series every tag key of its measurement, empty where the
    series has none.
    """
    measurement, tags, fields, ts_ns = point
    kept = tuple(sorted((key, value) for key, value in tags.items() if value != ""))
    try:
        _NAMES.check_series(measurement, kept)
        _NAMES.check_fields(Reading("", measurement, kept, tuple(fields.items()), ts_ns))
    except DecodeError:
        return None
    return measurement, dict(kept), fields, ts_ns


def _line(point: Point) -> bytes:
    measurement, tags, fields, ts_ns = point
    series = encode_series(measurement, tuple(sorted(tags.items())))
    return f"{series} {encode_fields(tuple(fields.items()))} {ts_ns}".encode()


def _session(influx: InfluxSettings, api: ApiSettings) -> aiohttp.ClientSession:
    ssl = client_context(influx.tls) if influx.url.startswith("https:") else None
    auth = None
    if influx.username and influx.password:
        auth = aiohttp.BasicAuth(influx.username, influx.password.get_secret_value())
    headers = {"Authorization": f"Token {influx.token.get_secret_value()}"} if influx.token else {}
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=api.query_timeout_s),
        auth=auth,
        headers=headers,
        connector=aiohttp.TCPConnector(ssl=ssl) if ssl else None,
    )


async def _influxql(influx: InfluxSettings, api: ApiSettings, device: str) -> list[Point]:
    params = {
        "db": influx.database or "",
        "q": querytext.influxql_query(api.lookback_days),
        "params": querytext.influxql_params(device),
        "epoch": "ns",
    }
    if influx.retention_policy:
        params["rp"] = influx.retention_policy
    async with (
        _session(influx, api) as session,
        session.get(f"{influx.url}/query", params=params) as response,
    ):
        if response.status != 200:  # noqa: PLR2004
            raise DatabaseReadError(f"InfluxQL query answered {response.status}")
        body = await response.json()
    result = body["results"][0]
    if "error" in result:
        raise DatabaseReadError(f"InfluxQL: {result['error']}")
    points = []
    for series in result.get("series", []):
        columns, row = series["columns"], series["values"][0]
        fields = {
            name: value
            for name, value in zip(columns[1:], row[1:], strict=True)
            if value is not None
        }
        if fields:
            points.append((series["name"], dict(series.get("tags", {})), fields, int(row[0])))
    return points


async def _prometheus(influx: InfluxSettings, api: ApiSettings, device: str) -> list[Point]:
    selector = querytext.promql_selector(device, api.lookback_days)
    values = await _instant(influx, api, f"last_over_time({selector}) keep_metric_names")
    stamps = await _instant(influx, api, f"tlast_over_time({selector}) keep_metric_names")
    points = _Points()
    for labels, value in values.items():
        name = dict(labels)["__name__"]
        measurement, _, field = name.partition("_")
        tags = {k: v for k, v in labels if k != "__name__"}
        # Seconds as a float: exact to the millisecond, which is VictoriaMetrics' precision.
        ts_ns = round(stamps[labels] * 1000) * NS_PER_MS
        points.add(measurement, tags, field or name, value, ts_ns)
    return points.points()


async def _instant(
    influx: InfluxSettings, api: ApiSettings, query: str
) -> dict[tuple[tuple[str, str], ...], float]:
    async with (
        _session(influx, api) as session,
        session.get(f"{influx.url}/api/v1/query", params={"query": query}) as response,
    ):
        if response.status != 200:  # noqa: PLR2004
            raise DatabaseReadError(f"query API answered {response.status}")
        body: dict[str, Any] = await response.json()
    found = {}
    for item in body["data"]["result"]:
        value = float(item["value"][1])
        if math.isfinite(value):
            found[tuple(sorted(item["metric"].items()))] = value
    return found


async def _flux(influx: InfluxSettings, api: ApiSettings, device: str) -> list[Point]:
    # Imported here, off the event loop, as gateway/flush/sink.py does: only Flux reads need it.
    await import_client()
    from influxdb_client.client.exceptions import InfluxDBError  # noqa: PLC0415
    from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync  # noqa: PLC0415

    query = querytext.flux_query(influx.bucket or "", device, api.lookback_days)
    try:
        async with InfluxDBClientAsync(
            url=influx.url,
            token=influx.token.get_secret_value() if influx.token else "",
            org=influx.org or "",
            timeout=int(api.query_timeout_s * 1000),
            ssl_context=client_context(influx.tls) if influx.url.startswith("https:") else None,
        ) as client:
            tables = await client.query_api().query(query, org=influx.org or "")
    except InfluxDBError as exc:
        # The Flux client's own error for an HTTP error answer: its text is the whole answer,
        # headers and all, on several lines; the status and the database's message say enough.
        status = getattr(exc, "status", None) or getattr(exc.response, "status", "no")
        raise DatabaseReadError(
            f"flux query answered HTTP {status}: {str(exc.message)[:200]}"
        ) from exc
    points = _Points()
    for table in tables:
        for record in table.records:
            tags = {
                k: str(v)
                for k, v in record.values.items()
                if not k.startswith("_") and k not in {"result", "table"}
            }
            time = record.values["_time"]
            ts_ns = int(time.timestamp()) * NS_PER_S + time.microsecond * 1000
            field = str(record.values["_field"])
            points.add(
                str(record.values["_measurement"]), tags, field, record.values["_value"], ts_ns
            )
    return points.points()


class _Points:
    """Per-field answers gathered into one point per series, at its newest field's time."""

    def __init__(self) -> None:
        self._series: dict[tuple[str, tuple[tuple[str, str], ...]], Point] = {}

    def add(
        self, measurement: str, tags: dict[str, str], field: str, value: FieldValue, ts_ns: int
    ) -> None:
        key = (measurement, tuple(sorted(tags.items())))
        point = self._series.setdefault(key, (measurement, tags, {}, ts_ns))
        point[2][field] = value
        if ts_ns > point[3]:
            self._series[key] = (*point[:3], ts_ns)

    def points(self) -> list[Point]:
        return list(self._series.values())
