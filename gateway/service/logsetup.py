"""Logging to stdout for journald: one line per event, text or JSON, repeats held back.

Under systemd, stdout is a journal stream (`JOURNAL_STREAM` names it): each line then starts
with its syslog priority (`<4>` for a warning), which journald takes off and files as the
entry's priority, so `journalctl -u gateway -p warning` works; the text format drops its own
timestamp there, since the journal stamps every entry. `format = "json"` writes one object a
line for log shippers, with an ISO 8601 UTC `timestamp` and an event's facts (`extra=`) as
keys of their own.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import IO, TYPE_CHECKING, Any

from pythonjsonlogger.json import JsonFormatter

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

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


# syslog(3) priorities by logging level, for the journal's `<N>` line prefix.
SYSLOG_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def is_journal(stream: IO[Any], environ: Mapping[str, str] | None = None) -> bool:
    """Whether `stream` is the journal stream systemd gave this process (not a pipe it made)."""
    device_inode = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    try:
        stat = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return device_inode == f"{stat.st_dev}:{stat.st_ino}"


class JournalPrefix(logging.Formatter):
    """Puts the syslog priority in front of whatever the inner formatter writes."""

    def __init__(self, inner: logging.Formatter) -> None:
        """Wrap `inner`."""
        super().__init__()
        self._inner = inner

    def format(self, record: logging.LogRecord) -> str:
        """`<N>` and the inner line; a multi-line entry (a traceback) stays one entry."""
        priority = SYSLOG_PRIORITY.get(record.levelno, 6)
        text = self._inner.format(record)
        return f"<{priority}>" + text.replace("\n", f"\n<{priority}>")


def json_formatter() -> logging.Formatter:
    """One JSON object a line: timestamp (ISO 8601, UTC), level, logger, message, facts."""
    static = {"process": _process_tag} if _process_tag else None
    return JsonFormatter(
        ["levelname", "name", "message"],
        rename_fields={"levelname": "level", "name": "logger"},
        static_fields=static,
        timestamp=True,
        json_ensure_ascii=False,
    )


def text_formatter(*, stamped: bool) -> logging.Formatter:
    """`time LEVEL [process] logger: message`, without the time where the journal stamps."""
    where = f"[{_process_tag}] " if _process_tag else ""
    stamp = "%(asctime)s " if stamped else ""
    return logging.Formatter(f"{stamp}%(levelname)s {where}%(name)s: %(message)s")


def setup(level: str = "info", fmt: str = "text", repeat_window_s: float = 0.0) -> None:
    """Configure the root logger; idempotent, so a reload can call it again."""
    handler = logging.StreamHandler(sys.stdout)
    handler.addFilter(RepeatFilter(repeat_window_s))
    journal = is_journal(sys.stdout)
    formatter = json_formatter() if fmt == "json" else text_formatter(stamped=not journal)
    handler.setFormatter(JournalPrefix(formatter) if journal else formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Library chatter at INFO (one line per HTTP request) would drown the gateway's own lines.
    for noisy in ("aiohttp", "influxdb_client", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
