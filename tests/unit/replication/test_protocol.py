"""The pair's messages: each decodes to what was encoded, and nothing else decodes at all."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.replication.protocol import (
    NO_TERM,
    TERM_BYTES,
    Message,
    ProtocolError,
    State,
    Topics,
    decode,
)

TERMS = st.binary(min_size=TERM_BYTES, max_size=TERM_BYTES)
NUMBERS = st.integers(0, 2**64 - 1)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    kinds = ["record", "states", "every", "begin", "part", "end", "hello", "confirm"]
    kind = draw(st.sampled_from(kinds))
    term, number = draw(TERMS), draw(NUMBERS)
    if kind in ("record", "states", "every"):
        return Message(kind, term, number, draw(st.binary(min_size=1, max_size=300)))
    if kind == "begin":
        return Message(kind, term, number, sizes=(draw(NUMBERS), draw(NUMBERS)))
    if kind == "part":
        body = draw(st.binary(max_size=300))
        return Message(kind, term, number, body, draw(st.integers(0, 1)), draw(NUMBERS))
    return Message(kind, term, number)


@given(messages())
def test_every_message_decodes_to_itself(message: Message) -> None:
    assert decode(message.encode()) == message


@given(st.binary(max_size=80))
def test_any_payload_decodes_or_raises_a_protocol_error(payload: bytes) -> None:
    try:
        found = decode(payload)
    except ProtocolError:
        return
    assert found.term == payload[1 : 1 + TERM_BYTES]


@given(messages(), st.integers(0, 40))
def test_a_message_cut_short_is_refused_or_shorter(message: Message, cut: int) -> None:
    payload = message.encode()
    short = payload[: max(0, len(payload) - cut - 1)]
    try:
        found = decode(short)
    except ProtocolError:
        return
    # Only a body may be cut and still decode: never a header field.
    assert (found.kind, found.term, found.number) == (message.kind, message.term, message.number)
    assert found.kind in ("record", "states", "every", "part", "hello", "confirm", "end")


def test_a_term_of_the_wrong_size_is_not_sent() -> None:
    with pytest.raises(ProtocolError, match="16 bytes"):
        Message("hello", b"short", 0).encode()
    assert decode(Message("hello", NO_TERM, 7).encode()).number == 7


def test_a_snapshot_part_of_a_third_file_is_refused() -> None:
    payload = bytearray(Message("part", NO_TERM, 1, b"x", 1, 0).encode())
    payload[1 + TERM_BYTES + 8] = 2
    with pytest.raises(ProtocolError, match="file 2"):
        decode(bytes(payload))


@pytest.mark.parametrize(
    "payload", [b"", b"{}", b"not json", b'{"node": "a"}', b'["a"]', b'{"online": true}']
)
def test_a_state_that_is_not_one_reads_as_none(payload: bytes) -> None:
    assert State.decode(payload) is None


def test_states_and_topics_round_trip() -> None:
    state = State("box-1", online=True, term="ab" * 16)
    assert State.decode(state.encode()) == state
    topics = Topics.of("gateway/replication/", "gw")
    assert topics.log == "gateway/replication/gw/log"
    assert topics.standby == "gateway/replication/gw/standby"
    assert topics.state("primary") == "gateway/replication/gw/state/primary"
