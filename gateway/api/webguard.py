"""What every answer of the HTTP server carries, and which `Host` it answers at all.

The headers keep the status page (which holds the bearer token in sessionStorage) out of
frames and other origins' reach, keep answers with data out of caches, and name no versions.
The Host check refuses names a DNS-rebinding page could use (gateway/api/core/hosts.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from aiohttp.typedefs import Handler, Middleware

    from gateway.api.core.hosts import HostPolicy

# The page loads its own script and style sheet and fetches its own API; nothing else, and it
# may not be framed, post forms or change its base.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'; "
    "object-src 'none'"
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    # aiohttp would name Python's and its own version.
    "Server": "gateway",
}
# Answers with data are not kept anywhere; the page's files set their own (no-cache).
CACHE_CONTROL = "no-store"


async def add_headers(_request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare`: the security headers on every answer, errors included."""
    response.headers.update(HEADERS)
    response.headers.setdefault("Cache-Control", CACHE_CONTROL)


def host_check(policy: HostPolicy) -> Middleware:
    """Answer 421 to a request whose Host names no allowed host."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not policy.allows(request.headers.get("Host")):
            return web.Response(
                status=421,
                text="this gateway does not answer to that host name "
                "(IP address, localhost or [metrics] allowed_hosts)\n",
            )
        return await handler(request)

    return check
