"""The event loop's lag: a task that sleeps a short interval and records how late it woke.

Every wake-up goes into `gateway_event_loop_lag_seconds` and the recent window that `/healthz`,
the status page and `gateway_event_loop_lag_max_seconds` read (gateway/observe/looplag.py).
A stall longer than `[metrics] max_loop_lag_s` is logged twice: by a watcher thread while it
lasts, with where the loop is stuck (so the journal shows it before systemd's watchdog kills a
gateway stuck for good), and by the task once the loop is back, with how long it lasted. The
thread only reads the time the task is due; it never touches the loop.
"""

from __future__ import annotations

import logging
import sys
import sysconfig
import threading
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from types import FrameType

    from prometheus_client import Histogram

    from gateway.observe.looplag import LoopLag

logger = logging.getLogger(__name__)

# Frames of Python itself and of libraries (asyncio, anyio) left out of that line; the gateway's
# own are kept wherever it is installed (site-packages too).
LIBRARY_DIRS = tuple(
    {sysconfig.get_paths()[name] for name in ("stdlib", "platstdlib", "purelib", "platlib")}
)
PACKAGE_DIR = str(Path(__file__).resolve().parent.parent)

# How often the watcher thread looks: a stall is logged at most this long after it passed the
# limit, and an idle box wakes once a second for it.
WATCH_EVERY_S = 1.0
# Innermost frames of the stalled loop's stack named in the log line, those of Python and its
# libraries left out: where it is stuck and what called it (a stall in a buffer read is a drop's
# or a flush's).
STACK_FRAMES = 24


class LoopWatch:
    """Samples the loop's lag into `histogram` and `lag`; `run` does it until cancelled."""

    def __init__(
        self, lag: LoopLag, histogram: Histogram, *, interval_s: float, warn_after_s: float
    ) -> None:
        """Sample every `interval_s`; log stalls longer than `warn_after_s`."""
        self._lag = lag
        self._histogram = histogram
        self._interval_s = interval_s
        self._warn_after_s = warn_after_s
        self._due: float | None = None

    async def run(self) -> None:
        """Sleep, record how late the wake-up was, again; with the watcher thread alongside."""
        stop = threading.Event()
        watcher = threading.Thread(
            target=self._watch,
            args=(stop, threading.get_ident()),
            name="gateway.loopwatch",
            daemon=True,
        )
        watcher.start()
        try:
            while True:
                self._due = due = time.monotonic() + self._interval_s
                self._lag.sleeping_until(due)
                await anyio.sleep(self._interval_s)
                self._due = None
                lag_s = self._lag.woke(time.monotonic())
                self._histogram.observe(lag_s)
                if lag_s > self._warn_after_s:
                    logger.warning(
                        "the event loop stalled for %.1f s (more than max_loop_lag_s %g s): "
                        "no PUBACK, write or health answer went out meanwhile",
                        lag_s,
                        self._warn_after_s,
                    )
        finally:
            # Not joined: it ends within WATCH_EVERY_S, and the loop must not wait for it.
            stop.set()

    def _watch(self, stop: threading.Event, loop_thread: int) -> None:
        reported: float | None = None
        while not stop.wait(WATCH_EVERY_S):
            due = self._due
            if due is None or due == reported:
                continue
            overdue_s = time.monotonic() - due
            if overdue_s > self._warn_after_s:
                # A documented CPython function despite its underscore; the only way to see
                # another thread's stack without stopping it.
                frame = sys._current_frames().get(loop_thread)  # noqa: SLF001
                logger.warning(
                    "the event loop has not turned for %.1f s; it is at %s",
                    overdue_s,
                    _where(frame),
                )
                reported = due


def _where(frame: FrameType | None) -> str:
    """The innermost frames of a stack on one line, innermost last."""
    if frame is None:
        return "an unknown place"
    own = [
        f
        for f in traceback.extract_stack(frame)
        if f.filename.startswith(PACKAGE_DIR) or not f.filename.startswith((*LIBRARY_DIRS, "<"))
    ]
    summary = own[-STACK_FRAMES:]
    return " > ".join(
        f"{'/'.join(f.filename.rsplit('/', 2)[-2:])}:{f.lineno} {f.name}" for f in summary
    )
