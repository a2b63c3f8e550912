"""SIGHUP: read the configuration again and apply what can change while the gateway runs.

Which keys can change is gateway/config/reload.py's rule; this applies them to the running
parts (logging, the flusher, admission) and logs one line naming what needs a restart.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from gateway.buffer.core.admission import rules_of
from gateway.config import loader as config
from gateway.config.reload import changed_keys, effective, is_reloadable
from gateway.errors import ConfigError
from gateway.service import logsetup, workers

if TYPE_CHECKING:
    from pathlib import Path

    from gateway.config.settings import Settings
    from gateway.flush.fanout import Fanout
    from gateway.flush.flusher import Flusher
    from gateway.ingest.intake import Ingest
    from gateway.service.housekeeping import Housekeeping
    from gateway.service.workers import Slot

logger = logging.getLogger(__name__)


class Reloader:
    """SIGHUP: read the configuration again and apply what can change while running."""

    def __init__(
        self,
        settings: Settings,
        path: Path | None,
        *,
        flusher: Flusher | Fanout,
        ingest: Ingest,
        chores: Housekeeping,
        budget_bytes: int,
        slot: Slot | None,
    ) -> None:
        """Reload `path` into these; `slot`: a worker's, whose settings are derived."""
        self.settings = settings
        self._slot = slot
        self._path = path
        self._flusher = flusher
        self._ingest = ingest
        self._chores = chores
        self._budget_bytes = budget_bytes

    def reload(self) -> None:
        """Apply what changed; a configuration with errors changes nothing."""
        if self._path is None:
            logger.warning("SIGHUP: no configuration file to reload")
            return
        try:
            new = config.load(self._path)
            if self._slot is not None:
                new = workers.for_slot(new, self._slot)
        except ConfigError as exc:
            logger.error(  # noqa: TRY400 - the problems are the message
                "SIGHUP: %s has errors, nothing reloaded: %s", self._path, "; ".join(exc.problems)
            )
            return
        keys = changed_keys(self.settings, new)
        applied = [k for k in keys if is_reloadable(k)]
        ignored = [k for k in keys if not is_reloadable(k)]
        self.settings = settings = effective(self.settings, new)
        if any(k.startswith("log.") for k in applied):
            log = settings.log
            logsetup.setup(log.level, log.format, log.repeat_window_s)
            self._chores.summary_interval_s = log.summary_interval_s
        if any(k.startswith("flush.") for k in applied):
            self._flusher.reconfigure(settings.flush)
        if any(k.startswith("buffer.") for k in applied):
            self._ingest.reconfigure(rules_of(settings, self._budget_bytes))
        logger.info(
            "SIGHUP: reloaded %s; %s",
            ", ".join(applied) or "nothing (no reloadable key changed)",
            f"not reloaded, restart to apply: {', '.join(ignored)}" if ignored else "all applied",
        )
