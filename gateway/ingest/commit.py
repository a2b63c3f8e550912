"""The group commit: store the taken messages in one buffer transaction, then acknowledge them.

This is the only module that acknowledges MQTT messages, and it does so only after the readings of
those messages are committed (DESIGN invariant 1); no await stands between the commit and its acks,
except that a primary in `sync` replication hands them to its gate, which sends them once the
standby has the commit too (gateway/replication/gate.py). A message that yields no valid reading is
acknowledged with its batch, after being counted as invalid; so is one whose readings were all
within their deadband, counted as suppressed (deliberately not stored,
gateway/ingest/core/deadband.py). The kept readings of the committed messages then become their
series' deadband references, unless admission refused readings of the batch: a reading judged
against one never stored could be lost unseen. Acks go out in arrival order, as MQTT requires. When
admission pauses at a message (the `reject` policy at its watermark), the messages before it are
committed and acknowledged and the rest stay with the broker. A batch the disk budget (the page
guard) refuses whole is admitted in parts, halved until they fit, so that a flood of redelivered
messages cannot need more pages than a small buffer has even when empty; intake pauses at a message
refused on its own. A bug in admission costs only the message that meets it: the batch is admitted
again message by message. That is safe because only an exception raised before the journal commit
leaves `Buffer.admit` as anything but a `GatewayError` (the buffer contains what follows its
commit), so such an exception means nothing of the batch was stored. Failures of the buffer itself
(`GatewayError`) acknowledge nothing.
"""

from __future__ import annotations

import bisect
import functools
import logging
import time
from collections import Counter
from dataclasses import dataclass
from itertools import accumulate
from typing import TYPE_CHECKING

from gateway.buffer.core.admission import DEVICE_SHARE, DROPPED_OLDEST, MAX_DEVICES, SHED
from gateway.buffer.core.ledger import Admitted
from gateway.buffer.rejects import Reject
from gateway.errors import CapacityError, GatewayError
from gateway.ingest.core.episodes import Episodes
from gateway.ingest.core.pausing import Cause, cause_of
from gateway.ingest.taking import internal_error

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway.buffer.core.admission import Rules
    from gateway.buffer.rejects import RejectLog
    from gateway.buffer.store import Buffer
    from gateway.ingest.core.deadband import Deadbands, Mark
    from gateway.ingest.mqtt import Connection
    from gateway.ingest.taking import Pending
    from gateway.observe.metrics import Metrics
    from gateway.replication.gate import AckGate

logger = logging.getLogger(__name__)

# A refusal or drop episode is over after this long without one (one log line each way).
EPISODE_QUIET_S = 10.0
# Samples of refused messages for `gateway rejects`: at most this many, this often.
REJECT_SAMPLES_PER_WRITE = 5
REJECT_WRITE_INTERVAL_S = 1.0
# Log wording of each refusal and drop reason.
WHY = {
    MAX_DEVICES: "the buffer holds [buffer] max_devices devices; readings of new devices refused",
    DEVICE_SHARE: "a device is over its [buffer] device_share",
    SHED: "buffer at its high watermark; lowest-priority readings shed",
    DROPPED_OLDEST: "buffer at its high watermark; oldest readings of the largest device dropped",
}


class IntakePaused(GatewayError):
    """Raised out of the consume loop to leave the broker while the buffer is too full."""

    def __init__(self, message: str, *, cause: Cause) -> None:
        """`cause` says what must change before intake resumes (gateway/ingest/core/pausing.py)."""
        super().__init__(message)
        self.cause = cause

    @classmethod
    def of(cls, error: CapacityError) -> IntakePaused:
        """The pause a refusal of the buffer calls for."""
        return cls(str(error), cause=cause_of(error))


@dataclass(frozen=True, slots=True)
class Paused:
    """Admission paused at the message with this index of a batch."""

    at_message: int
    error: CapacityError


class Committer:
    """Commits batches of taken messages and acknowledges them; see the module docstring."""

    def __init__(
        self,
        *,
        buffer: Buffer,
        rules: Rules,
        metrics: Metrics,
        rejects: RejectLog,
        on_commit: Callable[[int], None],
        on_drop: Callable[[int], None],
        deadbands: Deadbands | None = None,
        gate: AckGate | None = None,
    ) -> None:
        """`on_commit` and `on_drop` tell the flusher how many readings came and went.

        `deadbands`: the takers' (gateway/ingest/taking.py), settled after each commit.
        `gate`: a replicating primary's, which may hold the acks until the standby has the
        commit (gateway/replication/gate.py).
        """
        self._gate = gate
        self.rules = rules
        self.deadbands = deadbands
        # A message of the batch lost its readings to a bug in admission: they stand for nothing.
        self._unsettled = False
        self._buffer = buffer
        self._metrics = metrics
        self._rejects = rejects
        self._on_commit = on_commit
        self._on_drop = on_drop
        self._next_reject_write = 0.0
        self._episodes: Episodes[tuple[str, str, str]] = Episodes(EPISODE_QUIET_S)

    async def commit_and_ack(self, connection: Connection, batch: list[Pending]) -> None:
        """Store the batch, then acknowledge what was stored or deliberately refused.

        Raises:
            IntakePaused: the buffer cannot take more now; what was not committed is not
                acknowledged, and the broker delivers it again.
        """
        started = time.monotonic()
        marks: list[Mark] = []
        self._unsettled = False
        try:
            # No await between the commit and its acks: a stop cannot come between them and
            # turn a committed batch into a redelivered one.
            admitted, paused = self._admit(batch)
            committed = len(batch) if paused is None else paused.at_message
            self._ack(connection, [(p.mid, p.qos) for p in batch[:committed] if p.qos])
            self._send_after_commit(connection, batch, committed)
            if not admitted.refused and not self._unsettled:
                marks = [mark for p in batch[:committed] if p.marks for mark in p.marks]
        except CapacityError as exc:
            # Nothing of this batch is stored or acknowledged: the broker delivers it again.
            raise IntakePaused.of(exc) from exc
        finally:
            if self.deadbands is not None:
                # Whatever happened: what a message not committed staged goes with it.
                self.deadbands.settle(marks, clean=bool(marks))
        if admitted.stored:
            self._metrics.commit_seconds.observe(time.monotonic() - started)
            self._metrics.commit_readings.observe(admitted.stored)
            self._on_commit(admitted.stored)
        dropped = sum(admitted.dropped.values())
        if dropped:
            self._on_drop(dropped)
        if admitted.refused or admitted.dropped:
            self._log_episodes(admitted)
        elif self._episodes.running:
            self._end_episodes()
        if paused is not None:
            # The messages from the one that met the watermark on were not acknowledged: the
            # broker keeps them and delivers them again after the pause.
            raise IntakePaused.of(paused.error)

    def _ack(self, connection: Connection, pairs: list[tuple[int, int]]) -> None:
        """Acknowledge now, or hand the acks to the replication gate with the commit's record."""
        if self._gate is None:
            connection.ack(pairs)
        elif pairs:
            self._gate.submit(self._buffer.last_record(), functools.partial(connection.ack, pairs))

    def connection_ended(self) -> None:
        """Acks still held belong to a connection that is gone: the broker sends those again."""
        if self._gate is not None:
            self._gate.drop()

    def _send_after_commit(self, connection: Connection, batch: list[Pending], end: int) -> None:
        """Publish what the first `end` messages of the batch asked for (Sparkplug B).

        After the commit: a rebirth answered before the state of its request was stored could
        be read against the state that preceded it.
        """
        commands: list[tuple[str, bytes]] = []
        announce = False
        for pending in batch[:end]:
            if pending.decoded.commands:
                commands.extend(pending.decoded.commands)
            announce = announce or pending.announce
        if commands:
            connection.publish(commands)
            self._metrics.sparkplug_rebirths.inc(len(commands))
        if announce:
            connection.announce()

    def _admit(self, batch: list[Pending]) -> tuple[Admitted, Paused | None]:
        """Store the batch; at a pause, store the messages before the one that paused.

        Acknowledgements go out in order, so the messages before it can be committed and
        acknowledged, and the rest come again from the broker.
        """
        paused = None
        try:
            admitted = self._admit_part(batch)
        except CapacityError as exc:
            if exc.at_item is not None:
                at = bisect.bisect_right(
                    list(accumulate(len(p.items or ()) for p in batch)), exc.at_item
                )
                # The same decisions again, up to the paused message: they cannot pause.
                admitted, paused = self._admit_part(batch[:at]), Paused(at, exc)
            elif exc.disk_full or len(batch) == 1:
                raise
            else:
                admitted, paused = self._admit_in_parts(batch)
        except GatewayError:
            raise  # the buffer failed: nothing is acknowledged
        except Exception as exc:  # noqa: BLE001 - a bug in admission: find the message
            # Raised before the journal commit (see the module docstring): nothing was stored,
            # so admitting the messages again cannot store one twice.
            admitted, paused = self._admit_one_by_one(batch, exc)
        if paused is not None:
            batch = batch[: paused.at_message]
        return self._counted(batch, admitted), paused

    def _counted(self, batch: list[Pending], admitted: Admitted) -> Admitted:
        """Count what the messages of `batch` brought, stored or not."""
        # Counted right after the commit, so a scrape sees the readings and the buffer together.
        suppressed: Counter[str] = Counter()
        for pending in batch:
            if pending.suppressed:
                suppressed[pending.decoded.device_class] += pending.suppressed
        self._metrics.accounting.committed(
            accepted=admitted.stored,
            invalid=self._count_invalid(batch),
            refused=admitted.refused,
            dropped=admitted.dropped,
            suppressed=suppressed,
        )
        self._metrics.observe_buffer(self._buffer.totals())
        return admitted

    def _admit_in_parts(self, batch: list[Pending]) -> tuple[Admitted, Paused | None]:
        """Admit a batch the disk budget refused whole in parts, halving each refused part.

        A group commit of a flood of redelivered messages can need more pages than the page
        guard of a small buffer allows even when it is empty: refused whole at every attempt,
        it would keep intake paused for good. In parts, what fits is committed and
        acknowledged; the first message refused on its own is where intake pauses.
        """
        total = Admitted()
        start, size = 0, len(batch) // 2
        while start < len(batch):
            part = batch[start : start + size]
            try:
                _add(total, self._admit_part(part))
            except CapacityError as exc:
                if len(part) == 1 or exc.disk_full:
                    return total, Paused(start, exc)
                size = len(part) // 2
                continue
            except GatewayError:
                raise  # the buffer failed: nothing is acknowledged
            except Exception as exc:  # noqa: BLE001 - a bug in admission: find the message
                rest, paused = self._admit_one_by_one(batch[start:], exc)
                _add(total, rest)
                if paused is not None:
                    return total, Paused(start + paused.at_message, paused.error)
                return total, None
            start += len(part)
        return total, None

    def _admit_part(self, part: list[Pending]) -> Admitted:
        """Store the messages of `part` in one transaction.

        The state the messages change (Sparkplug B) goes with them, the later message's where
        two change a key.
        """
        items = [item for pending in part if pending.items for item in pending.items]
        notes: dict[bytes, bytes] = {}
        for pending in part:
            if pending.decoded.notes:
                notes.update(pending.decoded.notes)
        if not items and not notes:
            return Admitted()
        return self._buffer.admit(items, self.rules, notes)

    def _admit_one_by_one(
        self, batch: list[Pending], exc: Exception
    ) -> tuple[Admitted, Paused | None]:
        """Admit each message in its own transaction; one that raises again is invalid.

        A failed transaction leaves nothing behind (LMDB aborts it and the buffer adopts its
        accounting only after a commit), so the messages can be tried again one by one.
        """
        logger.warning(
            "unexpected %s while admitting a group commit; admitting its messages one by one",
            type(exc).__name__,
        )
        total = Admitted()
        for index, pending in enumerate(batch):
            notes = pending.decoded.notes
            if not pending.items and not notes:
                continue
            try:
                one = self._buffer.admit(pending.items or [], self.rules, notes)
            except CapacityError as capacity:
                # The messages before it are committed: they are counted and acknowledged, and
                # intake pauses at this one, whether admission or the disk said no.
                return total, Paused(index, capacity)
            except GatewayError:
                raise
            except Exception as again:  # noqa: BLE001 - contained to this message
                # Its readings are counted invalid, each, as they are not stored.
                pending.decoded = internal_error(again, len(pending.decoded.readings))
                pending.items = pending.marks = None
                pending.suppressed = 0
                self._unsettled = True
                continue
            _add(total, one)
        return total, None

    def _count_invalid(self, batch: list[Pending]) -> int:
        """Count the invalid readings by reason; keep a sample for `gateway rejects`."""
        invalid = 0
        samples: list[Reject] = []
        for pending in batch:
            for error in pending.decoded.errors:
                self._metrics.invalid.labels(error.reason).inc()
                invalid += 1
            if pending.decoded.errors:
                logger.debug("invalid reading: %s", pending.decoded.errors[0])
                if pending.raw is not None and len(samples) < REJECT_SAMPLES_PER_WRITE:
                    error = pending.decoded.errors[0]
                    samples.append(Reject.of(*pending.raw, error.reason, error.detail))
        now = time.monotonic()
        if samples and now >= self._next_reject_write:
            # At most one write a second: a flood of bad messages must not double the fsyncs.
            self._next_reject_write = now + REJECT_WRITE_INTERVAL_S
            self._rejects.add(samples)
        return invalid

    def housekeeping(self) -> None:
        """Log the end of refusal and drop episodes that went quiet while no message came."""
        if self._episodes.running:
            self._end_episodes()

    def _log_episodes(self, admitted: Admitted) -> None:
        now = time.monotonic()
        for kind, counts in (("refusing", admitted.refused), ("dropping", admitted.dropped)):
            for (reason, device_class), n in counts.items():
                if self._episodes.record((kind, reason, device_class), n, now):
                    logger.warning(
                        "started %s readings of device class %r: %s",
                        kind,
                        device_class,
                        WHY.get(reason, reason),
                    )
        self._end_episodes(now)

    def _end_episodes(self, now: float | None = None) -> None:
        for (kind, reason, device_class), episode in self._episodes.ended(
            now if now is not None else time.monotonic()
        ):
            logger.warning(
                "stopped %s readings of device class %r (%s): %d readings in %.0f s",
                kind,
                device_class,
                reason,
                episode.count,
                episode.last - episode.started,
            )


def _add(total: Admitted, one: Admitted) -> None:
    """Add what one transaction admitted to the total of its batch."""
    total.stored += one.stored
    total.refused.update(one.refused)
    total.dropped.update(one.dropped)
    total.placed.extend(one.placed)
