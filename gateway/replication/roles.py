"""Which role a box of a pair starts in, and the primary's term.

`[replication] role` is the role a box starts in when the pair has no primary yet. A box set
to start as the primary that finds another node holding the role (its retained state online,
under another term) starts as the standby instead: that is how the old primary of a takeover
returns, and the README's failback procedure builds on it. A box that becomes the primary
keeps its buffer's term, or makes one if the buffer has none or it has just taken over, and
notes it in the buffer with a group commit of its own, so the standby's replica carries it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiomqtt
import anyio

from gateway.buffer.core.admission import Rules
from gateway.replication import link
from gateway.replication.protocol import (
    EPOCH_NOTE,
    NODE_NOTE,
    TERM_NOTE,
    U64,
    Role,
    State,
    new_term,
)

if TYPE_CHECKING:
    from gateway.buffer.store import Buffer
    from gateway.config.settings import Settings

logger = logging.getLogger(__name__)

# How long a starting box waits for the retained state of the primary's role.
RETAINED_WAIT_S = 1.0


async def primary_state(settings: Settings) -> State | None:
    """The retained state of the pair's primary (None if there is none or the broker is away)."""
    topic = link.topics_of(settings).state("primary")
    try:
        async with link.connect(settings, "standby") as client:
            await client.subscribe(topic, qos=1)
            with anyio.move_on_after(RETAINED_WAIT_S):
                async for message in client.messages:
                    return State.decode(bytes(message.payload) if message.payload else b"")
    except aiomqtt.MqttError as exc:
        logger.warning("replication: could not read the pair's state (%s)", exc)
    return None


async def starting_role(settings: Settings) -> tuple[Role, State | None]:
    """The role this box starts in (see the module docstring), and the primary's state."""
    state = await primary_state(settings)
    if settings.replication.role != "primary":
        return "standby", state
    if state is not None and state.online and state.node != settings.replication.node:
        # Whatever its epoch: a box that comes back finds the one that kept the sensors.
        logger.warning(
            "replication: %s holds the primary's role; starting as its standby", state.node
        )
        return "standby", state
    return "primary", state


@dataclass(frozen=True, slots=True)
class Term:
    """What a primary serves under: its term and how many takeovers led to it."""

    term: bytes
    epoch: int


def primary_term(buffer: Buffer, *, took_over: bool, fresh: bool = False, node: str = "") -> Term:
    """The term this box serves as the primary under, noted in `buffer`.

    `fresh`: a new term even without a takeover. Needed when the buffer does not fsync each
    commit (`[buffer] sync` other than "commit"): a power cut may have lost records the
    standby has, and the next commits would reuse their numbers for other readings; under a
    new term the standby is sent a snapshot instead of taking them for ones it has.
    `node`: this box, noted beside the term: a box that starts as a standby finds its own
    history by it (gateway/service/pairing.py).
    """
    notes = buffer.notes(b"replication.")
    term = notes.get(TERM_NOTE)
    epoch = U64.unpack(notes[EPOCH_NOTE])[0] if EPOCH_NOTE in notes else 0
    if term is None or took_over or fresh or notes.get(NODE_NOTE) != node.encode():
        term, epoch = new_term(), epoch + took_over
        buffer.admit(
            [],
            Rules(budget_bytes=buffer.budget_bytes),
            notes={TERM_NOTE: term, EPOCH_NOTE: U64.pack(epoch), NODE_NOTE: node.encode()},
        )
    return Term(term, epoch)
