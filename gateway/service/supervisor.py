"""The parent of a gateway with workers: starts, watches and restarts them, and speaks for them.

Each worker is `gateway run` in a process of its own (its own MQTT connection in the shared
subscription group, LMDB environment and flusher; see gateway/service/workers.py), so a crash or a
hung event loop costs one worker, which is restarted, never the readings it acknowledged: they are
in its environment, and what it had not acknowledged comes again from the broker to its session.

The parent serves `[metrics] listen` for all of them: /metrics sums the workers' pages, /readyz is
ready when every worker is, and systemd hears READY, WATCHDOG and STOPPING from the parent only
(the unit needs `KillMode=mixed`, so that SIGTERM reaches the workers once, from it).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from gateway import backoff
from gateway.api import httpserver, statuspage
from gateway.buffer.environment import lock_exclusively
from gateway.observe import metricsmerge
from gateway.observe.health import Verdict
from gateway.service import workerapi, workers
from gateway.service.children import Child, child_environment, describe_exit, fetch, verdict_of
from gateway.service.sdnotify import Notifier

if TYPE_CHECKING:
    from gateway.config.settings import Settings

logger = logging.getLogger(__name__)

LOCK_FILE = "supervisor.lock"
# A worker that crashes is started again after this, doubling up to the cap; a worker that ran
# this long before crashing starts the doubling over.
RESTART_INITIAL_S = 0.5
RESTART_MAX_S = 30.0
RESTART_RESET_AFTER_S = 60.0
# A worker whose /healthz says its loop is hung (or does not answer) this long is killed and
# restarted; one that reports a stall that is over is not (a restart would not help it).
HUNG_AFTER_S = 30.0
CHECK_EVERY_S = 2.0
# What a worker is given after SIGTERM before the parent stops waiting: its flush grace plus this.
STOP_MARGIN_S = 10.0


class Supervisor:
    """Runs one child process per slot until told to stop; serves the pages of all of them."""

    def __init__(self, settings: Settings, config_path: Path, control_dir: Path) -> None:
        """Plan a child for each configured worker and each environment to retire."""
        self._settings = settings
        self._config_path = config_path
        self._stopping = anyio.Event()
        self._children = [
            Child(slot, control_dir / f"{i}.sock")
            for i, slot in enumerate(workers.every_slot(settings))
        ]
        self.registry = CollectorRegistry(auto_describe=False)
        self._running = Gauge(
            "gateway_workers_running",
            "Worker processes running (those retiring old environments included)",
            registry=self.registry,
        )
        self._restarts = Counter(
            "gateway_worker_restarts",
            "Times a worker was started again after it exited or hung",
            ["worker"],
            registry=self.registry,
        )
        for child in self._children:
            self._restarts.labels(child.label)

    async def run(self) -> None:
        """Start every child, keep them running, and stop them all on SIGTERM or SIGINT."""
        notifier = Notifier()
        for child in self._children:
            if child.retiring:
                logger.info(
                    "%s holds an environment this number of workers does not use: taking what "
                    "the broker still keeps for %s, delivering everything, then removing it",
                    child.slot.path,
                    child.slot.client_id,
                )
        try:
            async with anyio.create_task_group() as tg:
                if self._settings.metrics.enabled:
                    api = self._settings.api.enabled
                    path = str(self._settings.buffer.path)
                    routes = (
                        [*workerapi.routes(self.ask, path), *statuspage.routes()] if api else []
                    )
                    serve = functools.partial(httpserver.serve, registry=self.registry)
                    await tg.start(serve, self._settings.metrics, self, routes)
                for child in self._children:
                    tg.start_soon(self._keep_running, child, name=f"gateway.{child.name}")
                tg.start_soon(self._watch, notifier, name="gateway.watch")
                with anyio.open_signal_receiver(
                    signal.SIGTERM, signal.SIGINT, signal.SIGHUP
                ) as signals:
                    async for signum in signals:
                        if signum == signal.SIGHUP:
                            logger.info("SIGHUP: passing it on to the workers")
                            self._signal_all(signal.SIGHUP)
                            continue
                        if not self._stopping.is_set():
                            self._stopping.set()
                            notifier.send(STOPPING="1", STATUS="stopping the workers")
                            logger.info("%s: stopping the workers", signal.Signals(signum).name)
                            tg.start_soon(self._stop_all, tg.cancel_scope)
                        self._signal_all(signal.SIGTERM)
        finally:
            with anyio.CancelScope(shield=True):
                for child in self._children:
                    if child.process is not None and child.process.returncode is None:
                        child.process.kill()
                        await child.process.wait()
            notifier.close()

    async def _keep_running(self, child: Child) -> None:
        failures = 0
        while not self._stopping.is_set():
            started = time.monotonic()
            child.process = await anyio.open_process(
                self._command(child),
                stdin=subprocess.DEVNULL,
                stdout=None,
                stderr=None,
                env=child_environment(),
                start_new_session=True,
            )
            self._running.inc()
            code = await child.process.wait()
            self._running.dec()
            if self._stopping.is_set():
                return
            if child.retiring and code == 0:
                return  # delivered and removed: its job is done
            if time.monotonic() - started > RESTART_RESET_AFTER_S:
                failures = 0
            delay = backoff.delay_s(failures, RESTART_INITIAL_S, RESTART_MAX_S, random.uniform)
            failures += 1
            logger.error(
                "%s (pid %d) %s; starting it again in %.1f s",
                child.name,
                child.process.pid,
                describe_exit(code),
                delay,
            )
            await anyio.sleep(delay)
            self._restarts.labels(child.label).inc()

    def _command(self, child: Child) -> list[str]:
        return [
            sys.executable,
            "-m",
            "gateway",
            "run",
            "--config",
            str(self._config_path),
            "--worker-slot",
            str(child.slot.path),
            "--control-socket",
            str(child.socket),
            "--parent-pid",
            str(os.getpid()),
        ]

    async def _watch(self, notifier: Notifier) -> None:
        """READY once every worker is; WATCHDOG while this loop turns; kill hung workers."""
        ready = False
        tick_s = min(CHECK_EVERY_S, notifier.watchdog_interval_s or CHECK_EVERY_S)
        while True:
            now = time.monotonic()
            for child in self._active():
                verdict = await verdict_of(child, "/healthz")
                child.liveness = verdict
                if not verdict.hung:
                    child.unhealthy_since = None
                elif child.unhealthy_since is None:
                    child.unhealthy_since = now
                elif now - child.unhealthy_since > HUNG_AFTER_S and child.process is not None:
                    logger.error(
                        "%s has not been healthy for %.0f s (%s); killing it",
                        child.name,
                        now - child.unhealthy_since,
                        "; ".join(verdict.problems),
                    )
                    child.process.kill()
                    child.unhealthy_since = None
            if not ready and (await self.readiness()).ok:
                ready = True
                notifier.send(READY="1", STATUS=f"{len(self._intake())} workers taking readings")
            notifier.send(WATCHDOG="1")
            await anyio.sleep(tick_s)

    async def _stop_all(self, scope: anyio.CancelScope) -> None:
        wait_s = self._settings.flush.grace_s + STOP_MARGIN_S
        with anyio.move_on_after(wait_s):
            for child in self._children:
                if child.process is not None:
                    await child.process.wait()
        scope.cancel()

    def _signal_all(self, signum: signal.Signals) -> None:
        for child in self._active():
            if child.process is not None:
                child.process.send_signal(signum)

    def _active(self) -> list[Child]:
        return [c for c in self._children if c.process is not None and c.process.returncode is None]

    def _intake(self) -> list[Child]:
        return [c for c in self._children if not c.retiring]

    async def metrics(self) -> bytes:
        """Every running worker's series, labelled by worker, then the parent's own."""
        pages = []
        for child in self._active():
            got = await fetch(child, "/metrics")
            if got is not None:  # a worker starting or stopping is absent from this scrape
                pages.append((child.label, got[1].decode()))
        return metricsmerge.merge(pages) + generate_latest(self.registry)

    async def ask(self, path_qs: str) -> list[tuple[int, dict[str, Any]]]:
        """(status, JSON body) of every running worker's answer to GET `path_qs`."""
        answers = []
        for child in self._active():
            got = await fetch(child, path_qs)
            if got is not None:
                with contextlib.suppress(ValueError):
                    answers.append((got[0], json.loads(got[1])))
        return answers

    async def liveness(self) -> Verdict:
        """Alive while every worker runs and none reported a stall at the last check.

        A crashed worker is being restarted; a hung one is killed after HUNG_AFTER_S.
        """
        problems = [f"{c.name} is not running" for c in self._intake() if c not in self._active()]
        for child in self._active():
            verdict = child.liveness
            if verdict is not None and not verdict.ok and not verdict.hung:
                problems.extend(f"{child.name}: {problem}" for problem in verdict.problems)
        return Verdict(not problems, tuple(problems))

    async def readiness(self) -> Verdict:
        """Ready when every configured worker is."""
        problems: list[str] = []
        for child in self._intake():
            if child not in self._active():
                problems.append(f"{child.name} is not running")
                continue
            verdict = await verdict_of(child, "/readyz")
            problems.extend(f"{child.name}: {problem}" for problem in verdict.problems)
        return Verdict(not problems, tuple(problems))


async def run(settings: Settings, config_path: Path) -> None:
    """Run the workers of `settings` until SIGTERM or SIGINT."""
    settings.buffer.path.mkdir(parents=True, exist_ok=True)
    lock = lock_exclusively(settings.buffer.path / LOCK_FILE)
    control_dir = Path(tempfile.mkdtemp(prefix="gateway-"))
    try:
        logger.info(
            "starting %d workers in shared subscription group %r",
            settings.mqtt.workers,
            settings.mqtt.share_group,
        )
        await Supervisor(settings, config_path, control_dir).run()
    finally:
        shutil.rmtree(control_dir, ignore_errors=True)
        lock.close()
