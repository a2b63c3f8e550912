"""A standby's one route: `/api/v1/status`, its replica's figures and the pair as it sees it.

A standby takes no readings and writes to no database, so the read API and the status page
are the primary's; `gateway status` on the standby's box still answers from this route.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from aiohttp import web

from gateway import __version__
from gateway.buffer import view as buffer_view

if TYPE_CHECKING:
    from gateway.config.settings import Settings
    from gateway.replication.standby import Follower

STANDBY_TOP = 0


def status_route(settings: Settings, follower: Follower) -> web.RouteDef:
    """The route, over whatever replica `follower` has open when asked."""

    async def status(_request: web.Request) -> web.Response:
        buffer = follower.buffer
        if buffer is None:
            return web.json_response({"error": "the replica is being replaced"}, status=503)
        view = buffer_view.snapshot(
            buffer, time.time_ns(), top=STANDBY_TOP, steps_s=settings.buffer.compact_steps_s
        )
        view["runtime"] = {"version": __version__, "replication": follower.describe()}
        return web.json_response(view)

    return web.get("/api/v1/status", status)
