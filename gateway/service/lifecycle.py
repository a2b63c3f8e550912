"""Wires the gateway together and owns its lifecycle.

Start order: buffer -> metrics -> flusher -> ingest. Stop order on SIGTERM/SIGINT: close intake
(finishing the commit and acks in progress), flush for up to `flush.grace_s`, close the buffer.
What was not flushed stays buffered for the next start. A second signal skips the flush.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import signal
import time
from collections import Counter
from typing import TYPE_CHECKING

import anyio

from gateway.api import httpserver, statuspage
from gateway.api.readapi import ReadApi
from gateway.buffer.core.admission import rules_of
from gateway.buffer.rejects import RejectLog
from gateway.buffer.store import Buffer
from gateway.config import advice
from gateway.flush.fanout import Fanout
from gateway.flush.flusher import Flusher
from gateway.flush.sinks import make_sink
from gateway.ingest import faults, mqtt
from gateway.ingest.breaker import Breaker
from gateway.ingest.core.decode import Decoder
from gateway.ingest.intake import Ingest
from gateway.observe.accounting import Accounting
from gateway.observe.health import Health
from gateway.observe.metrics import Metrics
from gateway.replication import roles
from gateway.service import pairing, workers
from gateway.service.housekeeping import Housekeeping
from gateway.service.loopwatch import LoopWatch
from gateway.service.reloading import Reloader
from gateway.service.sdnotify import Notifier
from gateway.sparkplug.core.session import NOTE_PREFIX

if TYPE_CHECKING:
    from collections.abc import Awaitable
    from pathlib import Path

    from gateway.config.sections import BufferSettings
    from gateway.config.settings import Settings
    from gateway.config.sinks import ResolvedSink
    from gateway.flush.sink import Sink
    from gateway.replication.gate import AckGate
    from gateway.service.workers import Worker

logger = logging.getLogger(__name__)

# The cyclic collector's thresholds once start-up is done (see `run`).
GC_THRESHOLDS = (10_000, 20, 20)

# The buffer works in the event loop's thread: py-lmdb releases the GIL in every put and get, and
# a buffer thread competing with a busy loop waited up to a switch interval (5 ms) to get it back
# after each one (appends fell from 750,000/s to 3,000/s in a test). Only `env.sync` of the
# interval mode runs in a thread: one call, one wait.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# After an unclean stop, at most this many group commits' worth of redelivered messages are taken
# one at a time: the one that killed the gateway was in the oldest unacknowledged commit.
CAREFUL_COMMITS = 2
# A retiring session is done once nothing came from it for this long.
RETIRE_QUIET_S = 2.0
ORPHAN_CHECK_S = 1.0


async def run(  # noqa: PLR0915 - start and stop order read best in one place
    settings: Settings,
    config_path: Path | None = None,
    metrics: Metrics | None = None,
    *,
    worker: Worker | None = None,
    retire: bool = False,
) -> None:
    """Run the gateway until SIGTERM or SIGINT; SIGHUP reloads `config_path`.

    `worker`: run as one worker of a parent (`gateway/service/supervisor.py`), with `settings`
    already those of its slot. `retire` (implied for a worker of an environment no worker uses any
    more): take what the broker keeps for the session, end it, deliver everything, remove the
    environment and return.
    """
    metrics = metrics or Metrics()
    for speedup, active in mqtt.install_speedups().items():
        metrics.mqtt_speedup.labels(speedup).set(int(active))
    notifier = Notifier()
    replicated = settings.replication.role != "off" and worker is None
    took_over = False
    if replicated:
        role, primary = await roles.starting_role(settings)
        if role == "standby":
            own = functools.partial(_deliver_until_empty, settings, metrics)
            if not await pairing.follow(settings, metrics, notifier, primary, own):
                notifier.close()
                return
            took_over = True
    b = settings.buffer
    metrics.disk.endurance_tbw = b.endurance_tbw
    metrics.disk.endurance_used_tb = b.endurance_used_tb
    metrics.disk.sole_writer = worker is None
    resolved = settings.resolved_sinks()
    buffer = _open_buffer(settings, metrics, [s.name for s in resolved])
    health = Health(started=time.monotonic(), max_loop_lag_s=settings.metrics.max_loop_lag_s)
    metrics.loop_lag_max.set_function(lambda: health.loop_lag.recent_max(time.monotonic()))
    sinks = [make_sink(s.influx) for s in resolved]
    flusher = _make_flusher(buffer, sinks, resolved, metrics)
    metrics.lag_seconds.set_function(lambda: flusher.lag_s(time.monotonic()))
    metrics.live_lag_seconds.set_function(lambda: flusher.live_lag_s(time.monotonic()))
    metrics.backlog_lag_seconds.set_function(lambda: flusher.backlog_lag_s(time.monotonic()))
    breaker = Breaker(b.path, careful_max=CAREFUL_COMMITS * b.commit_max_readings)
    rejects = RejectLog(settings.buffer.path)
    shipper = (
        pairing.make_shipper(settings, buffer, metrics, took_over=took_over) if replicated else None
    )
    ingest = _make_ingest(
        settings,
        buffer,
        flusher,
        metrics,
        health=health,
        notifier=notifier,
        breaker=breaker,
        rejects=rejects,
        gate=shipper.gate if shipper is not None else None,
    )
    chores = Housekeeping(
        buffer=buffer,
        flusher=flusher,
        ingest=ingest,
        metrics=metrics,
        health=health,
        notifier=notifier,
        summary_interval_s=settings.log.summary_interval_s,
    )
    reloader = Reloader(
        settings,
        config_path,
        flusher=flusher,
        ingest=ingest,
        chores=chores,
        budget_bytes=buffer.budget_bytes,
        slot=worker.slot if worker else None,
    )
    retired = False
    try:
        async with anyio.create_task_group() as tg:
            api = ReadApi(
                settings,
                buffer=buffer,
                flusher=flusher,
                metrics=metrics,
                health=health,
                rejects=rejects,
                sparkplug=ingest.taker.sparkplug_state,
                replication=shipper.describe if shipper is not None else None,
            )
            await _serve_pages(tg, settings, httpserver.LocalPages(metrics, health), api, worker)
            _start_background(tg, flusher, chores, b)
            watch = LoopWatch(
                health.loop_lag,
                metrics.loop_lag,
                interval_s=settings.metrics.loop_lag_interval_s,
                warn_after_s=settings.metrics.max_loop_lag_s,
            )
            tg.start_soon(watch.run, name="gateway.loop_lag")
            # What start-up made (modules, classes, functions: most of the heap) lives as long
            # as the process; left to the collector, each of its full passes walked all of it
            # in the event loop, about 30 ms, the worst of the PUBACK delay at 1,000 devices.
            gc.freeze()
            # A group commit holds thousands of readings alive for a few milliseconds; with the
            # default thresholds (700, 10, 10) each was walked by a dozen young collections on
            # its way, 8 % of the CPU at 100 readings per message. Memory stayed the same.
            gc.set_threshold(*GC_THRESHOLDS)
            intake = anyio.CancelScope()
            intake_closed = anyio.Event()
            retiring = retire or (worker is not None and worker.slot.index is None)
            job = _retire(ingest, flusher) if retiring else ingest.run()
            tg.start_soon(_run_intake, job, intake, intake_closed, name="gateway.ingest")
            if shipper is not None:
                tg.start_soon(shipper.run, name="gateway.replication")
                tg.start_soon(
                    pairing.step_down_when_deposed, shipper, intake, name="gateway.deposed"
                )
            with anyio.open_signal_receiver(*STOP_SIGNALS, signal.SIGHUP) as signals:
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        reloader.reload()
                        continue
                    logger.info(
                        "%s: closing intake, flushing for up to %.0f s",
                        signal.Signals(signum).name,
                        reloader.settings.flush.grace_s,
                    )
                    break
                notifier.send(STOPPING="1", STATUS="closing intake and flushing")
                intake.cancel()
                await intake_closed.wait()
                started = time.monotonic()
                with anyio.move_on_after(reloader.settings.flush.grace_s) as grace:
                    tg.start_soon(_skip_on_second_signal, signals, grace)
                    await flusher.drain()
            left = buffer.totals()
            logger.info(
                "stopped after flushing for %.1f s; %d readings stay buffered for the next start",
                time.monotonic() - started,
                left.readings,
            )
            retired = retiring and not left.readings and not buffer.dead_letter_count()
            tg.cancel_scope.cancel()
        # Reached only by a stop through the graceful path: every message taken is committed
        # and acknowledged, and the next start needs no care.
        breaker.stopped_cleanly()
    finally:
        await _close(sinks, buffer)
        notifier.close()
    if retired:
        workers.remove_environment(settings.buffer.path)
        logger.info("retired %s: delivered and removed", settings.buffer.path)


def _make_flusher(
    buffer: Buffer, sinks: list[Sink], resolved: list[ResolvedSink], metrics: Metrics
) -> Flusher | Fanout:
    """A flusher per sink; with several, one face for them (gateway/flush/fanout.py)."""
    flushers = [
        Flusher(buffer, sink, r.flush, metrics, r.name)
        for sink, r in zip(sinks, resolved, strict=True)
    ]
    for one in flushers:
        metrics.sinks.lag_seconds.labels(one.name).set_function(functools.partial(_lag_now, one))
        metrics.sinks.backlog.labels(one.name).set_function(
            functools.partial(_backlog_of, buffer, one.name)
        )
    return flushers[0] if len(flushers) == 1 else Fanout(buffer, flushers, resolved)


def _lag_now(flusher: Flusher) -> float:
    return flusher.lag_s(time.monotonic())


def _backlog_of(buffer: Buffer, name: str) -> float:
    return sum(buffer.sink_backlog(name).values()) if buffer.shared else buffer.totals().readings


def _make_ingest(
    settings: Settings,
    buffer: Buffer,
    flusher: Flusher | Fanout,
    metrics: Metrics,
    *,
    health: Health,
    notifier: Notifier,
    breaker: Breaker,
    rejects: RejectLog,
    gate: AckGate | None = None,
) -> Ingest:
    b = settings.buffer
    return Ingest(
        settings=settings.mqtt,
        commit_max_readings=b.commit_max_readings,
        commit_target_readings=b.commit_target_readings,
        commit_window_s=b.commit_window_ms / 1000,
        buffer=buffer,
        decoder=_make_decoder(settings, buffer, metrics),
        metrics=metrics,
        on_commit=flusher.notify,
        on_drop=flusher.forget,
        space_freed=lambda: flusher.space_freed,
        rules=rules_of(settings, buffer.budget_bytes),
        health=health,
        on_ready=_ReadyOnce(notifier).ready,
        broker_stats=metrics.broker,
        rejects=rejects,
        breaker=breaker,
        fault=faults.from_environment(),
        sparkplug_host_id=settings.sparkplug.host_id,
        gate=gate,
    )


async def _deliver_until_empty(settings: Settings, metrics: Metrics) -> None:
    """Deliver everything the buffer holds, taking no readings; returns once it is empty.

    A box that served as the primary and now starts as the standby of another may hold
    readings it acknowledged that the other never had: they go to the database before its
    buffer becomes a replica (gateway/service/pairing.py).
    """
    resolved = settings.resolved_sinks()
    buffer = _open_buffer(settings, metrics, [s.name for s in resolved])
    sinks = [make_sink(s.influx) for s in resolved]
    try:
        flusher = _make_flusher(buffer, sinks, resolved, metrics)
        async with anyio.create_task_group() as tg:
            tg.start_soon(flusher.run, name="gateway.flush")
            await flusher.drain()
            tg.cancel_scope.cancel()
    finally:
        await _close(sinks, buffer)


async def _close(sinks: list[Sink], buffer: Buffer) -> None:
    """Close the sinks' connections, whatever cancels around it, then sync and close."""
    with anyio.CancelScope(shield=True):
        for sink in sinks:
            await sink.aclose()
    buffer.sync()
    buffer.close()


def _make_decoder(settings: Settings, buffer: Buffer, metrics: Metrics) -> Decoder:
    """The decoder, with the Sparkplug B state the buffer kept (alias maps survive restarts)."""
    decoder = Decoder(
        settings.mqtt.subscriptions, settings.limits, settings.sparkplug, metrics.sparkplug_state
    )
    if decoder.sparkplug is not None:
        sessions = decoder.sparkplug.sessions
        metrics.watch_sparkplug(sessions)
        sessions.load(buffer.notes(NOTE_PREFIX))
        if sessions.nodes:
            logger.info(
                "Sparkplug B state loaded: %d edge nodes, %d metric definitions",
                len(sessions.nodes),
                sessions.definitions,
            )
    return decoder


def _start_background(
    tg: anyio.abc.TaskGroup, flusher: Flusher | Fanout, chores: Housekeeping, b: BufferSettings
) -> None:
    tg.start_soon(flusher.run, name="gateway.flush")
    tg.start_soon(chores.run, name="gateway.housekeeping")
    if b.sync == "interval":
        tg.start_soon(_sync_every, chores.buffer, b.sync_interval_ms / 1000, name="gateway.sync")


async def _serve_pages(
    tg: anyio.abc.TaskGroup,
    settings: Settings,
    pages: httpserver.LocalPages,
    api: ReadApi,
    worker: Worker | None,
) -> None:
    """A worker shows its pages to its parent; a gateway alone on `[metrics] listen`."""
    routes = [*api.routes(), *statuspage.routes()] if settings.api.enabled else []
    if worker is not None:
        await tg.start(httpserver.serve_unix, worker.control_socket, pages, routes)
        tg.start_soon(_stop_when_orphaned, worker.parent_pid, name="gateway.parent")
    elif settings.metrics.enabled:
        m = settings.metrics
        await tg.start(
            functools.partial(httpserver.serve, registry=pages.registry), m, pages, routes
        )
        logger.info(
            "metrics on %s://%s/metrics, health on /healthz and /readyz%s%s",
            "https" if m.tls_cert_file else "http",
            m.listen,
            ", read API on /api/v1 and the status page on /" if routes else "",
            ", bearer token required" if m.token else "",
        )
        for warning in advice.warnings(settings):
            logger.warning("%s", warning)


def _open_buffer(settings: Settings, metrics: Metrics, sinks: list[str]) -> Buffer:
    """Open the buffer for `sinks` and start the metrics from what it holds."""
    b = settings.buffer
    # Without the read API nothing reads the last-value table: no need to keep it.
    latest_series = settings.api.latest_series if settings.api.enabled else 0
    buffer = Buffer(
        b.path,
        int(b.capacity),
        b.sync,
        latest_series=latest_series,
        decoded_cache_bytes=b.decoded_cache_max_bytes,
        seal_pending_bytes=b.seal_pending_max_bytes,
        redelivery_fence=True,
        sinks=sinks,
    )
    totals = buffer.totals()
    levels = buffer.level_counts()
    raw = levels.get(0, (0, 0))[0]
    summaries = Counter({level: n for level, (n, _) in levels.items() if level})
    logger.info(
        "buffer open at %s: %d readings and %d summaries from %d devices waiting, %d of %d "
        "budget bytes used (disk budget %d bytes), sync mode %s, policy %s",
        b.path,
        raw,
        summaries.total(),
        totals.devices,
        totals.nbytes,
        buffer.budget_bytes,
        buffer.capacity_bytes,
        b.sync,
        b.policy,
    )
    metrics.set_buffer_limits(buffer.capacity_bytes, buffer.budget_bytes)
    metrics.summary_steps_s = b.compact_steps_s
    # Readings lost with chunks found damaged at start were buffered by an earlier run: they
    # count as recovered and dropped (reason damaged), so the identity shows them; summaries
    # lost with them count as recovered and dropped summaries of their level.
    chunks, lost = buffer.damaged()
    summaries_lost = buffer.damaged_summaries()
    metrics.accounting = Accounting(
        recovered=raw + sum(lost.values()), summaries_recovered=summaries + summaries_lost
    )
    metrics.buffer_damaged(chunks, lost, summaries_lost)
    buffer.on_damaged = metrics.buffer_damaged
    # The buffer tells of summaries lost later apart, by level, before the chunk's readings.
    buffer.on_damaged_summaries = metrics.summaries_damaged
    metrics.observe_buffer(totals)
    return buffer


class _ReadyOnce:
    """READY=1 to systemd the first time the gateway is subscribed, with the buffer open."""

    def __init__(self, notifier: Notifier) -> None:
        self._notifier = notifier
        self._sent = False

    def ready(self) -> None:
        if not self._sent:
            self._notifier.send(READY="1", STATUS="subscribed; taking readings")
            self._sent = True


async def _run_intake(job: Awaitable[None], scope: anyio.CancelScope, closed: anyio.Event) -> None:
    with scope:
        await job
    closed.set()


async def _retire(ingest: Ingest, flusher: Flusher | Fanout) -> None:
    """Take what the old session holds, end it, deliver everything, then stop."""
    await ingest.run(retire_quiet_s=RETIRE_QUIET_S)
    await flusher.drain()
    os.kill(os.getpid(), signal.SIGTERM)
    await anyio.sleep_forever()


async def _stop_when_orphaned(parent_pid: int) -> None:
    """A worker whose parent died (kill -9) stops as if told to: nobody would restart it."""
    # No event exists for it (prctl's PDEATHSIG is Linux-only and lost across a fork race).
    while os.getppid() == parent_pid:  # noqa: ASYNC110
        await anyio.sleep(ORPHAN_CHECK_S)
    logger.warning("the parent process is gone; stopping")
    os.kill(os.getpid(), signal.SIGTERM)


async def _skip_on_second_signal(signals: object, grace: anyio.CancelScope) -> None:
    async for signum in signals:  # type: ignore[attr-defined]
        if signum == signal.SIGHUP:
            continue
        logger.warning("second signal: leaving the rest buffered")
        grace.cancel()
        return


async def _sync_every(buffer: Buffer, interval_s: float) -> None:
    while True:
        await anyio.sleep(interval_s)
        await anyio.to_thread.run_sync(buffer.sync)
