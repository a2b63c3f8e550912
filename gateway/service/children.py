"""The worker processes of a parent: each one's slot and process, and how to ask it.

A worker serves its pages (metrics, health, read API) on a Unix socket in the control
directory; the parent asks it there (gateway/service/supervisor.py).
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING

import aiohttp

from gateway.observe.health import Verdict

if TYPE_CHECKING:
    from pathlib import Path

    from anyio.abc import Process

    from gateway.service.workers import Slot

ASK_TIMEOUT_S = 2.0


ASK_TIMEOUT_S = 2.0


@dataclass(slots=True)
class Child:
    """One worker slot and the process that runs it now."""

    slot: Slot
    socket: Path
    process: Process | None = None
    unhealthy_since: float | None = None
    # Its last /healthz answer, for the parent's own (None until it answered).
    liveness: Verdict | None = None

    @property
    def name(self) -> str:
        """How logs name it: "worker 1", "retiring worker-3"."""
        if self.slot.index is None:
            return f"retiring {self.slot.path.name}"
        return f"worker {self.slot.index}"

    @property
    def label(self) -> str:
        """Its `worker` label in /metrics: "1", "retiring worker-3"."""
        return str(self.slot.index) if self.slot.index is not None else self.name

    @property
    def retiring(self) -> bool:
        """It empties an environment no worker uses any more, then ends."""
        return self.slot.index is None


async def fetch(child: Child, path_qs: str) -> tuple[int, bytes] | None:
    """(status, body) of a worker's answer on its control socket; None if it does not answer."""
    try:
        async with (
            aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=str(child.socket)),
                timeout=aiohttp.ClientTimeout(total=ASK_TIMEOUT_S),
            ) as session,
            session.get(f"http://worker{path_qs}") as response,
        ):
            return response.status, await response.read()
    except (aiohttp.ClientError, TimeoutError):
        return None


async def verdict_of(child: Child, path: str) -> Verdict:
    """A worker's verdict on `path`; not answering is a failing verdict."""
    got = await fetch(child, path)
    try:
        body = json.loads(got[1]) if got is not None else None
    except ValueError:
        body = None
    if got is None or not isinstance(body, dict):
        return Verdict(ok=False, problems=(f"not answering on {path}",), hung=True)
    ok = got[0] == HTTPStatus.OK
    return Verdict(
        ok=ok,
        problems=tuple(body.get("problems", ())),
        hung=not ok and bool(body.get("hung", True)),
    )


def child_environment() -> dict[str, str]:
    """The parent's environment without systemd's notify variables: only the parent talks."""
    env = dict(os.environ)
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        env.pop(name, None)
    return env


def describe_exit(code: int) -> str:
    """How a process ended, for the log."""
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"
