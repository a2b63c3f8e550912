"""Writes to InfluxDB: the v2 API through influxdb-client, the v1 `/write` endpoint through aiohttp.

`classify` is the pure rule that turns a response into an outcome; the rest translates library
exceptions into `SinkError`s in one place, so the flusher sees only our own errors.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Protocol

import aiohttp
from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync
from influxdb_client.domain.write_precision import WritePrecision
from influxdb_client.rest import ApiException

from gateway.errors import SinkAuthError, SinkError, SinkRejected, SinkUnavailable
from gateway.tls import client_context

if TYPE_CHECKING:
    from collections.abc import Mapping

    from gateway.config.sections import InfluxSettings

logger = logging.getLogger(__name__)

HTTP_OK_MIN, HTTP_OK_MAX = 200, 299
# 404 is "database not found" on InfluxDB 1.x: the operator must create it; data waits meanwhile.
OPERATOR_STATUSES = frozenset({401, 403, 404})
# The points themselves are refused (bad syntax, type conflict, too large): retrying the same
# body cannot succeed, so the flusher splits it to find the offenders.
REJECT_STATUSES = frozenset({400, 413, 422})


@dataclass(frozen=True, slots=True)
class Delivered:
    """The database stored the batch."""


def classify(status: int, headers: Mapping[str, str], body: str) -> Delivered | SinkError:
    """The outcome of a write response, as a value."""
    if HTTP_OK_MIN <= status <= HTTP_OK_MAX:
        return Delivered()
    summary = f"HTTP {status}: {body.strip()[:300]}"
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

    async def write(self, body: bytes) -> None:
        """Store the points of `body` (newline-separated lines, ns precision)."""

    async def aclose(self) -> None:
        """Release connections."""


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
        self._timeout = aiohttp.ClientTimeout(total=settings.timeout_s)
        self._ssl = client_context(settings.tls) if settings.url.startswith("https:") else None
        self._session: aiohttp.ClientSession | None = None

    async def write(self, body: bytes) -> None:
        """POST the body; see `classify` for the outcomes."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                auth=self._auth,
                connector=aiohttp.TCPConnector(ssl=self._ssl) if self._ssl else None,
            )
        try:
            async with self._session.post(self._url, params=self._params, data=body) as response:
                text = await response.text(errors="replace")
                outcome = classify(response.status, response.headers, text)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SinkUnavailable(f"{type(exc).__name__}: {exc}") from exc
        if isinstance(outcome, SinkError):
            raise outcome

    async def aclose(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()


class V2Sink:
    """The InfluxDB v2 write API through influxdb-client (2.x, 3.x, 1.8+, VictoriaMetrics)."""

    def __init__(self, settings: InfluxSettings) -> None:
        """Create the client; it connects on the first write."""
        self._settings = settings
        self._client: InfluxDBClientAsync | None = None

    async def write(self, body: bytes) -> None:
        """Write the body; see `classify` for the outcomes."""
        s = self._settings
        if self._client is None:
            # The client must be created inside the running event loop.
            self._client = InfluxDBClientAsync(
                url=s.url,
                token=s.token.get_secret_value() if s.token else "",
                org=s.org or "",
                timeout=int(s.timeout_s * 1000),
                ssl_context=client_context(s.tls) if s.url.startswith("https:") else None,
            )
        try:
            await self._client.write_api().write(
                bucket=s.bucket or "",
                org=s.org or "",
                record=body,
                write_precision=WritePrecision.NS,  # type: ignore[arg-type]
            )
        except ApiException as exc:
            outcome = classify(exc.status or 0, exc.headers or {}, str(exc.body or exc.reason))
            if isinstance(outcome, SinkError):
                raise outcome from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SinkUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        """Close the client."""
        if self._client is not None:
            await self._client.close()  # type: ignore[no-untyped-call]


def make_sink(settings: InfluxSettings) -> Sink:
    """The sink for the configured API."""
    return V1Sink(settings) if settings.api == "v1" else V2Sink(settings)
