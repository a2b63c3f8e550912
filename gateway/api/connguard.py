"""A cap on the HTTP server's connections and a deadline for their request headers.

aiohttp bounds neither: each silent TCP connection holds a file descriptor for as long as the
client likes, and enough of them took the descriptors the database and the broker needed. So
every connection passes through `GuardedConnection`, a thin protocol in front of aiohttp's:

- a connection whose first request headers (and TLS handshake) are not in after
  `header_timeout_s` is closed;
- at `max_connections` a newcomer closes the oldest connection that never sent a whole
  request, else the oldest idle keep-alive one, else the newcomer itself. Closing the oldest
  rather than refusing the newest keeps /healthz reachable through any flood of silent
  connections; a connection whose request is being answered is never closed.

TLS is set up here (`loop.start_tls`) rather than by the server, so that connections still in
their handshake are counted and evicted like the others.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, cast

from aiohttp import web

from gateway.api import tlsupgrade

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable

    from aiohttp.typedefs import Handler

logger = logging.getLogger(__name__)

END_OF_HEADERS = b"\r\n\r\n"
# Between aiohttp reading a request's headers and the middleware seeing it: not evicted then.
DISPATCH_GRACE_S = 1.0


class ConnectionGuard:
    """The protocol factory for the server: counts, times and evicts connections."""

    def __init__(
        self,
        *,
        max_connections: int,
        header_timeout_s: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """A guard whose connections get their protocol from `set_factory`."""
        self._factory: Callable[[], asyncio.Protocol] | None = None
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self.ssl_context = ssl_context
        # Insertion order is accept order: the first candidate found is the oldest.
        self._open: dict[GuardedConnection, None] = {}
        self._by_transport: dict[object, GuardedConnection] = {}
        # Connections closed by the guard, by why: for the log and the metrics.
        self.evicted = 0
        self.timed_out = 0
        self.refused = 0
        self._crowded = False

    def __call__(self) -> GuardedConnection:
        """A protocol for one accepted connection."""
        return GuardedConnection(self)

    @property
    def open_connections(self) -> int:
        """Connections counted now."""
        return len(self._open)

    def set_factory(self, factory: Callable[[], asyncio.Protocol]) -> None:
        """Set aiohttp's protocol factory (`AppRunner.server`), made after the application."""
        self._factory = factory

    def inner_protocol(self) -> asyncio.Protocol:
        """A new aiohttp protocol for a connection ready for HTTP."""
        assert self._factory is not None  # noqa: S101 - set before the server starts
        return self._factory()

    def admit(self, conn: GuardedConnection) -> bool:
        """Count `conn`, making room at the cap; False when it had to be closed itself."""
        if len(self._open) >= self.max_connections:
            victim = self._victim()
            if not self._crowded:
                self._crowded = True
                logger.warning(
                    "HTTP connections at the cap ([metrics] max_connections = %d): closing "
                    "the oldest that sent no request to make room",
                    self.max_connections,
                )
            if victim is None:
                self.refused += 1
                conn.close()
                return False
            self.evicted += 1
            victim.close()
        self._open[conn] = None
        return True

    def _victim(self) -> GuardedConnection | None:
        now = asyncio.get_running_loop().time()
        idle = None
        for conn in self._open:
            if conn.requests_seen == 0:
                return conn
            if idle is None and not conn.is_busy(now):
                idle = conn
        return idle

    def attached(self, conn: GuardedConnection, transport: object) -> None:
        """`conn` hands `transport` to aiohttp, which shows it to the middleware."""
        self._by_transport[transport] = conn

    def forget(self, conn: GuardedConnection) -> None:
        """`conn` is closed."""
        self._open.pop(conn, None)
        self._by_transport.pop(conn.transport, None)
        if self._crowded and len(self._open) <= self.max_connections // 2:
            self._crowded = False
            logger.info(
                "HTTP connections below half the cap again (%d closed at the cap so far, "
                "%d for their header deadline)",
                self.evicted,
                self.timed_out,
            )

    def close_all(self) -> None:
        """Close every connection, such as those still in their TLS handshake, at shutdown."""
        for conn in list(self._open):
            conn.close()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Marks a connection busy while its request is answered: never evicted meanwhile."""
        conn = self._by_transport.get(request.transport)
        if conn is None:
            return await handler(request)
        conn.in_handler += 1
        try:
            return await handler(request)
        finally:
            conn.in_handler -= 1


class GuardedConnection(asyncio.Protocol):
    """One connection: watches its bytes for the end of headers, then passes them on."""

    def __init__(self, guard: ConnectionGuard) -> None:
        """A connection of `guard`'s server."""
        self._guard = guard
        self._raw: asyncio.Transport | None = None
        self.transport: asyncio.BaseTransport | None = None
        self._inner: asyncio.Protocol | None = None
        self._deadline: asyncio.TimerHandle | None = None
        # TLS: "plain" until the first bytes, then "handshake", then "ready".
        self._tls_state = ""
        self._tail = b""
        # A byte other than CR or LF came: aiohttp skips empty lines before a request line, so
        # "\r\n\r\n" alone is no request's headers and must not stop the deadline.
        self._started = False
        # What the TLS layer delivers before start_tls has returned its transport.
        self._early: list[bytes] = []
        self._lost = False
        self._inner_told = False
        self.requests_seen = 0
        self._headers_at = 0.0
        self.in_handler = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Arm the deadline, take a place under the cap, then start HTTP (or wait for TLS)."""
        # A stream server's: uvloop's transports are not asyncio.Transport's subclasses.
        self._raw = cast("asyncio.Transport", transport)
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(self._guard.header_timeout_s, self._too_slow)
        if not self._guard.admit(self):
            return
        if self._guard.ssl_context is None:
            self._attach(self._raw)
        else:
            self._tls_state = "plain"

    def _start_tls(self, first: bytes) -> None:
        assert self._raw is not None  # noqa: S101 - set in connection_made
        assert self._guard.ssl_context is not None  # noqa: S101 - only then called
        self._tls_state = "handshake"
        tlsupgrade.upgrade(
            self._raw,
            self,
            self._guard.ssl_context,
            first,
            handshake_timeout_s=self._guard.header_timeout_s,
            done=self._tls_done,
        )

    def _tls_done(self, tls: asyncio.BaseTransport | None, error: OSError | None) -> None:
        if tls is None or self._lost:
            logger.debug("TLS handshake failed: %s", error)
            self.close()
            return
        self._tls_state = "ready"
        self._attach(tls)

    def _attach(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self._inner = self._guard.inner_protocol()
        self._guard.attached(self, transport)
        self._inner.connection_made(transport)
        early, self._early = self._early, []
        for data in early:
            self._inner.data_received(data)

    def _too_slow(self) -> None:
        self._deadline = None
        if self.requests_seen == 0:
            self._guard.timed_out += 1
            self.close()

    def is_busy(self, now: float) -> bool:
        """A request is being answered, or its headers came in and it is about to be."""
        return self.in_handler > 0 or (
            self.requests_seen > 0 and now - self._headers_at < DISPATCH_GRACE_S
        )

    def close(self) -> None:
        """Close at once, without a word: the peer sent nothing worth an answer."""
        if self._raw is not None:
            self._raw.abort()
        self._gone()

    def data_received(self, data: bytes) -> None:
        """Count requests whose headers are complete, then hand the bytes to aiohttp."""
        if self._tls_state == "plain":
            self._start_tls(data)
            return
        scanned = data if self._started else data.lstrip(b"\r\n")
        self._started = bool(scanned)
        ends = (self._tail + scanned).count(END_OF_HEADERS)
        if ends:
            self.requests_seen += ends
            self._headers_at = asyncio.get_running_loop().time()
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
        self._tail = (self._tail + scanned)[-3:]
        if self._inner is not None:
            self._inner.data_received(data)
        else:
            self._early.append(data)

    def eof_received(self) -> bool | None:
        """Passed on: aiohttp decides."""
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        """Passed on."""
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        """Passed on."""
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        """Free the place and tell aiohttp, once (the TLS layer and the socket may both call)."""
        self._gone()
        if self._inner is not None and not self._inner_told:
            self._inner_told = True
            self._inner.connection_lost(exc)

    def _gone(self) -> None:
        if self._lost:
            return
        self._lost = True
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._guard.forget(self)
