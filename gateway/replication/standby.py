"""The standby's side: apply what the primary ships, confirm it, and take over when it is gone.

The standby holds its own buffer as a replica of the primary's (gateway/buffer/replica.py):
each shipped journal record is written to its journal and applied to its accounting, then
confirmed with the record's number, so a `sync` primary acknowledges the sensors' messages only
once the readings are on both disks. A record that does not follow the last one applied (a
restart, a lost connection) and the primary's state coming online make it say hello: its term
and the record it needs next. A snapshot comes in parts into a directory beside the buffer and
replaces the buffer when its last part is in (gateway/replication/snapshot.py).

The primary's retained state and its MQTT will tell the standby when the primary is gone. After
`takeover_after_s` with the primary still offline, `run` returns and the service starts on this
box as the primary: it opens the replica as its buffer (a start after kill -9, which recovery
makes exact), takes over the primary's persistent MQTT session (same client id, clean session
off), so the broker hands it every message the primary had not acknowledged, and delivers.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import TYPE_CHECKING, Any, BinaryIO

import aiomqtt
import anyio

from gateway.buffer.core.chunk import DECODE_ERRORS
from gateway.buffer.replica import ReplicaGapError
from gateway.buffer.store import Buffer
from gateway.errors import CapacityError, GatewayError
from gateway.replication import link, snapshot
from gateway.replication.protocol import NO_TERM, TERM_NOTE, Message, ProtocolError, State, decode

if TYPE_CHECKING:
    from pathlib import Path

    from gateway.config.settings import Settings
    from gateway.observe.metrics import Metrics

logger = logging.getLogger(__name__)

# A hello not answered (by a record, states or a snapshot part) within this long is said again.
HELLO_AGAIN_S = 5.0


class Follower:
    """A standby's replication: see the module docstring."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        """Follow the primary of `settings`' pair into `[buffer] path`."""
        self._settings = settings
        self._node = settings.replication.node
        self._metrics = metrics
        self.topics = link.topics_of(settings)
        self.path: Path = settings.buffer.path
        self.incoming = self.path.with_name(self.path.name + ".snapshot-in")
        self.buffer: Buffer | None = None
        self.primary: State | None = None
        self._offline_since: float | None = None
        self._client: aiomqtt.Client | None = None
        # When the last hello went out, and whether the standby still waits for its answer.
        self._asked_at = -math.inf
        self._behind = True
        self._snapshot: _Incoming | None = None
        # Records applied since start (snapshots aside).
        self.applied_records = 0

    def _open(self) -> Buffer:
        b = self._settings.buffer
        buffer = Buffer(
            b.path,
            int(b.capacity),
            b.sync,
            latest_series=self._settings.api.latest_series if self._settings.api.enabled else 0,
            decoded_cache_bytes=b.decoded_cache_max_bytes,
            seal_pending_bytes=b.seal_pending_max_bytes,
        )
        buffer.follow()
        return buffer

    @property
    def term(self) -> bytes:
        """The term of the primary whose records the replica holds (NO_TERM: none yet)."""
        if self.buffer is None:
            return NO_TERM
        return self.buffer.notes(TERM_NOTE).get(TERM_NOTE, NO_TERM)

    def describe(self) -> dict[str, Any]:
        """The pair as this standby sees it, for the status JSON (`runtime.replication`)."""
        primary = self.primary
        since = self._offline_since
        return {
            "role": "standby",
            "node": self._node,
            "mode": self._settings.replication.mode,
            "term": self.term.hex(),
            "peer": None if primary is None else {"node": primary.node, "online": primary.online},
            "last_record": self.buffer.last_record() if self.buffer is not None else -1,
            "following": not self._behind,
            "applied_records": self.applied_records,
            "receiving_snapshot": self._snapshot is not None,
            "takeover_in_s": None
            if since is None
            else max(0.0, self._settings.replication.takeover_after_s - (time.monotonic() - since)),
        }

    async def run(self) -> None:
        """Follow until the primary has been gone for `takeover_after_s`; the replica is closed."""
        self.buffer = self._open()
        self._metrics.replication.set_role("standby")
        logger.info(
            "replication: standby %s following from record %d",
            self._node,
            self.buffer.last_record() + 1,
        )
        try:
            delay = link.RECONNECT_INITIAL_S
            while True:
                try:
                    async with link.connect(self._settings, "standby") as client:
                        self._client = client
                        delay = link.RECONNECT_INITIAL_S
                        if await self._serve(client):
                            return
                except aiomqtt.MqttError as exc:
                    logger.warning("replication connection lost (%s); reconnecting", exc)
                finally:
                    self._client = None
                if self._due():
                    return  # the broker is there for the primary's session, or will be
                await anyio.sleep(delay)
                delay = min(delay * 2, link.RECONNECT_MAX_S)
        finally:
            self._drop_snapshot()
            if self.buffer is not None:  # None: stopped while a snapshot was being installed
                self.buffer.close()
            self.buffer = None

    async def _serve(self, client: aiomqtt.Client) -> bool:
        """Follow on one connection; True once the takeover is due."""
        topics = self.topics
        await client.subscribe(topics.log, qos=1)
        await client.subscribe(topics.state("primary"), qos=1)
        online = State(self._node, online=True)
        await client.publish(topics.state("standby"), online.encode(), qos=1, retain=True)
        self._hello()
        try:
            return await self._follow_messages(client)
        finally:
            # Stopped or taking over: the primary stops waiting for it at once. Not after a
            # lost connection: the will says it then, if the broker lost it too.
            if not client._disconnected.done():  # noqa: SLF001
                offline = State(self._node, online=False).encode()
                with (
                    anyio.CancelScope(shield=True),
                    anyio.move_on_after(1.0),
                    contextlib.suppress(aiomqtt.MqttError),
                ):
                    await client.publish(topics.state("standby"), offline, qos=1, retain=True)

    async def _follow_messages(self, client: aiomqtt.Client) -> bool:
        topics = self.topics
        done = False
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                nonlocal done
                while not self._due():
                    await anyio.sleep(0.05)
                    if self._behind and time.monotonic() - self._asked_at > HELLO_AGAIN_S:
                        self._hello()
                done = True
                tg.cancel_scope.cancel()

            tg.start_soon(watch, name="replication.takeover_watch")
            async for message in client.messages:
                payload = bytes(message.payload) if message.payload else b""
                if message.topic.value == topics.log:
                    await self._log(payload)
                else:
                    self._primary_state(payload, retained=bool(message.retain))
        return done

    def _due(self) -> bool:
        since = self._offline_since
        return since is not None and (
            time.monotonic() - since >= self._settings.replication.takeover_after_s
        )

    def _primary_state(self, payload: bytes, *, retained: bool) -> None:
        """The primary's state: offline starts the takeover clock, each new online a hello."""
        state = State.decode(payload)
        self.primary = state
        self._metrics.replication.peer_up.set(int(bool(state and state.online)))
        if state is not None and not state.online:
            if self._offline_since is None:
                self._offline_since = time.monotonic()
                logger.warning(
                    "replication: primary %s is offline; taking over in %g s unless it returns",
                    state.node,
                    self._settings.replication.takeover_after_s,
                )
        elif state is not None:
            if self._offline_since is not None:
                logger.info("replication: primary %s is back; following", state.node)
            self._offline_since = None
            if not retained:  # the primary (re)connected: it needs to hear where we are
                self._hello()

    def _hello(self, *, snapshot: bool = False) -> None:
        """Ask for the record after the last one applied (`snapshot`: for a whole copy)."""
        if self._client is None or self.buffer is None:
            return
        self._asked_at = time.monotonic()
        self._behind = True
        wanted = self.buffer.last_record() + 1
        # A term that is no one's makes the primary send a snapshot.
        self._send(Message("hello", NO_TERM if snapshot else self.term, wanted))

    def _send(self, message: Message) -> None:
        if self._client is not None:
            paho = self._client._client  # noqa: SLF001
            paho.publish(self.topics.standby, message.encode(), qos=1)

    async def _log(self, payload: bytes) -> None:
        try:
            message = decode(payload)
        except ProtocolError as exc:
            logger.warning("replication: ignored a message on %s: %s", self.topics.log, exc)
            return
        if message.kind in ("begin", "part", "end"):
            await self._snapshot_part(message)
            return
        buffer = self.buffer
        if buffer is None or message.term != self.term:
            return  # of another history: the snapshot it was sent comes first
        try:
            self._apply(buffer, message)
        except ReplicaGapError as gap:
            # Once per wait: the records in flight behind the gap each find it too.
            if self._may_ask():
                logger.info("replication: %s; asking for it", gap)
                self._hello()
        except CapacityError as exc:
            # The replica takes more pages than the primary's buffer (it sealed at other
            # times): a snapshot, compacted, is the primary's size again.
            if self._may_ask():
                logger.warning("replication: the replica is full (%s); asking for a snapshot", exc)
                self._hello(snapshot=True)
        except (GatewayError, MemoryError, *DECODE_ERRORS) as exc:
            # Not applied, not confirmed: the primary's confirm timeout notices, and the
            # records after it find the gap and ask for it again.
            logger.error(  # noqa: TRY400 - the reason is enough; a traceback per message is not
                "replication: %s %d not applied: %s", message.kind, message.number, exc
            )

    def _apply(self, buffer: Buffer, message: Message) -> None:
        if message.kind == "record":
            if buffer.apply_replicated(message.number, message.body):
                self._metrics.replication.applied.inc()
                self.applied_records += 1
            self._confirm(buffer)
        elif message.kind in ("states", "every"):
            complete = message.kind == "every"
            buffer.apply_replicated_states(message.number, message.body, complete=complete)
        self._behind = False

    def _may_ask(self) -> bool:
        """Whether to say hello now: not while one is waiting for its answer, unless long."""
        return not self._behind or time.monotonic() - self._asked_at > HELLO_AGAIN_S

    def _confirm(self, buffer: Buffer) -> None:
        last = buffer.last_record()
        self._metrics.replication.confirmed.set(last)
        self._send(Message("confirm", self.term, last))

    async def _snapshot_part(self, message: Message) -> None:
        # A part answers the hello: no other while the snapshot comes, however long it takes.
        self._asked_at = time.monotonic()
        if message.kind == "begin":
            self._drop_snapshot()
            self._snapshot = _Incoming(self.incoming, message)
            logger.info(
                "replication: receiving a snapshot through record %d (%d bytes)",
                message.number,
                sum(message.sizes),
            )
            return
        incoming = self._snapshot
        if incoming is None or incoming.begin.number != message.number:
            return  # a part of a snapshot whose beginning was missed: the next hello redoes it
        if message.kind == "part":
            if not incoming.write(message):
                self._drop_snapshot()
                self._hello()
            return
        if not incoming.complete():
            logger.warning("replication: snapshot incomplete; asking again")
            self._drop_snapshot()
            self._hello()
            return
        incoming.close()
        self._snapshot = None
        replica, self.buffer = self.buffer, None
        assert replica is not None  # noqa: S101 - open while following
        # In a worker thread, all of it: closing, replacing and opening a buffer of any size
        # may take longer than the event loop may be held.
        await anyio.to_thread.run_sync(replica.close)
        await anyio.to_thread.run_sync(snapshot.install, self.incoming, self.path)
        await anyio.to_thread.run_sync(snapshot.remove, self.incoming)
        try:
            self.buffer = await anyio.to_thread.run_sync(self._open)
        except GatewayError as exc:
            # Files that are no buffer (damaged on the way, or not the primary's): nothing
            # of ours is in them any more. Start empty and ask for another snapshot.
            logger.error("replication: the snapshot does not open (%s); asking again", exc)  # noqa: TRY400 - the reason is enough
            await anyio.to_thread.run_sync(snapshot.discard, self.path)
            self.buffer = await anyio.to_thread.run_sync(self._open)
            self._hello(snapshot=True)
            return
        self._metrics.replication.snapshots.inc()
        logger.info("replication: snapshot through record %d installed", message.number)
        self._confirm(self.buffer)

    def _drop_snapshot(self) -> None:
        if self._snapshot is not None:
            self._snapshot.close()
            self._snapshot = None
        snapshot.remove(self.incoming)


class _Incoming:
    """A snapshot's files as their parts come, in order."""

    def __init__(self, directory: Path, begin: Message) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.begin = begin
        self.files: list[BinaryIO] = [(directory / name).open("wb") for name in snapshot.PARTS]
        self.written = [0, 0]

    def write(self, part: Message) -> bool:
        """Write a part; False if it is not the next one (one was lost: start again)."""
        if part.offset != self.written[part.file]:
            return False
        self.files[part.file].write(part.body)
        self.written[part.file] += len(part.body)
        return True

    def complete(self) -> bool:
        """Whether every byte of both files came."""
        return tuple(self.written) == self.begin.sizes

    def close(self) -> None:
        """Close the files (written through, synced by `snapshot.install`)."""
        for handle in self.files:
            handle.close()
