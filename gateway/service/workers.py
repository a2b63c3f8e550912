"""Where each worker keeps its buffer, which client id it connects as, and what a worker runs.

With `[mqtt] workers = 1` the gateway is one process whose LMDB environment is `buffer.path`
itself and whose MQTT client id is `client_id`, as it always was. With N > 1 worker i keeps its
environment in `buffer.path/worker-i` and connects as `client_id-i`; each takes a share of the
disk budget. An environment that the current N does not use (left by a run with another N) is
retired: a worker connects with that environment's client id, takes what its session still
holds, ends the session, delivers everything and removes the environment.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import ByteSize

from gateway.buffer.environment import DATA_FILE, FILES
from gateway.buffer.rejects import DIRECTORY as REJECTS_DIRECTORY

if TYPE_CHECKING:
    from pathlib import Path

    from gateway.config.settings import Settings

WORKER_PREFIX = "worker-"


@dataclass(frozen=True, slots=True)
class Slot:
    """One LMDB environment and the MQTT session that fills it."""

    path: Path
    client_id: str
    # Index among the configured workers; None for an environment being retired.
    index: int | None


@dataclass(frozen=True, slots=True)
class Worker:
    """What a worker process knows of its place: its slot and how it talks to its parent."""

    slot: Slot
    # The parent reads the worker's /metrics, /healthz and /readyz over this Unix socket.
    control_socket: Path
    parent_pid: int


def slots(settings: Settings) -> list[Slot]:
    """The environments of the configured workers, in worker order."""
    root, client_id, n = settings.buffer.path, settings.mqtt.client_id, settings.mqtt.workers
    if n == 1:
        return [Slot(root, client_id, 0)]
    return [Slot(root / f"{WORKER_PREFIX}{i}", f"{client_id}-{i}", i) for i in range(n)]


def existing(settings: Settings) -> list[Slot]:
    """Every environment under `buffer.path`, used by the configured workers or not."""
    root, client_id = settings.buffer.path, settings.mqtt.client_id
    found = [Slot(root, client_id, None)] if (root / DATA_FILE).exists() else []
    if root.is_dir():
        for child in sorted(root.iterdir()):
            suffix = child.name.removeprefix(WORKER_PREFIX)
            if child.name != suffix and suffix.isdigit() and (child / DATA_FILE).exists():
                found.append(Slot(child, f"{client_id}-{int(suffix)}", None))
    return found


def retired(settings: Settings) -> list[Slot]:
    """The environments left by a run with another number of workers."""
    current = {slot.path for slot in slots(settings)}
    return [slot for slot in existing(settings) if slot.path not in current]


def every_slot(settings: Settings) -> list[Slot]:
    """The configured workers' slots, then those of the environments to retire."""
    return [*slots(settings), *retired(settings)]


def find(settings: Settings, path: Path) -> Slot | None:
    """The slot, configured or retiring, whose environment is at `path`."""
    for slot in every_slot(settings):
        if slot.path == path:
            return slot
    return None


def for_slot(settings: Settings, slot: Slot) -> Settings:
    """The settings one worker runs with: its environment, client id and share of the disk."""
    n = settings.mqtt.workers
    mqtt = settings.mqtt.model_copy(
        update={
            "client_id": slot.client_id,
            # One set of broker counters is enough; the parent sums what the workers export.
            "broker_stats": settings.mqtt.broker_stats and slot.index == 0,
        }
    )
    buffer = settings.buffer.model_copy(
        update={"path": slot.path, "capacity": ByteSize(settings.buffer.capacity // n)}
    )
    return settings.model_copy(update={"mqtt": mqtt, "buffer": buffer})


def remove_environment(path: Path) -> None:
    """Delete a drained environment's files (a worker-N directory entirely)."""
    if path.name.startswith(WORKER_PREFIX):
        shutil.rmtree(path, ignore_errors=True)
        return
    shutil.rmtree(path / REJECTS_DIRECTORY, ignore_errors=True)
    for name in FILES:
        (path / name).unlink(missing_ok=True)
