"""The gateway's HTTP server: `/metrics`, `/healthz`, `/readyz` and the status page at `/`.

aiohttp in the service's event loop, so `/healthz` answering at all shows the loop turns.
Loopback by default; nothing here can change the gateway's state. Optionally HTTPS, and a bearer
token required on every path but `/healthz` (which says nothing but alive or not, and is what
container health checks call) and the status page's own files (which hold no data: the page
reads the API with the token). On `[metrics] listen` the connections are capped and timed
(`connguard`) and only allowed `Host` names are answered (`webguard`); every answer carries
the security headers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import socket
import time
from typing import TYPE_CHECKING, Protocol

import anyio
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.api import listensock, webguard
from gateway.api.connguard import ConnectionGuard
from gateway.api.core.authheader import is_authorized
from gateway.api.core.hosts import HostPolicy
from gateway.api.statuspage import PUBLIC_PATHS
from gateway.observe.listener import watch_listener
from gateway.tls import server_context

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

    from aiohttp.typedefs import Handler, Middleware
    from prometheus_client import CollectorRegistry

    from gateway.config.sections import MetricsSettings
    from gateway.observe.health import Health, Verdict
    from gateway.observe.metrics import Metrics

logger = logging.getLogger(__name__)

# HTTP may hold at most this share of the open-file limit: the rest is the broker's, the
# database's and LMDB's, so that no crowd of HTTP clients can starve them.
FILES_PER_HTTP_CONNECTION = 4
# Connections waiting to be accepted take no descriptor of ours; a short queue overflows under
# a crowd, and a dropped SYN costs a health probe the kernel's one-second retransmit.
LISTEN_BACKLOG = 1024


class Pages(Protocol):
    """What the server shows: one gateway's own figures, or the sum of its workers'."""

    async def metrics(self) -> bytes:
        """The Prometheus text exposition."""
        ...

    async def liveness(self) -> Verdict:
        """Alive or not, with the reasons."""
        ...

    async def readiness(self) -> Verdict:
        """Ready or not, with the reasons."""
        ...


class LocalPages:
    """The pages of the gateway running in this process."""

    def __init__(self, metrics: Metrics, health: Health) -> None:
        """Show `metrics` and judge by `health`."""
        self._metrics = metrics
        self._health = health
        self.registry = metrics.registry

    async def metrics(self) -> bytes:
        """This process's registry."""
        return generate_latest(self._metrics.registry)

    async def liveness(self) -> Verdict:
        """Alive while the event loop ticks."""
        return self._health.liveness(time.monotonic())

    async def readiness(self) -> Verdict:
        """Ready while connected and taking readings."""
        return self._health.readiness(time.monotonic())


def make_app(
    pages: Pages,
    token: str | None = None,
    routes: Sequence[web.RouteDef] = (),
    *,
    hosts: HostPolicy | None = None,
    guard: ConnectionGuard | None = None,
) -> web.Application:
    """The routes over `pages` and `routes` (the read API).

    `token`: the bearer token required; `hosts`: the Host names answered; `guard`: the
    connections' guard, told of each request.
    """

    async def metrics_page(_request: web.Request) -> web.Response:
        body = await pages.metrics()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_request: web.Request) -> web.Response:
        verdict = await pages.liveness()
        # Whether the loop is stuck now or stalled a while ago: a parent of workers restarts
        # only the first (gateway/service/supervisor.py).
        return _verdict_response(verdict, {} if verdict.ok else {"hung": verdict.hung})

    async def readyz(_request: web.Request) -> web.Response:
        return _verdict_response(await pages.readiness())

    # The guard first, so that it sees refused requests too.
    middlewares: list[Middleware] = [guard.middleware] if guard else []
    if hosts is not None:
        middlewares.append(webguard.host_check(hosts))
    if token:
        middlewares.append(_bearer_token(token))
    app = web.Application(middlewares=middlewares)
    app.on_response_prepare.append(webguard.add_headers)
    app.router.add_get("/metrics", metrics_page)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_routes(routes)
    return app


def _bearer_token(token: str) -> Middleware:
    expected = token.encode()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if (
            request.path != "/healthz"
            and request.path not in PUBLIC_PATHS
            and not is_authorized(request.headers.get("Authorization"), expected)
        ):
            return web.Response(
                status=401,
                text="bearer token required\n",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return await handler(request)

    return check


def _verdict_response(verdict: Verdict, extra: dict[str, bool] | None = None) -> web.Response:
    body: dict[str, object] = {
        "status": "ok" if verdict.ok else "fail",
        "problems": list(verdict.problems),
    }
    body.update(extra or {})
    return web.Response(
        text=json.dumps(body),
        status=200 if verdict.ok else 503,
        content_type="application/json",
    )


async def serve(
    settings: MetricsSettings,
    pages: Pages,
    routes: Sequence[web.RouteDef] = (),
    *,
    registry: CollectorRegistry | None = None,
    task_status: anyio.abc.TaskStatus,
) -> None:
    """Serve on `[metrics] listen` until cancelled; reports started once the socket is bound.

    `registry`: where the listener's connection metrics are exported (gateway/observe/listener.py).

    Raises:
        OSError: the address cannot be bound (in use, or not an address of this host).
    """
    token = settings.token.get_secret_value() if settings.token else None
    ssl_context = None
    if settings.tls_cert_file and settings.tls_key_file:
        ssl_context = server_context(settings.tls_cert_file, settings.tls_key_file)
    host, port = settings.host_port
    guard = ConnectionGuard(
        max_connections=connection_cap(settings.max_connections),
        header_timeout_s=settings.header_timeout_s,
        ssl_context=ssl_context,
    )
    app = make_app(
        pages, token, routes, hosts=HostPolicy.of(host, settings.allowed_hosts), guard=guard
    )
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        keepalive_timeout=settings.keepalive_timeout_s,
    )
    await runner.setup()
    assert runner.server is not None  # noqa: S101 - made by setup()
    guard.set_factory(runner.server)
    watched = watch_listener(registry, guard) if registry is not None else None
    loop = asyncio.get_running_loop()
    sockets: list[listensock.SheddingSocket] = []
    servers: list[asyncio.Server] = []
    try:
        found = await loop.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        sockets = listensock.bind([(f, t, p, a) for f, t, p, _, a in found], LISTEN_BACKLOG)
        servers.extend(
            [await loop.create_server(guard, sock=s, backlog=LISTEN_BACKLOG) for s in sockets]
        )
        task_status.started()
        await anyio.sleep_forever()
    finally:
        with anyio.CancelScope(shield=True):
            for server in servers:
                server.close()
            await runner.cleanup()
            guard.close_all()
            for sock in sockets:
                sock.close()
            if watched is not None and registry is not None:
                registry.unregister(watched)


def connection_cap(configured: int) -> int:
    """`[metrics] max_connections`, or less when the open-file limit leaves no room for it."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or configured * FILES_PER_HTTP_CONNECTION <= soft:
        return configured
    cap = max(soft // FILES_PER_HTTP_CONNECTION, 2)
    logger.warning(
        "metrics.max_connections: %d is more than a quarter of the open-file limit (%d), which "
        "the broker, the database and the buffer share: at most %d HTTP connections (raise "
        "LimitNOFILE in the unit, or lower max_connections)",
        configured,
        soft,
        cap,
    )
    return cap


async def serve_unix(
    path: Path,
    pages: Pages,
    routes: Sequence[web.RouteDef] = (),
    *,
    task_status: anyio.abc.TaskStatus,
) -> None:
    """Serve a worker's pages to its parent on a Unix socket in the parent's private directory."""
    app = make_app(pages, None, routes)
    await _serve(app, lambda runner: web.UnixSite(runner, str(path)), task_status)


async def _serve(
    app: web.Application,
    site: Callable[[web.AppRunner], web.BaseSite],
    task_status: anyio.abc.TaskStatus,
) -> None:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await site(runner).start()
        task_status.started()
        await anyio.sleep_forever()
    finally:
        with anyio.CancelScope(shield=True):
            await runner.cleanup()
