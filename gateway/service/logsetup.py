"""Logging to stdout for journald: one line per event, text or JSON, repeats held back."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

# Remembered distinct lines for repeat suppression; beyond it the memory starts afresh.
REPEAT_MEMORY = 1000


class RepeatFilter(logging.Filter):
    """Holds back a repeated line for `window_s`; the next one passed says how many it held."""

    def __init__(self, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        """`clock` is a parameter for the tests."""
        super().__init__()
        self.window_s = window_s
        self._clock = clock
        self._seen: dict[tuple[str, int, str], list[float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        """False for a repeat inside the window."""
        if not self.window_s:
            return True
        key = (record.name, record.levelno, record.getMessage())
        now = self._clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.window_s:
            seen[1] += 1
            return False
        if len(self._seen) >= REPEAT_MEMORY:
            self._seen.clear()
        if seen is not None and seen[1]:
            since = now - seen[0]
            record.msg = f"{key[2]} ({int(seen[1])} more like this in the last {since:.0f} s)"
            record.args = None
        self._seen[key] = [now, 0]
        return True


# Which process of a gateway with workers wrote a line ("worker-1", "retiring worker-3").
_process_tag = ""


def tag_process(tag: str) -> None:
    """Name this process in every line from now on, reloads included."""
    global _process_tag  # noqa: PLW0603 - one per process, set once before setup
    _process_tag = tag


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self.formatTime(record),
            "level": record.levelname.lower(),
            **({"process": _process_tag} if _process_tag else {}),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup(level: str = "info", fmt: str = "text", repeat_window_s: float = 0.0) -> None:
    """Configure the root logger; idempotent, so a reload can call it again."""
    handler = logging.StreamHandler(sys.stdout)
    handler.addFilter(RepeatFilter(repeat_window_s))
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        where = f"[{_process_tag}] " if _process_tag else ""
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s {where}%(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Library chatter at INFO (one line per HTTP request) would drown the gateway's own lines.
    for noisy in ("aiohttp", "influxdb_client", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
