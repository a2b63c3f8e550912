"""The flusher's count of waiting readings against a real buffer: nothing gone waits for ever.

A commit wakes the sleeping workers only when it is the first reading known to wait. During a
live-first drain the flusher counts the backlog and the live stream apart, while the buffer
ends a FIFO's split on its own once its backlog is gone; drops of such a FIFO take live
readings. Counts taken off the wrong stream must come off the other one, or readings long gone
keep the workers asleep while new ones wait in the buffer (the pressure fault test's stall).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import anyio
import pytest

from gateway.buffer.core.admission import Lane, Policy, Rules
from gateway.buffer.core.ledger import fifo_name
from gateway.buffer.store import Buffer
from gateway.config.sections import FlushSettings
from gateway.flush.flusher import Flusher
from gateway.observe.metrics import Metrics
from gateway.points.model import Reading
from gateway.points.record import pack

if TYPE_CHECKING:
    from pathlib import Path

DROPPING = Lane(policy=Policy.DROP_OLDEST, device_class="x")
# Device "a" in a class of its own, so that the readings it is given drop its own oldest.
A = fifo_name("a", "x")
SETTINGS = FlushSettings(
    batch_floor=2, batch_initial=2, batch_ceiling=2, linger_s=0.05, max_in_flight=1, gzip=False
)


def rec(device: str, ts: int) -> bytes:
    return pack(Reading(device, "m", (("d", device),), (("v", float(ts)),), ts))


class Database:
    """Takes every write and keeps its lines."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.wrote = anyio.Event()

    async def write(self, body: bytes, *, encoding: str | None = None) -> None:
        assert encoding is None
        self.lines += body.split(b"\n")
        self.wrote.set()

    async def ready(self) -> bool:
        return True

    async def aclose(self) -> None:
        pass


async def drain(flusher: Flusher, buffer: Buffer) -> None:
    """Send batches as the workers would pick them until the buffer is empty."""
    with anyio.fail_after(5):
        while buffer.totals().readings:
            wanted, _, live = flusher._pick()
            if wanted:
                await flusher._flush(wanted, live=live)
            else:
                await anyio.sleep(0.01)


@pytest.mark.anyio
async def test_a_commit_after_live_readings_were_dropped_as_backlog_is_written(
    tmp_path: Path,
) -> None:
    """Drops of live readings counted off the backlog: once the buffer is empty nothing is
    known to wait, and the next commit wakes the sleeping workers."""
    with Buffer(tmp_path, 16 << 20) as buffer:
        buffer.append([(A, rec("a", 1)), (A, rec("a", 2)), ("b", rec("b", 1))])
        database = Database()
        flusher = Flusher(buffer, database, SETTINGS, Metrics())

        # The first write lands: b's reading is the backlog of a live-first drain, and a's
        # FIFO, empty then, is not split.
        await flusher._flush([(A, 2)], live=False)
        assert buffer.backlog() == {"b": 1}
        live = [(A, rec("a", ts)) for ts in range(10, 16)]
        buffer.append(live)
        flusher.notify(len(live))

        # a's FIFO, the largest, has its oldest (live) readings dropped for new ones of a.
        full = Rules(buffer.totals().nbytes, high=1.0, low=0.5, lanes={"x": DROPPING})
        admitted = buffer.admit([(A, rec("a", ts), DROPPING) for ts in (16, 17, 18)], full)
        dropped = sum(admitted.dropped.values())
        assert admitted.stored == 3
        assert dropped >= 2, "more dropped than the backlog of one reading"
        assert buffer.devices()["b"].readings == 1, "the drops took a's live readings"
        flusher.notify(admitted.stored)
        flusher.forget(dropped)

        await drain(flusher, buffer)
        assert flusher.lag_s(time.monotonic()) == 0.0, "an empty buffer has no lag"

        async with anyio.create_task_group() as tg:
            tg.start_soon(flusher.run)
            # The workers found nothing to send and sleep until a commit wakes them.
            await anyio.wait_all_tasks_blocked()
            database.wrote = anyio.Event()
            buffer.append([(A, rec("a", 20))])
            flusher.notify(1)
            with anyio.fail_after(2):
                await database.wrote.wait()
            tg.cancel_scope.cancel()
        assert buffer.totals().readings == 0
        assert database.lines[-1].endswith(b" 20")
