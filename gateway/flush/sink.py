"""Writes to InfluxDB: the v2 API through influxdb-client, the v1 `/write` endpoint through aiohttp.

InfluxDB 3's native write is gateway/flush/sinkv3.py.

`classify` is the pure rule that turns a response into an outcome; the rest translates library
exceptions into `SinkError`s in one place, so the flusher sees only our own errors.
"""

from __future__ import annotations

import importlib
import logging
import sys
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import anyio.to_thread

from gateway.errors import SinkAuthError, SinkError, SinkRejected, SinkUnavailable
from gateway.tls import client_context

if TYPE_CHECKING:
    from collections.abc import Mapping

    from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync
    from influxdb_client.service.write_service import WriteService

    from gateway.config.sections import InfluxSettings

logger = logging.getLogger(__name__)

# influxdb-client's modules that the v2 sink and Flux reads (gateway/api/dbread.py) use. They
# are imported on first need, and in a thread: their hundreds of generated modules take about
# 15 MiB, a quarter of a small box's budget, from a gateway on api v1, and about 0.3 s of a fast
# core to load, far more than the event loop may be held.
CLIENT_MODULES = (
    "influxdb_client.client.exceptions",
    "influxdb_client.client.influxdb_client_async",
    "influxdb_client.domain.write_precision",
    "influxdb_client.rest",
    "influxdb_client.service.write_service",
)


async def import_client() -> None:
    """Have influxdb-client's modules imported, loading them off the event loop the first time."""
    if not all(name in sys.modules for name in CLIENT_MODULES):
        await anyio.to_thread.run_sync(_import_client)


def _import_client() -> None:
    for name in CLIENT_MODULES:
        importlib.import_module(name)


HTTP_OK_MIN, HTTP_OK_MAX = 200, 299
# 404 is "database not found" on InfluxDB 1.x: the operator must create it; data waits meanwhile.
OPERATOR_STATUSES = frozenset({401, 403, 404})
# The points themselves are refused (bad syntax, type conflict, too large): retrying the same
# body cannot succeed, so the flusher splits it to find the offenders.
REJECT_STATUSES = frozenset({400, 413, 422})


@dataclass(frozen=True, slots=True)
class Delivered:
    """The database stored the batch."""


def classify(
    status: int, headers: Mapping[str, str], body: str, where: str = ""
) -> Delivered | SinkError:
    """The outcome of a write response, as a value; `where` (the database) starts its message."""
    if HTTP_OK_MIN <= status <= HTTP_OK_MAX:
        return Delivered()
    summary = f"{where + ': ' if where else ''}HTTP {status}: {body.strip()[:300]}"
    if status in OPERATOR_STATUSES:
        return SinkAuthError(summary)
    if status in REJECT_STATUSES:
        return SinkRejected(summary)
    return SinkUnavailable(summary, retry_after(headers.get("Retry-After")))


def retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta seconds or an HTTP date)."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    from datetime import UTC, datetime  # noqa: PLC0415 - only for the rare date form

    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class Sink(Protocol):
    """Something that stores a line-protocol body or raises a `SinkError`."""

    async def write(self, body: bytes, *, encoding: str | None = None) -> None:
        """Store the points of `body` (newline-separated lines, ns precision).

        `encoding`: the body's `Content-Encoding` ("gzip"), or None for plain line protocol.
        """

    async def ready(self) -> bool:
        """Whether the database answers its readiness endpoint (`/ping`) now."""

    async def aclose(self) -> None:
        """Release connections."""


def unreachable(exc: BaseException, where: str = "") -> SinkUnavailable:
    """A failure before any HTTP response: the host refused, reset or dropped the connection.

    A timeout is not one of them: a slow database answers its ping at once, so probing would
    send it the same heavy write again every second.
    """
    reached = isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError)
    text = f"{where + ': ' if where else ''}{type(exc).__name__}: {exc}"
    return SinkUnavailable(text, unreachable=not reached)


def public_url(url: str) -> str:
    """`url` without a user or password, for log lines and errors."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


class V1Sink:
    """InfluxDB 1.x `/write` (also served by 1.8+, 2.x compatibility and VictoriaMetrics)."""

    def __init__(self, settings: InfluxSettings) -> None:
        """Prepare the endpoint; connections open on the first write."""
        params = {"db": settings.database or "", "precision": "ns"}
        if settings.retention_policy:
            params["rp"] = settings.retention_policy
        self._url = f"{settings.url}/write"
        self._params = params
        self._auth = None
        if settings.username and settings.password:
            self._auth = aiohttp.BasicAuth(settings.username, settings.password.get_secret_value())
        self._settings = settings
        self._where = f"database at {public_url(settings.url)}"
        self._ping_url = f"{settings.url}/ping"
        self._headers: dict[str, str] = {}
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = http_session(self._settings, self._auth)
        return self._session

    def _outcome(self, status: int, headers: Mapping[str, str], body: str) -> SinkError | None:
        """The error an answer stands for; None when the database stored the batch."""
        outcome = classify(status, headers, body, self._where)
        return outcome if isinstance(outcome, SinkError) else None

    async def write(self, body: bytes, *, encoding: str | None = None) -> None:
        """POST the body; see `_outcome` for the outcomes."""
        headers = {**self._headers, "Content-Encoding": encoding} if encoding else self._headers
        try:
            async with self._http().post(
                self._url, params=self._params, data=body, headers=headers
            ) as response:
                text = await response.text(errors="replace")
                outcome = self._outcome(response.status, response.headers, text)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise unreachable(exc, self._where) from exc
        if outcome is not None:
            raise outcome

    async def ready(self) -> bool:
        """GET /ping (InfluxDB 1.x, 2.x, 3.x and VictoriaMetrics answer 2xx)."""
        return await ping(self._http(), self._ping_url, self._headers)

    async def aclose(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()


class V2Sink:
    """The InfluxDB v2 write API through influxdb-client (2.x, 3.x, 1.8+, VictoriaMetrics)."""

    def __init__(self, settings: InfluxSettings) -> None:
        """Create the client; it connects on the first write."""
        self._settings = settings
        self._where = f"database at {public_url(settings.url)}"
        self._client: InfluxDBClientAsync | None = None
        self._writes: WriteService | None = None
        self._ping: aiohttp.ClientSession | None = None
        token = settings.token.get_secret_value() if settings.token else ""
        self._ping_headers = {"Authorization": f"Token {token}"} if token else {}

    def _service(self) -> WriteService:
        # Imported by `write` before (`import_client`): found in sys.modules here.
        from influxdb_client.client.influxdb_client_async import (  # noqa: PLC0415
            InfluxDBClientAsync,
        )
        from influxdb_client.service.write_service import WriteService  # noqa: PLC0415

        s = self._settings
        if self._writes is None:
            # The client must be created inside the running event loop.
            self._client = InfluxDBClientAsync(
                url=s.url,
                token=s.token.get_secret_value() if s.token else "",
                org=s.org or "",
                timeout=int(s.timeout_s * 1000),
                ssl_context=client_context(s.tls) if s.url.startswith("https:") else None,
            )
            # Its write service rather than its write API: that one re-encodes the body and
            # would gzip it a second time; the service sends the bytes and headers it is given.
            self._writes = WriteService(self._client.api_client)  # type: ignore[no-untyped-call]
        return self._writes

    async def write(self, body: bytes, *, encoding: str | None = None) -> None:
        """Write the body; see `classify` for the outcomes."""
        await import_client()
        from influxdb_client.domain.write_precision import WritePrecision  # noqa: PLC0415
        from influxdb_client.rest import ApiException  # noqa: PLC0415

        s = self._settings
        extra = {"content_encoding": encoding} if encoding else {}
        try:
            await self._service().post_write_async(  # type: ignore[no-untyped-call]
                org=s.org or "",
                bucket=s.bucket or "",
                body=body,
                precision=WritePrecision.NS,
                content_type="text/plain; charset=utf-8",
                _return_http_data_only=False,
                **extra,
            )
        except ApiException as exc:
            answer = str(exc.body or exc.reason)
            outcome = classify(exc.status or 0, exc.headers or {}, answer, self._where)
            if isinstance(outcome, SinkError):
                raise outcome from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise unreachable(exc, self._where) from exc

    async def ready(self) -> bool:
        """GET /ping with the token (InfluxDB 2.x, 1.8+ and VictoriaMetrics answer 204)."""
        if self._ping is None:
            self._ping = http_session(self._settings)
        return await ping(self._ping, f"{self._settings.url}/ping", self._ping_headers)

    async def aclose(self) -> None:
        """Close the client."""
        if self._client is not None:
            await self._client.close()  # type: ignore[no-untyped-call]
        if self._ping is not None:
            await self._ping.close()


def http_session(
    settings: InfluxSettings, auth: aiohttp.BasicAuth | None = None
) -> aiohttp.ClientSession:
    """A session to the database: its timeout, and TLS for an https:// url."""
    ssl = client_context(settings.tls) if settings.url.startswith("https:") else None
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=settings.timeout_s),
        auth=auth,
        connector=aiohttp.TCPConnector(ssl=ssl) if ssl else None,
    )


async def ping(session: aiohttp.ClientSession, url: str, headers: Mapping[str, str]) -> bool:
    """True when `url` answers 2xx; any failure to get there is False, never an exception.

    The probe runs beside the flush workers: an exception out of it would stop the gateway.
    """
    try:
        async with session.get(url, headers=headers) as response:
            return HTTP_OK_MIN <= response.status <= HTTP_OK_MAX
    except (aiohttp.ClientError, OSError, ValueError):
        return False
