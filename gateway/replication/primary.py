"""The primary's side: ship each journal record to the standby, catch it up, hear its confirms.

After each group commit the buffer hands over the journal record it wrote (`Buffer.on_journal`),
one compressed chunk per commit, and it goes out on the pair's log topic at QoS 1 at once, in
commit order, while the standby follows. Between commits, the states of FIFOs that deliveries
moved go out every `STATES_INTERVAL_S` as a chunk of states alone. The standby confirms the
newest record it has committed; the ack gate releases the sensors' acks that waited for it
(gateway/replication/gate.py).

A standby says hello with its term and the record it needs next: when it (re)connects, when it
finds a gap, and when the primary's state comes online. A standby that was overdue and confirms
again has no gap to find: its confirmation starts the catch-up. The primary then stops shipping as
it commits and catches it up: from its own journal while the records are still there, or with a
snapshot of the whole buffer first (gateway/replication/snapshot.py), awaiting each message's
PUBACK so that a catch-up of any size holds bounded memory. When the journal has nothing more, the
standby follows again, with no commit in between (no await stands between the last read of the
journal and the switch), and is sent every FIFO's state.

A primary that sees another node claim the primary's role at a later epoch (one more takeover)
was taken over: it stops taking readings (the other holds the sensors' session now) and says
so. It looks at the retained state before it claims the role on each connection, so a primary
whose connection comes back after its standby took over never deposes its successor.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

import aiomqtt
import anyio

from gateway.replication import link, snapshot
from gateway.replication.protocol import Message, ProtocolError, State, decode

if TYPE_CHECKING:
    from pathlib import Path

    from gateway.buffer.store import Buffer
    from gateway.config.settings import Settings
    from gateway.observe.metrics import Metrics
    from gateway.replication.gate import AckGate
    from gateway.replication.roles import Term

logger = logging.getLogger(__name__)

STATES_INTERVAL_S = 0.5
# A catch-up that failed is tried again this long after.
RETRY_CATCH_UP_S = 1.0
# How long a (re)connecting primary waits for the retained state of its role.
RETAINED_WAIT_S = 1.0
TICK_S = 0.1


class Shipper:
    """A primary's replication: see the module docstring."""

    def __init__(
        self, settings: Settings, buffer: Buffer, gate: AckGate, metrics: Metrics, term: Term
    ) -> None:
        """Ship `buffer`'s records under `term` to the standby of `settings`' pair."""
        self._settings = settings
        self._node = settings.replication.node
        self._buffer = buffer
        self.gate = gate
        self.metrics = metrics
        self.term = term.term
        self.epoch = term.epoch
        self.topics = link.topics_of(settings)
        self.snapshot_dir: Path = buffer.path.with_name(buffer.path.name + ".snapshot-out")
        # Records go out as committed only while the standby follows; `shipped` is the newest.
        self.following = False
        self.shipped = -1
        # The newest record sent in any way (as committed, in a catch-up, in a snapshot), or
        # committed before this start: a confirmation beyond it is not believed. (No ack of
        # this run waits for a record from before it.)
        self.sent_through = buffer.last_record()
        self._catching_up = False
        # Records sent to a standby since start, as committed and in catch-ups.
        self.shipped_records = 0
        self.peer: State | None = None
        self.deposed = anyio.Event()
        self._client: aiomqtt.Client | None = None
        self._hello: int | None = None
        self._hello_term = b""
        self._wake = anyio.Event()
        self._next_states = 0.0
        self._last_confirm = time.monotonic()
        self._unconfirmed_seen = 0
        buffer.ship_moves()
        buffer.on_journal = self._committed
        metrics.replication.confirmed.set(-1)
        metrics.replication.peer_up.set(0)

    def _committed(self, record: int, value: bytes) -> None:
        """A group commit's record: out now if the standby follows (called in the loop)."""
        if not self.following or self._client is None:
            return
        if record != self.shipped + 1:
            # Cannot happen while following; if it did, a catch-up sends what is missing.
            self._stop_following(f"record {record} committed after {self.shipped} shipped")
            self._catch_up_soon()
            return
        self._publish(Message("record", self.term, record, value))
        self.shipped = self.sent_through = record
        self._ship_count()

    def _ship_count(self) -> None:
        self.shipped_records += 1
        self.metrics.replication.shipped.inc()

    def _publish(self, message: Message) -> None:
        assert self._client is not None  # noqa: S101 - only while connected
        self._client._client.publish(self.topics.log, message.encode(), qos=1)  # noqa: SLF001

    async def _send(self, message: Message) -> None:
        """Publish and wait for the broker's PUBACK: a catch-up's pace."""
        assert self._client is not None  # noqa: S101 - only while connected
        await self._client.publish(self.topics.log, message.encode(), qos=1, timeout=30)

    def _stop_following(self, why: str) -> None:
        if self.following:
            logger.warning("standby no longer follows (%s); acks %s", why, self._away_means())
        self.following = False
        self.gate.away()

    def _away_means(self) -> str:
        if self.gate.mode == "async":
            return "never waited for it"
        if self.gate.standby_away == "hold":
            return "are held until it is back"
        return "go out after the local commit (local durability only)"

    async def run(self) -> None:
        """Connect, ship and reconnect until cancelled."""
        delay = link.RECONNECT_INITIAL_S
        while True:
            try:
                async with link.connect(self._settings, "primary", self._state(False)) as client:
                    self._client = client
                    delay = link.RECONNECT_INITIAL_S
                    await self._serve(client)
            except aiomqtt.MqttError as exc:
                logger.warning("replication connection lost (%s); reconnecting", exc)
            finally:
                self._client = None
                self._stop_following("replication connection lost")
            if self.deposed.is_set():
                return
            await anyio.sleep(delay)
            delay = min(delay * 2, link.RECONNECT_MAX_S)

    async def _serve(self, client: aiomqtt.Client) -> None:
        topics = self.topics
        if await self._outranked(client):
            return
        await client.subscribe(topics.standby, qos=1)
        await client.subscribe(topics.state("standby"), qos=1)
        await self._claim(client)
        logger.info("replication: primary %s, term %s", self._node, self.term.hex()[:8])
        try:
            await self._follow_messages(client)
        except anyio.get_cancelled_exc_class():
            # A primary that stops hands over: its standby takes over after takeover_after_s
            # (a restart then comes back as the standby: gateway/replication/roles.py).
            offline = self._state(False)
            with (
                anyio.CancelScope(shield=True),
                anyio.move_on_after(1.0),
                contextlib.suppress(aiomqtt.MqttError),
            ):
                await client.publish(topics.state("primary"), offline.encode(), qos=1, retain=True)
            raise

    def _state(self, online: bool) -> State:
        return State(self._node, online=online, term=self.term.hex(), epoch=self.epoch)

    async def _claim(self, client: aiomqtt.Client) -> None:
        """Say, retained, that this box is the primary."""
        state = self._state(True).encode()
        await client.publish(self.topics.state("primary"), state, qos=1, retain=True)

    async def _outranked(self, client: aiomqtt.Client) -> bool:
        """Whether the retained state names a primary that took over from this one.

        Looked at before this box says it is the primary, so that a primary whose connection
        came back after a takeover does not claim the role over its successor.
        """
        await client.subscribe(self.topics.state("primary"), qos=1)
        with anyio.move_on_after(RETAINED_WAIT_S):
            async for message in client.messages:
                if message.topic.value == self.topics.state("primary"):
                    payload = bytes(message.payload) if message.payload else b""
                    return self._taken_over(payload)
        return False

    async def _follow_messages(self, client: aiomqtt.Client) -> None:
        topics = self.topics
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._tick, name="replication.tick")
            tg.start_soon(self._catch_up_on_hello, name="replication.catch_up")
            async for message in client.messages:
                topic = message.topic.value
                payload = bytes(message.payload) if message.payload else b""
                if topic == topics.standby:
                    self._heard(payload)
                elif topic == topics.state("standby"):
                    self._standby_state(payload)
                elif topic == topics.state("primary"):
                    if self._taken_over(payload):
                        tg.cancel_scope.cancel()
                        return
                    if State.decode(payload) != self._state(True):
                        # Another box's will or an older primary's claim: the role is ours.
                        tg.start_soon(self._claim, client)

    def _heard(self, payload: bytes) -> None:
        try:
            message = decode(payload)
        except ProtocolError as exc:
            logger.warning("replication: ignored a message on %s: %s", self.topics.standby, exc)
            return
        if message.kind == "confirm" and message.term == self.term:
            self._confirmed(message.number)
        elif message.kind == "hello":
            self._hello, self._hello_term = message.number, message.term
            if message.term == self.term:
                self._buffer.keep_journal_from(message.number)
            self._stop_following(f"it asked for record {message.number}")
            self._wake.set()

    def _confirmed(self, number: int) -> None:
        if number > self.sent_through:
            # Never sent: a standby of another history, or a broken one. Not believed, or
            # acks would go out for readings on one disk only.
            logger.warning(
                "replication: the standby confirmed record %d, only %d was sent; taking %d",
                number,
                self.sent_through,
                self.sent_through,
            )
            number = self.sent_through
        self.gate.confirm(number)
        self._buffer.keep_journal_from(self.gate.confirmed + 1)
        self.metrics.replication.confirmed.set(number)
        self._last_confirm = time.monotonic()
        if self.following and number >= self.shipped and not self.gate.following:
            self.gate.follow()
            logger.info("standby caught up at record %d; acks wait for it", number)
        elif not self.following:
            # A standby that was overdue is back: it will not ask, it has no gap to find.
            self._catch_up_soon()

    def _catch_up_soon(self) -> None:
        """Catch the standby up from its last confirmation, unless a catch-up runs already."""
        if self._catching_up or self._wake.is_set():
            return
        self._hello, self._hello_term = self.gate.confirmed + 1, self.term
        self._wake.set()

    def _standby_state(self, payload: bytes) -> None:
        state = State.decode(payload)
        if state is not None and state.node == self._node:
            state = None  # what this box said as a standby, before it took over
        self.peer = state
        if state is not None and not state.online:
            self._stop_following(f"its will says {state.node} is offline")

    def _taken_over(self, payload: bytes) -> bool:
        state = State.decode(payload)
        if state is None or not state.outranks(self._node, self.epoch):
            return False
        logger.error(
            "replication: %s took over as primary (term %s); this gateway stops taking "
            "readings and delivers what it holds",
            state.node,
            state.term[:8],
        )
        self.deposed.set()
        return True

    def describe(self) -> dict[str, Any]:
        """The pair as this primary sees it, for the status JSON (`runtime.replication`)."""
        now = time.monotonic()
        last = self._buffer.last_record()
        confirmed = self.gate.confirmed
        behind, behind_s = self._lag(now)
        return {
            "role": "deposed" if self.deposed.is_set() else "primary",
            "node": self._node,
            "mode": self.gate.mode,
            "durability": self.gate.durability,
            "standby_away": self.gate.standby_away,
            "term": self.term.hex(),
            "peer": None
            if self.peer is None
            else {"node": self.peer.node, "online": self.peer.online, "following": self.following},
            "last_record": last,
            "confirmed_record": confirmed,
            "lag_records": behind,
            "lag_s": behind_s,
            "held_acks": self.gate.held,
            "shipped_records": self.shipped_records,
            "unconfirmed_acks": self.gate.unconfirmed_acks,
        }

    def _lag(self, now: float) -> tuple[int, float]:
        """Records the standby has not confirmed, and for how long it has confirmed none."""
        # Without a standby heard from yet there is nothing to lag behind.
        behind = max(0, self._buffer.last_record() - self.gate.confirmed) if self.peer else 0
        return behind, now - self._last_confirm if behind else 0.0

    def _observe(self, now: float) -> None:
        m = self.metrics.replication
        m.set_durability(self.gate.durability)
        m.held_acks.set(self.gate.held)
        behind, behind_s = self._lag(now)
        m.lag_records.set(behind)
        m.lag_seconds.set(behind_s)
        m.peer_up.set(int(bool(self.peer and self.peer.online)))
        if self.gate.unconfirmed_acks > self._unconfirmed_seen:
            m.unconfirmed_acks.inc(self.gate.unconfirmed_acks - self._unconfirmed_seen)
            self._unconfirmed_seen = self.gate.unconfirmed_acks

    async def _tick(self) -> None:
        while True:
            await anyio.sleep(TICK_S)
            now = time.monotonic()
            self._observe(now)
            if self.gate.overdue():
                self._stop_following(
                    f"no confirmation for {self._settings.replication.confirm_timeout_s:g} s"
                )
            if self.following and now >= self._next_states:
                self._next_states = now + STATES_INTERVAL_S
                moved = self._buffer.unshipped_states()
                if moved is not None:
                    self._publish(Message("states", self.term, moved[0], moved[1]))

    async def _catch_up_on_hello(self) -> None:
        while True:
            await self._wake.wait()
            await self._answer_hello()

    async def _answer_hello(self) -> None:
        """Catch the standby up from the newest hello (or confirmation that asked for it)."""
        self._wake = anyio.Event()
        wanted, term = self._hello, self._hello_term
        if wanted is None:
            return
        self._catching_up = True
        try:
            await self._catch_up(wanted, term)
        except aiomqtt.MqttError:
            raise
        except Exception:
            logger.exception("replication: catching the standby up failed; trying again")
            await anyio.sleep(RETRY_CATCH_UP_S)
            self._catching_up = False
            self._catch_up_soon()
        finally:
            self._catching_up = False

    async def _catch_up(self, wanted: int, term: bytes) -> None:
        """Bring the standby from `wanted` to the newest record, then let it follow."""
        buffer = self._buffer
        if term != self.term or buffer.journal_since(wanted, 0) is None:
            wanted = await self._send_snapshot() + 1
        while True:
            if self._wake.is_set():
                return  # a newer hello: start again from what it says
            records = buffer.journal_since(wanted, link.PART_BYTES)
            if records is None:
                wanted = await self._send_snapshot() + 1
                continue
            if not records:
                # No await from the journal's last read to here: no commit came in between.
                self.following = True
                self.shipped = wanted - 1
                every = buffer.unshipped_states(every=True)
                if every is not None:
                    self._publish(Message("every", self.term, every[0], every[1]))
                logger.info("standby caught up to record %d; shipping as committed", wanted - 1)
                return
            for number, value in records:
                await self._send(Message("record", self.term, number, value))
                self.sent_through = max(self.sent_through, number)
                self._ship_count()
            wanted = records[-1][0] + 1

    async def _send_snapshot(self) -> int:
        """Copy the buffer and ship it; returns the newest record the copy holds."""
        directory = self.snapshot_dir
        logger.info("replication: sending the standby a snapshot of the buffer")
        last = await anyio.to_thread.run_sync(snapshot.write, self._buffer, directory)
        try:
            files = [directory / name for name in snapshot.PARTS]
            sizes = (files[0].stat().st_size, files[1].stat().st_size)
            await self._send(Message("begin", self.term, last, sizes=sizes))
            for index, path in enumerate(files):
                with path.open("rb") as handle:
                    offset = 0
                    while chunk := handle.read(link.PART_BYTES):
                        part = Message("part", self.term, last, chunk, index, offset)
                        await self._send(part)
                        offset += len(chunk)
            await self._send(Message("end", self.term, last))
            self.sent_through = max(self.sent_through, last)
            self.metrics.replication.snapshots.inc()
            logger.info("replication: snapshot through record %d sent (%d bytes)", last, sum(sizes))
        finally:
            await anyio.to_thread.run_sync(snapshot.remove, directory)
        return last
