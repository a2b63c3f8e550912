"""The gateway's HTTP server: `/metrics`, `/healthz` and `/readyz` on `[metrics] listen`.

aiohttp in the service's event loop, so `/healthz` answering at all shows the loop turns.
Loopback by default; nothing here can change the gateway's state.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING

import anyio
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

if TYPE_CHECKING:
    from gateway.health import Health, Verdict
    from gateway.metrics import Metrics

logger = logging.getLogger(__name__)


def make_app(metrics: Metrics, health: Health) -> web.Application:
    """The routes, over the gateway's metrics and health."""

    async def metrics_page(_request: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_request: web.Request) -> web.Response:
        return _verdict_response(health.liveness(time.monotonic()))

    async def readyz(_request: web.Request) -> web.Response:
        return _verdict_response(health.readiness(time.monotonic()))

    app = web.Application()
    app.router.add_get("/metrics", metrics_page)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


def _verdict_response(verdict: Verdict) -> web.Response:
    body = {"status": "ok" if verdict.ok else "fail", "problems": list(verdict.problems)}
    return web.Response(
        text=json.dumps(body),
        status=200 if verdict.ok else 503,
        content_type="application/json",
    )


async def serve(
    host: str, port: int, metrics: Metrics, health: Health, *, task_status: anyio.abc.TaskStatus
) -> None:
    """Serve until cancelled; reports started once the socket is bound.

    Raises:
        OSError: the address cannot be bound (in use, or not an address of this host).
    """
    runner = web.AppRunner(make_app(metrics, health), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        task_status.started()
        await anyio.sleep_forever()
    finally:
        with anyio.CancelScope(shield=True):
            await runner.cleanup()
