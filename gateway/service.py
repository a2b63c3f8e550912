"""Wires the gateway together and owns its lifecycle.

Start order: buffer -> metrics -> flusher -> ingest. Stop order on SIGTERM/SIGINT: close intake
(finishing the commit and acks in progress), flush for up to `flush.grace_s`, close the buffer.
What was not flushed stays buffered for the next start. A second signal skips the flush.
"""

from __future__ import annotations

import logging
import signal
import time
from typing import TYPE_CHECKING

import anyio

from gateway.accounting import Accounting
from gateway.buffer import Buffer
from gateway.decode import Decoder
from gateway.flush import Flusher
from gateway.ingest import Ingest
from gateway.metrics import Metrics
from gateway.sink import make_sink

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway.config import Settings

logger = logging.getLogger(__name__)

# LMDB allows one writer at a time; more threads would only queue on its lock.
BUFFER_THREADS = 1
# How often quiet refusal and drop episodes are looked for, to log their end.
HOUSEKEEPING_S = 2.0


async def run(settings: Settings, metrics: Metrics | None = None) -> None:
    """Run the gateway until SIGTERM or SIGINT."""
    metrics = metrics or Metrics()
    b = settings.buffer
    buffer = Buffer(b.path, int(b.capacity), b.sync)
    totals = buffer.totals()
    rules = settings.admission_rules(buffer.budget_bytes)
    logger.info(
        "buffer open at %s: %d readings from %d devices waiting, %d of %d budget bytes used "
        "(disk budget %d bytes), sync mode %s, policy %s",
        b.path,
        totals.readings,
        totals.devices,
        totals.nbytes,
        buffer.budget_bytes,
        buffer.capacity_bytes,
        b.sync,
        b.policy,
    )
    metrics.set_buffer_limits(buffer.capacity_bytes, buffer.budget_bytes)
    metrics.accounting = Accounting(recovered=totals.readings)
    metrics.observe_buffer(totals)
    if settings.metrics.enabled:
        metrics.serve(*settings.metrics.host_port)
        logger.info("metrics on http://%s/metrics", settings.metrics.listen)
    limiter = anyio.CapacityLimiter(BUFFER_THREADS)
    sink = make_sink(settings.influx)
    flusher = Flusher(buffer, sink, settings.flush, metrics, limiter)
    ingest = Ingest(
        settings=settings.mqtt,
        commit_max_readings=b.commit_max_readings,
        commit_window_s=b.commit_window_ms / 1000,
        buffer=buffer,
        decoder=Decoder(settings.mqtt.subscriptions),
        metrics=metrics,
        limiter=limiter,
        on_commit=flusher.notify,
        on_drop=flusher.forget,
        space_freed=lambda: flusher.space_freed,
        rules=rules,
    )
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(flusher.run, name="gateway.flush")
            if b.sync == "interval":
                tg.start_soon(
                    _sync_every, buffer, b.sync_interval_ms / 1000, limiter, name="gateway.sync"
                )
            intake = anyio.CancelScope()
            intake_closed = anyio.Event()
            tg.start_soon(_run_intake, ingest, intake, intake_closed, name="gateway.ingest")
            tg.start_soon(_every, HOUSEKEEPING_S, ingest.housekeeping, name="gateway.housekeeping")
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    logger.info(
                        "%s: closing intake, flushing for up to %.0f s",
                        signal.Signals(signum).name,
                        settings.flush.grace_s,
                    )
                    break
                intake.cancel()
                await intake_closed.wait()
                started = time.monotonic()
                with anyio.move_on_after(settings.flush.grace_s) as grace:
                    tg.start_soon(_skip_on_second_signal, signals, grace)
                    await flusher.drain()
            left = buffer.totals()
            logger.info(
                "stopped after flushing for %.1f s; %d readings stay buffered for the next start",
                time.monotonic() - started,
                left.readings,
            )
            tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await sink.aclose()
        buffer.sync()
        buffer.close()


async def _run_intake(ingest: Ingest, scope: anyio.CancelScope, closed: anyio.Event) -> None:
    with scope:
        await ingest.run()
    closed.set()


async def _skip_on_second_signal(signals: object, grace: anyio.CancelScope) -> None:
    async for _ in signals:  # type: ignore[attr-defined]
        logger.warning("second signal: leaving the rest buffered")
        grace.cancel()
        return


async def _every(interval_s: float, job: Callable[[], None]) -> None:
    while True:
        await anyio.sleep(interval_s)
        job()


async def _sync_every(buffer: Buffer, interval_s: float, limiter: anyio.CapacityLimiter) -> None:
    while True:
        await anyio.sleep(interval_s)
        await anyio.to_thread.run_sync(buffer.sync, limiter=limiter)
