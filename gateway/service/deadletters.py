"""`gateway dead-letters list|replay|purge`: points the database refused, and what to do with them.

The dead-letter database lives in the buffer's LMDB environment but outside its accounting, so
this may open it while the gateway runs (LMDB serializes writers across processes). Replay writes
each point to the first sink (or the one `--sink NAME` names) and removes only what that
database accepted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

from gateway.buffer.deadletters import DeadLetterStore
from gateway.errors import ConfigError, SinkError, SinkPartial, SinkRejected
from gateway.flush.sinks import make_sink

if TYPE_CHECKING:
    from pathlib import Path

    from gateway.config.sections import InfluxSettings
    from gateway.config.settings import Settings


def list_letters(store: DeadLetterStore) -> str:
    """One block per dead letter: id, device, reason, line."""
    blocks = [f"#{d.id} device={d.device}\n  reason: {d.reason}\n  line:   {d.line}" for d in store]
    return "\n".join(blocks) if blocks else "no dead letters"


def purge(store: DeadLetterStore, ids: list[int] | None) -> str:
    """Remove the given dead letters, or all of them."""
    chosen = ids or [d.id for d in store]
    return f"purged {store.remove(chosen)} dead letters"


def replay_target(settings: Settings, sink_name: str | None) -> InfluxSettings:
    """The database a replay writes to: the sink named, or the first one.

    Raises:
        ConfigError: no sink has that name; the message lists those there are.
    """
    if sink_name is None:
        return settings.primary_influx
    sinks = settings.resolved_sinks()
    for sink in sinks:
        if sink.name == sink_name:
            return sink.influx
    there = ", ".join(repr(sink.name) for sink in sinks)
    raise ConfigError([f"--sink {sink_name!r}: no sink has that name (the sinks: {there})"])


async def replay(
    store: DeadLetterStore,
    settings: Settings,
    ids: list[int] | None,
    sink_name: str | None = None,
) -> str:
    """Write dead letters to a database again; remove those it accepts.

    The database is the first sink's, or that of the sink named `sink_name`.

    Raises:
        ConfigError: no sink is named `sink_name`.
    """
    sink = make_sink(replay_target(settings, sink_name))
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


def run(
    settings: Settings,
    action: str,
    ids: list[int] | None,
    path: Path,
    sink_name: str | None = None,
) -> int:
    """The dead-letters command on the environment at `path`; 1 when a replay left some.

    Raises:
        ConfigError: no sink is named `sink_name`, or it is given to an action other than replay.
    """
    if sink_name is not None and action != "replay":
        raise ConfigError([f"--sink: {action} reads no sink; it goes with replay only"])
    if action == "replay":
        replay_target(settings, sink_name)  # a wrong name before the buffer is opened
    store = DeadLetterStore.open(path, int(settings.buffer.capacity))
    try:
        if action == "list":
            print(list_letters(store))
            return 0
        if action == "purge":
            print(purge(store, ids))
            return 0
        report = anyio.run(replay, store, settings, ids, sink_name)
        print(report)
        return 0 if report.count("\n") == 0 else 1
    finally:
        store.close()
