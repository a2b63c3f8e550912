"""The sync primary's acks: held until the standby confirms, in order; let go when it is away."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.replication.gate import AckGate


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def gate(mode: str = "sync", away: str = "local") -> tuple[AckGate, Clock, list[int]]:
    clock = Clock()
    g = AckGate(mode, away, 2.0, clock)  # type: ignore[arg-type]
    return g, clock, []


def test_acks_wait_for_the_confirmation_of_their_record_and_go_in_order() -> None:
    g, _, sent = gate()
    g.follow()
    for record in (5, 6, 6, 8):
        g.submit(record, lambda r=record: sent.append(r))
    assert sent == []
    g.confirm(6)
    assert sent == [5, 6, 6]
    g.confirm(7)
    assert sent == [5, 6, 6]
    g.confirm(8)
    assert sent == [5, 6, 6, 8]
    assert g.durability == "sync"
    assert g.unconfirmed_acks == 0


def test_a_record_confirmed_already_is_acked_at_once_unless_others_wait_before_it() -> None:
    g, _, sent = gate()
    g.follow()
    g.confirm(3)
    g.submit(3, lambda: sent.append(3))
    assert sent == [3]
    g.submit(4, lambda: sent.append(4))
    g.submit(2, lambda: sent.append(2))  # behind 4 in arrival order: waits for it
    assert sent == [3]
    g.confirm(4)
    assert sent == [3, 4, 2]


def test_a_standby_that_does_not_confirm_in_time_is_overdue() -> None:
    g, clock, _ = gate()
    g.follow()
    g.submit(1, lambda: None)
    clock.now = 1.9
    assert not g.overdue()
    clock.now = 2.1
    assert g.overdue()
    assert g.oldest_wait_s() > 2.0


def test_away_with_local_durability_lets_everything_go_and_counts_it() -> None:
    g, _, sent = gate(away="local")
    g.follow()
    g.submit(1, lambda: sent.append(1))
    g.submit(2, lambda: sent.append(2))
    g.away()
    assert sent == [1, 2]
    assert g.durability == "degraded"
    g.submit(3, lambda: sent.append(3))
    assert sent == [1, 2, 3]
    assert g.unconfirmed_acks == 3


def test_away_with_hold_keeps_every_ack_until_the_standby_confirms() -> None:
    g, clock, sent = gate(away="hold")
    g.submit(1, lambda: sent.append(1))  # no standby ever followed: held all the same
    g.follow()
    g.away()
    g.submit(2, lambda: sent.append(2))
    clock.now = 100.0
    assert sent == []
    assert not g.overdue()  # nothing to time out: it is away already
    g.follow()
    g.confirm(2)
    assert sent == [1, 2]


def test_async_never_holds() -> None:
    g, _, sent = gate(mode="async")
    g.follow()
    g.submit(9, lambda: sent.append(9))
    assert sent == [9]
    assert g.durability == "async"
    assert g.unconfirmed_acks == 0


def test_acks_of_a_lost_connection_are_dropped() -> None:
    g, _, sent = gate()
    g.follow()
    g.submit(1, lambda: sent.append(1))
    assert g.drop() == 1
    g.confirm(1)
    assert sent == []


@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("submit"), st.integers(0, 30)),
            st.tuples(st.just("confirm"), st.integers(0, 30)),
            st.tuples(st.just("away"), st.just(0)),
            st.tuples(st.just("follow"), st.just(0)),
        ),
        max_size=60,
    ),
    st.sampled_from(["local", "hold"]),
)
def test_acks_go_in_arrival_order_and_never_before_their_confirmation_while_synced(
    steps: list[tuple[str, int]], away: str
) -> None:
    g, _, sent = gate(away=away)
    submitted: list[int] = []
    for op, n in steps:
        if op == "submit":
            index = len(submitted)
            submitted.append(n)
            confirmed, following = g.confirmed, g.following
            before = len(sent)
            g.submit(n, lambda i=index: sent.append(i))
            if len(sent) > before and following:
                assert n <= confirmed
        elif op == "confirm":
            g.confirm(n)
        elif op == "away":
            g.away()
        else:
            g.follow()
        assert sent == list(range(len(sent)))  # arrival order, none twice
