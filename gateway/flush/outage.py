"""A database outage as the flusher sees it: failed writes in a row, the backoff, the probe.

During an outage one worker tries a write per backoff period (capped full jitter, at least what
a Retry-After asked) and the others wait. A failure without an HTTP response means the database
cannot be reached: it is then pinged every `probe_interval_s`, so that the first write after its
return does not wait out a backoff grown to `retry_max_s`. A database that answers with an
error or a Retry-After keeps its backoff. Each sink has an outage of its own.
"""

from __future__ import annotations

import logging
import math
import random
import time
from typing import TYPE_CHECKING, NoReturn

import anyio

from gateway import backoff
from gateway.errors import SinkError, StorageError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from gateway.config.sections import FlushSettings

logger = logging.getLogger(__name__)


class Outage:
    """Failed writes in a row and when to try again; no failures means no outage."""

    def __init__(self, settings: FlushSettings) -> None:
        """No outage yet; `settings` gives the backoff and the probe interval."""
        self.settings = settings
        self.failures = 0
        # A worker is trying the write of this backoff period.
        self.probing = False
        self._resume_at = 0.0
        # The last failure had no HTTP response: the database's return is probed for.
        self._unreachable = False
        self._began = anyio.Event()

    def wait_s(self) -> float:
        """How long a worker waits before its next write: one probes per period, others wait."""
        if not self.failures:
            return 0.0
        if self.probing:
            return math.inf
        return max(0.0, self._resume_at - time.monotonic())

    def landed(self) -> bool:
        """A write landed: the outage, if any, is over; True when there was one."""
        if not self.failures:
            return False
        logger.info("database accepts writes again after %d failed attempts", self.failures)
        self.failures = 0
        self._unreachable = False
        return True

    def failed(self, exc: SinkError | StorageError) -> None:
        """Schedule the next try with capped full-jitter backoff (honouring Retry-After)."""
        self.failures += 1
        if self.failures == 1:
            _log_first(exc)
        s = self.settings
        delay = backoff.delay_s(self.failures, s.retry_initial_s, s.retry_max_s, random.uniform)
        retry_after = exc.retry_after_s
        if retry_after is not None:
            delay = max(delay, min(retry_after, s.retry_max_s))
        self._resume_at = time.monotonic() + delay
        self._unreachable = isinstance(exc, SinkError) and exc.unreachable
        if self._unreachable:
            self._began.set()

    async def probe_while_unreachable(
        self, ping: Callable[[], Awaitable[bool]], answered: Callable[[bool], None]
    ) -> NoReturn:
        """While the database cannot be reached, `ping` it every `probe_interval_s`.

        `answered` hears each ping's outcome; the outage's backoff ends at the first that
        answers. One ping at a time, and only while the backoff has not ended anyway.
        """
        while True:
            if not self._unreachable:
                self._began = anyio.Event()
                await self._began.wait()
                continue
            await anyio.sleep(self.settings.probe_interval_s)
            if not self._unreachable or self._resume_at <= time.monotonic():
                continue
            ok = await ping()
            if ok and self._unreachable:
                logger.info("the database answers its ping again; writing")
                self._unreachable = False
                self._resume_at = time.monotonic()
            answered(ok)


def _log_first(exc: SinkError | StorageError) -> None:
    """The first failure of an outage is logged; the ones after it are counted only."""
    if isinstance(exc, StorageError):
        logger.error(
            "could not delete delivered readings from the buffer; they stay buffered "
            "and are written again later: %s",
            exc,
        )
        return
    level = logging.ERROR if exc.operator_must_act else logging.WARNING
    logger.log(
        level,
        "database write failed, readings stay buffered and are retried: %s",
        exc,
        extra={"error": str(exc), "retryable": exc.retryable},
    )
