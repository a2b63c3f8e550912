"""What a primary and its standby say to each other through the broker.

Pure. Every message names the term it belongs to: 16 random bytes a buffer gets when it first
serves as a primary and anew at each takeover (kept as a buffer note, so a standby's replica
carries its primary's term). A standby whose term is not its primary's has a buffer of another
history and is sent a snapshot; one of the same term is sent the records it lacks.

Topics, under `<prefix>/<client id of the pair's MQTT session>`:
- `log` (primary -> standby, QoS 1): journal records, states between them, snapshot parts;
- `standby` (standby -> primary, QoS 1): hello (the record it needs next) and confirmations
  (the newest record applied and committed);
- `state/primary` and `state/standby` (retained, each box's MQTT will says offline): who holds
  each role, with which term, and whether it is up.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from typing import Literal

TERM_BYTES = 16
TERM_NOTE = b"replication.term"
# How many takeovers made this buffer's term (`>Q`): a newer primary outranks an older one.
EPOCH_NOTE = b"replication.epoch"
# The node whose term it is (UTF-8): a box finds its own history in a buffer by it.
NODE_NOTE = b"replication.node"
# The term of a standby whose replica has none yet.
NO_TERM = bytes(TERM_BYTES)
U64 = struct.Struct(">Q")
PART = struct.Struct(">BQ")
BEGIN = struct.Struct(">QQQ")

Kind = Literal["record", "states", "every", "begin", "part", "end", "hello", "confirm"]
_CODES: dict[Kind, bytes] = {
    "record": b"R",
    "states": b"S",
    "every": b"A",
    "begin": b"B",
    "part": b"P",
    "end": b"E",
    "hello": b"H",
    "confirm": b"C",
}
_KINDS = {code: kind for kind, code in _CODES.items()}
Role = Literal["primary", "standby"]


class ProtocolError(ValueError):
    """A message of the pair's topics that is not one of ours."""


def new_term() -> bytes:
    """A term no other buffer has."""
    return os.urandom(TERM_BYTES)


@dataclass(frozen=True, slots=True)
class Message:
    """One message of the pair: its kind, term, number and body.

    `number`: the record (record, confirm), the record after which states apply (states,
    every: the states of all FIFOs),
    the record wanted next (hello), the snapshot's newest record (begin, part, end).
    `body`: a journal chunk (record, states), a part of a snapshot file (part).
    `file`, `offset`: which snapshot file and where in it (part); sizes of the two files
    (begin).
    """

    kind: Kind
    term: bytes
    number: int
    body: bytes = b""
    file: int = 0
    offset: int = 0
    sizes: tuple[int, int] = (0, 0)

    def encode(self) -> bytes:
        """The message as its payload."""
        if len(self.term) != TERM_BYTES:
            raise ProtocolError(f"a term is {TERM_BYTES} bytes, not {len(self.term)}")
        head = _CODES[self.kind] + self.term + U64.pack(self.number)
        if self.kind == "begin":
            return head + BEGIN.pack(*self.sizes, 0)
        if self.kind == "part":
            return head + PART.pack(self.file, self.offset) + self.body
        return head + self.body


def decode(payload: bytes) -> Message:
    """A message from its payload.

    Raises:
        ProtocolError: it is not one.
    """
    at = 1 + TERM_BYTES + U64.size
    if len(payload) < at or payload[:1] not in _KINDS:
        raise ProtocolError("not a replication message")
    kind = _KINDS[payload[:1]]
    term = payload[1 : 1 + TERM_BYTES]
    (number,) = U64.unpack_from(payload, 1 + TERM_BYTES)
    rest = payload[at:]
    try:
        if kind == "begin":
            data, journal, _ = BEGIN.unpack(rest)
            return Message(kind, term, number, sizes=(data, journal))
        if kind == "part":
            file, offset = PART.unpack_from(rest)
            if file > 1:
                raise ProtocolError(f"snapshot file {file} does not exist")
            return Message(kind, term, number, rest[PART.size :], file, offset)
    except struct.error as exc:
        raise ProtocolError(f"a {kind} message cut short") from exc
    if kind in ("record", "states", "every") and not rest:
        raise ProtocolError(f"a {kind} message without its chunk")
    return Message(kind, term, number, rest)


@dataclass(frozen=True, slots=True)
class Topics:
    """The pair's topics."""

    base: str

    @classmethod
    def of(cls, prefix: str, client_id: str) -> Topics:
        """The topics of the pair sharing the MQTT session `client_id`."""
        return cls(f"{prefix.rstrip('/')}/{client_id}")

    @property
    def log(self) -> str:
        """Primary to standby."""
        return f"{self.base}/log"

    @property
    def standby(self) -> str:
        """Standby to primary."""
        return f"{self.base}/standby"

    def state(self, role: Role) -> str:
        """Who holds `role` (retained)."""
        return f"{self.base}/state/{role}"


@dataclass(frozen=True, slots=True)
class State:
    """What a box says of itself on its role's state topic."""

    node: str
    online: bool
    term: str = ""
    epoch: int = 0

    def encode(self) -> bytes:
        """As the retained payload."""
        fields = {"node": self.node, "online": self.online, "term": self.term, "epoch": self.epoch}
        return json.dumps(fields).encode()

    @classmethod
    def decode(cls, payload: bytes) -> State | None:
        """From a retained payload; None if it is not one (or empty: the role was cleared)."""
        try:
            found = json.loads(payload)
            return cls(
                str(found["node"]),
                bool(found["online"]),
                str(found.get("term", "")),
                int(found.get("epoch", 0)),
            )
        except (ValueError, KeyError, TypeError, OverflowError):
            return None

    def outranks(self, node: str, epoch: int) -> bool:
        """Whether this online primary, not `node`, holds the role over `node` at `epoch`.

        The later takeover wins; two primaries of one epoch (both started as the primary at
        once) are ordered by name, so exactly one of them steps down.
        """
        return self.online and self.node != node and (self.epoch, self.node) > (epoch, node)
