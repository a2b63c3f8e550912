"""Poison-message breaker: a message being taken when the gateway died twice is set aside.

Ingest contains every exception one message raises (DESIGN invariant 8). This is for what it
cannot catch: a crash in a C extension, an out-of-memory kill, a bug in the commit path. The
message that caused it was never acknowledged, so the broker delivers it again at every start,
and without a breaker the box would crash-loop on it.

How it knows: `breaker.json` in the buffer's directory says whether the last run stopped
cleanly. After an unclean stop the broker first delivers again what was in flight, with the MQTT
DUP flag set (the killing message among them), then what it queued meanwhile, without it. The
gateway takes those redelivered messages one at a time ("careful" mode), and before each writes
durably which message it is about to take and for how many deaths it has been in flight: one,
the death that started careful mode. A message that this record names at the next start was
being taken alone when the gateway died again: the second death. It goes to the reject log with
reason `poison`, is acknowledged and counted; the messages around it are taken as usual.

Careful mode ends at the first QoS 1 message without DUP, or after `careful_max` redelivered
messages (the poison is among the first: the batch being committed is the oldest unacknowledged
part of the stream). It costs one small fsynced file write per message, only after a crash.

File format: JSON `{"clean": bool, "suspect": {"digest": sha256 hex, "deaths": n} | null}`,
padded with spaces to `RECORD_BYTES`. At start and at a clean stop it is replaced atomically
(temporary file, fsync, rename, fsync of the directory); in careful mode each record is written
in place at offset 0 and fdatasync'd, one sync per message instead of three. A record that small
lies within one disk sector, which storage writes whole; a torn one would not parse, and an
unreadable file errs on the careful side (an unclean stop, no suspect).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.errors import CapacityError, StorageError

if TYPE_CHECKING:
    from pathlib import Path

logger = logging.getLogger(__name__)

STATE_FILE = "breaker.json"
# Deaths while a message was in flight, the last with it taken alone, that make it poison.
POISON_DEATHS = 2
# Every record is padded to this size, so that one written in place replaces the last whole.
RECORD_BYTES = 256


@dataclass(frozen=True, slots=True)
class Suspect:
    """A message about to be taken alone, and the deaths it has been in flight for so far."""

    digest: str
    deaths: int


@dataclass(frozen=True, slots=True)
class BreakerState:
    """What `breaker.json` holds."""

    clean: bool = True
    suspect: Suspect | None = None


def fingerprint(topic: str, payload: bytes) -> str:
    """A message's identity across redeliveries: the broker may give it another packet id."""
    return hashlib.sha256(topic.encode("utf-8", "surrogateescape") + b"\0" + payload).hexdigest()


def judge(previous: Suspect | None, digest: str) -> Suspect | None:
    """The record to write before taking a redelivered message alone; None when it is poison.

    `previous` is the record the last (unclean) run left: the message it was taking alone.
    """
    deaths = previous.deaths + 1 if previous is not None and previous.digest == digest else 1
    return None if deaths >= POISON_DEATHS else Suspect(digest, deaths)


def parse(text: str) -> BreakerState:
    """The state from the file's text; anything unreadable counts as an unclean stop."""
    try:
        raw = json.loads(text)
        suspect = raw.get("suspect")
        return BreakerState(
            clean=raw["clean"] is True,
            suspect=None if suspect is None else Suspect(str(suspect["digest"]), suspect["deaths"]),
        )
    except (ValueError, TypeError, KeyError, AttributeError):
        return BreakerState(clean=False)


def render(state: BreakerState) -> str:
    """The file's text for `state`, padded to `RECORD_BYTES`."""
    suspect = state.suspect
    text = json.dumps(
        {
            "clean": state.clean,
            "suspect": None
            if suspect is None
            else {"digest": suspect.digest, "deaths": suspect.deaths},
        }
    )
    return text.ljust(RECORD_BYTES)


class Breaker:
    """The breaker of one buffer directory; see the module docstring."""

    def __init__(self, directory: Path, careful_max: int) -> None:
        """Read how the last run ended and mark this one as running.

        Raises:
            StorageError: the state file cannot be written.
        """
        self._path = directory / STATE_FILE
        try:
            previous = parse(self._path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            previous = BreakerState()  # a new buffer: nothing was in flight
        except OSError as exc:
            raise StorageError(f"cannot read {self._path}: {exc}") from exc
        self.careful = not previous.clean
        self._previous = previous.suspect
        self._careful_left = careful_max
        # The previous suspect stays in memory only: a death before it is taken again must not
        # count against it.
        self._write_or_warn(
            BreakerState(clean=False), "a crash now would go unnoticed at the next start"
        )
        if self.careful:
            logger.warning(
                "the last run did not stop cleanly: taking the messages the broker delivers "
                "again one at a time, so that one that kills the gateway twice is set aside"
            )

    def take_alone(self, topic: str, payload: bytes) -> bool:
        """Before a redelivered message is taken alone: record it; False when it is poison.

        Raises:
            CapacityError: the disk is full; intake pauses until it is not.
            StorageError: the record could not be written for another reason.
        """
        suspect = judge(self._previous, fingerprint(topic, payload))
        if suspect is None:
            return False
        self._careful_left -= 1
        self._write_in_place(BreakerState(clean=False, suspect=suspect))
        return True

    def end_careful_if(self, *, redelivered: bool) -> bool:
        """Leave careful mode at the first fresh message, or when its budget is spent.

        Returns whether careful mode goes on for this message.
        """
        if redelivered and self._careful_left > 0:
            return True
        self.careful = False
        self._previous = None
        self._write_or_warn(BreakerState(clean=False), "a stale suspect record stays")
        logger.info("redelivered messages taken; group commits as usual again")
        return False

    def stopped_cleanly(self) -> None:
        """The run ends with everything it took committed and acknowledged."""
        self._write_or_warn(BreakerState(clean=True), "the next start will take redeliveries alone")

    def _write_or_warn(self, state: BreakerState, consequence: str) -> None:
        """Write a state the gateway can run without: a full disk must not stop it."""
        try:
            self._write(state)
        except CapacityError as exc:
            logger.warning("%s; %s", exc, consequence)

    def _write_in_place(self, state: BreakerState) -> None:
        try:
            descriptor = os.open(self._path, os.O_WRONLY)
            try:
                os.pwrite(descriptor, render(state).encode(), 0)
                os.fdatasync(descriptor)
            finally:
                os.close(descriptor)
        except OSError as exc:
            raise _write_error(self._path, exc) from exc

    def _write(self, state: BreakerState) -> None:
        temporary = self._path.with_suffix(".tmp")
        try:
            with temporary.open("w", encoding="utf-8") as out:
                out.write(render(state))
                out.flush()
                os.fsync(out.fileno())
            temporary.replace(self._path)
            directory = os.open(self._path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except OSError as exc:
            raise _write_error(self._path, exc) from exc


def _write_error(path: Path, exc: OSError) -> StorageError:
    """A full disk is capacity, handled like the buffer's; anything else is a storage failure."""
    if exc.errno in {errno.ENOSPC, errno.EDQUOT}:
        return CapacityError(f"no room to write {path}: {exc.strerror}", disk_full=True)
    return StorageError(f"cannot write {path}: {exc}")
