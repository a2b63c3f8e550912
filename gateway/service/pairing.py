"""The service's part in a replicated pair: following, taking over, serving as the primary.

A box that starts as the standby first delivers what its buffer holds of its own history (it
served as the primary before, and may hold readings it acknowledged that the primary now
serving never had: an `async` or degraded primary that died with its disk intact, or one
that was deposed), then follows until the primary is gone, and the service goes on as the
primary on the replica (gateway/replication/standby.py). A primary ships its journal and
steps down when another box took over (gateway/replication/primary.py).
"""

from __future__ import annotations

import functools
import logging
import signal
import time
from typing import TYPE_CHECKING

import anyio

from gateway.api import httpserver, standbyapi
from gateway.buffer.store import Buffer
from gateway.observe.health import Health
from gateway.replication import roles
from gateway.replication.gate import AckGate
from gateway.replication.primary import Shipper
from gateway.replication.protocol import NODE_NOTE
from gateway.replication.standby import Follower

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from gateway.config.settings import Settings
    from gateway.observe.metrics import Metrics
    from gateway.replication.protocol import State
    from gateway.service.sdnotify import Notifier

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def make_shipper(
    settings: Settings, buffer: Buffer, metrics: Metrics, *, took_over: bool
) -> Shipper:
    """The primary's replication, under its buffer's term (a new one after a takeover)."""
    r = settings.replication
    gate = AckGate(r.mode, r.standby_away, r.confirm_timeout_s)
    term = roles.primary_term(
        buffer, took_over=took_over, fresh=settings.buffer.sync != "commit", node=r.node
    )
    if took_over:
        metrics.replication.takeovers.inc()
        logger.warning(
            "replication: took over as the primary (term %s, epoch %d) with %d readings from "
            "the replica",
            term.term.hex()[:8],
            term.epoch,
            buffer.totals().readings,
        )
    metrics.replication.set_role("primary")
    return Shipper(settings, buffer, gate, metrics, term)


def holds_own_history(settings: Settings) -> int:
    """Readings this box's buffer holds of a history it served as the primary (0: none)."""
    b = settings.buffer
    if not (b.path / "data.mdb").exists():
        return 0
    with Buffer(b.path, int(b.capacity), b.sync, readonly=True, latest_series=0) as buffer:
        node = buffer.notes(NODE_NOTE).get(NODE_NOTE)
        if node is None or node.decode(errors="replace") != settings.replication.node:
            return 0
        return buffer.totals().readings


async def follow(
    settings: Settings,
    metrics: Metrics,
    notifier: Notifier,
    primary: State | None,
    deliver: Callable[[], Awaitable[None]],
) -> bool:
    """Be the standby until the primary is gone (True) or a stop signal came (False).

    `deliver` empties the buffer first when it holds readings of this box's own history:
    those the primary serving now may never have had (`primary`: its state, if known).
    """
    stopped = False
    async with anyio.create_task_group() as tg:

        async def stop_on_signal() -> None:
            nonlocal stopped
            with anyio.open_signal_receiver(*STOP_SIGNALS) as signals:
                async for signum in signals:
                    logger.info("%s: the standby stops", signal.Signals(signum).name)
                    stopped = True
                    tg.cancel_scope.cancel()

        tg.start_soon(stop_on_signal, name="gateway.standby_signals")
        own = holds_own_history(settings)
        if own:
            logger.warning(
                "replication: this box served as the primary and holds %d readings %s may "
                "not have; delivering them before it follows",
                own,
                primary.node if primary is not None else "the primary",
            )
            notifier.send(STATUS="standby: delivering its own readings first")
            await deliver()
        follower = Follower(settings, metrics)
        if settings.metrics.enabled:
            health = Health(
                started=time.monotonic(), max_loop_lag_s=settings.metrics.max_loop_lag_s
            )
            routes = [standbyapi.status_route(settings, follower)] if settings.api.enabled else []
            await tg.start(
                functools.partial(httpserver.serve, registry=metrics.registry),
                settings.metrics,
                httpserver.LocalPages(metrics, health),
                routes,
            )
            logger.info(
                "standby: metrics on %s/metrics, health on /healthz and /readyz",
                settings.metrics.listen,
            )
        notifier.send(READY="1", STATUS="standby: following the primary")
        await follower.run()
        tg.cancel_scope.cancel()
    return not stopped


async def step_down_when_deposed(shipper: Shipper, intake: anyio.CancelScope) -> None:
    """Another box took over the sensors' session: stop taking readings, keep delivering."""
    await shipper.deposed.wait()
    shipper.gate.drop()
    intake.cancel()
    shipper.metrics.replication.set_role("deposed")
