"""`gateway dead-letters list|replay|purge`: points the database refused, and what to do with them.

The dead-letter database lives in the buffer's LMDB environment but outside its accounting, so
this may open it while the gateway runs (LMDB serializes writers across processes). Replay writes
each point through the configured sink and removes only what the database accepted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

from gateway.buffer.deadletters import DeadLetterStore
from gateway.errors import SinkError, SinkPartial, SinkRejected
from gateway.flush.sinks import make_sink

if TYPE_CHECKING:
    from pathlib import Path

    from gateway.config.settings import Settings


def list_letters(store: DeadLetterStore) -> str:
    """One block per dead letter: id, device, reason, line."""
    blocks = [f"#{d.id} device={d.device}\n  reason: {d.reason}\n  line:   {d.line}" for d in store]
    return "\n".join(blocks) if blocks else "no dead letters"


def purge(store: DeadLetterStore, ids: list[int] | None) -> str:
    """Remove the given dead letters, or all of them."""
    chosen = ids or [d.id for d in store]
    return f"purged {store.remove(chosen)} dead letters"


async def replay(store: DeadLetterStore, settings: Settings, ids: list[int] | None) -> str:
    """Write dead letters to the database again; remove those it accepts."""
    sink = make_sink(settings.influx)
    delivered: list[int] = []
    refused: list[str] = []
    try:
        for letter in list(store):
            if ids and letter.id not in ids:
                continue
            try:
                await sink.write(letter.line.encode())
            except SinkPartial as exc:  # one line: the database's reason for it is the news
                refused.append(f"#{letter.id}: {exc.lines[0][1]}")
            except SinkRejected as exc:
                refused.append(f"#{letter.id}: {exc}")
            else:
                delivered.append(letter.id)
    except SinkError as exc:
        refused.append(f"stopped: the database is not accepting writes: {exc}")
    finally:
        store.remove(delivered)
        await sink.aclose()
    return "\n".join([f"replayed {len(delivered)} dead letters", *refused])


def run(settings: Settings, action: str, ids: list[int] | None, path: Path) -> int:
    """The dead-letters command on the environment at `path`; 1 when a replay left some."""
    store = DeadLetterStore.open(path, int(settings.buffer.capacity))
    try:
        if action == "list":
            print(list_letters(store))
            return 0
        if action == "purge":
            print(purge(store, ids))
            return 0
        report = anyio.run(replay, store, settings, ids)
        print(report)
        return 0 if report.count("\n") == 0 else 1
    finally:
        store.close()
