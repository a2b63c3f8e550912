"""The edge-node state machine against spoofing: an NDEATH needs the NBIRTH's bdSeq."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.observe.metrics import Metrics
from gateway.sparkplug.core.pacing import Pacer
from gateway.sparkplug.core.payload import DataType, encode, parse
from gateway.sparkplug.core.session import (
    NDEATH_STALE_BDSEQ,
    NDEATH_WITHOUT_BDSEQ,
    NOTICE_INTERVAL_S,
    Change,
    Limits,
    Sessions,
)
from gateway.sparkplug.core.topic import parse_topic

NOW_NS = 1_700_000_000_000_000_000
NOW_MS = NOW_NS // 1_000_000
D = DataType
LOGGER = "gateway.sparkplug.core.session"


def sessions() -> Sessions:
    return Sessions(Limits(max_aliases=1000, max_nodes=100, rebirth_interval_s=30))


def take(state: Sessions, topic: str, metrics: list, now_s: float = 0.0, seq: int = 0) -> Change:
    """One message through the state machine, as the reader hands it over."""
    payload = parse(encode(NOW_MS, metrics, seq=seq), 1 << 20)
    return state.take(parse_topic(topic), payload, NOW_NS, now_s, False)


def birth(bd: int | None = 7, temperature: str = "Temperature", kind: int = D.Double) -> list:
    bd_seq = [] if bd is None else [("bdSeq", None, D.Int64, bd, None)]
    return [*bd_seq, (temperature, 1, kind, 21.5, None), ("Count", 2, D.Int32, 3, None)]


def death(bd: int | None) -> list:
    return [] if bd is None else [("bdSeq", None, D.Int64, bd, None)]


def online(state: Sessions) -> bool:
    return state.snapshot()[0]["online"]


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelname == "WARNING"]


def test_an_ndeath_without_bdseq_is_refused_counted_and_logged_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The node stays online; every refusal counts, the log speaks once per node and interval."""
    state = sessions()
    take(state, "spBv1.0/g/NBIRTH/n", birth(bd=7))
    with caplog.at_level(logging.WARNING, LOGGER):
        for now_s in (0.0, 1.0, NOTICE_INTERVAL_S - 1):
            change = take(state, "spBv1.0/g/NDEATH/n", death(None), now_s)
            assert change.notes == {}
            assert online(state)
        assert state.refused == {NDEATH_WITHOUT_BDSEQ: 3, NDEATH_STALE_BDSEQ: 0}
        (line,) = warnings(caplog)
        assert line.startswith("Sparkplug NDEATH of 'g/n' refused (ndeath_without_bdseq)")
        assert "the NBIRTH had bdSeq 7; the node stays online" in line
        take(state, "spBv1.0/g/NDEATH/n", death(None), NOTICE_INTERVAL_S)
        take(state, "spBv1.0/g/NBIRTH/other", birth(bd=1))
        take(state, "spBv1.0/g/NDEATH/other", death(None), NOTICE_INTERVAL_S)
    assert len(warnings(caplog)) == 3, "again after the interval, and for another node at once"


def test_an_ndeath_with_another_bdseq_is_refused_and_the_matching_one_takes_the_node_offline() -> (
    None
):
    state = sessions()
    take(state, "spBv1.0/g/NBIRTH/n", birth(bd=7))
    take(state, "spBv1.0/g/DBIRTH/n/d", [("x", 1, D.Int8, 1, None)], seq=1)
    assert take(state, "spBv1.0/g/NDEATH/n", death(6)).notes == {}
    assert online(state)
    assert state.refused[NDEATH_STALE_BDSEQ] == 1
    assert take(state, "spBv1.0/g/NDEATH/n", death(7)).notes
    (node,) = state.snapshot()
    assert (node["online"], node["devices"][0]["online"]) == (False, False)
    assert state.refused == {NDEATH_WITHOUT_BDSEQ: 0, NDEATH_STALE_BDSEQ: 1}


def test_a_node_whose_nbirth_had_no_bdseq_still_goes_offline_on_its_ndeath() -> None:
    """Nothing to match against: the NDEATH counts, as before (the node breaks the spec)."""
    state = sessions()
    take(state, "spBv1.0/g/NBIRTH/n", birth(bd=None))
    take(state, "spBv1.0/g/NDEATH/n", death(None))
    assert not online(state)
    assert state.refused == {NDEATH_WITHOUT_BDSEQ: 0, NDEATH_STALE_BDSEQ: 0}


@pytest.mark.parametrize(
    "metric",
    [
        ("bdSeq", None, D.String, "0", None),
        ("bdSeq", None, D.Double, 0.0, None),
        ("bdSeq", None, D.Boolean, False, None),
        ("bdSeq", None, D.Int64, "", None),
    ],
)
def test_a_bdseq_that_is_not_an_integer_is_no_bdseq(metric: tuple) -> None:
    """Read as protobuf's 0 it matched a first connection's bdSeq 0: refused as none instead."""
    state = sessions()
    take(state, "spBv1.0/g/NBIRTH/n", birth(bd=0))
    assert take(state, "spBv1.0/g/NDEATH/n", [metric]).notes == {}
    assert online(state)
    assert state.refused == {NDEATH_WITHOUT_BDSEQ: 1, NDEATH_STALE_BDSEQ: 0}
    null = parse(encode(NOW_MS, death(0)), 1 << 20)
    null.metrics[0].ClearField("long_value")
    null.metrics[0].is_null = True
    state.take(parse_topic("spBv1.0/g/NDEATH/n"), null, NOW_NS, 0.0, False)
    assert online(state)
    assert state.refused[NDEATH_WITHOUT_BDSEQ] == 2
    # An NBIRTH whose bdSeq holds no integer has none to match: its node's NDEATH counts.
    take(state, "spBv1.0/g/NBIRTH/m", [metric, *birth(bd=None)])
    take(state, "spBv1.0/g/NDEATH/m", death(None))
    assert [n["online"] for n in state.snapshot() if n["edge_node"] == "m"] == [False]


@given(
    born=st.integers(0, 255),
    deaths=st.lists(st.one_of(st.none(), st.integers(0, 255)), max_size=20),
)
def test_only_the_nbirths_bdseq_ever_takes_a_node_offline(born: int, deaths: list) -> None:
    """Any run of NDEATHs: offline exactly when one carried the bdSeq; every other one refused."""
    state = sessions()
    take(state, "spBv1.0/g/NBIRTH/n", birth(bd=born))
    for bd in deaths:
        take(state, "spBv1.0/g/NDEATH/n", death(bd), now_s=0.0)
    assert online(state) is (born not in deaths)
    assert state.refused[NDEATH_WITHOUT_BDSEQ] == deaths.count(None)
    assert state.refused[NDEATH_STALE_BDSEQ] == sum(1 for bd in deaths if bd not in {None, born})


def test_a_birth_redefining_an_alias_while_online_is_taken_but_counted_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The new BIRTH defines the state (the spec); the operator sees that it changed it."""
    state = sessions()
    take(state, "spBv1.0/g/NBIRTH/n", birth())
    with caplog.at_level(logging.WARNING, LOGGER):
        take(state, "spBv1.0/g/NBIRTH/n", birth(), now_s=1)  # a rebirth: the same table
        assert state.alias_changes == 0
        take(state, "spBv1.0/g/NBIRTH/n", birth(temperature="Rogue"), now_s=2)
        assert state.alias_changes == 1
        take(state, "spBv1.0/g/NBIRTH/n", birth(temperature="Rogue", kind=D.Int64), now_s=3)
        assert state.alias_changes == 2, "a data type changed is counted too"
        (line,) = warnings(caplog)
    assert line.startswith("Sparkplug NBIRTH 'g/n': a BIRTH while online redefines 1 metrics")
    assert "alias 1: 'Temperature' type 10 -> 'Rogue' type 10" in line
    data = take(state, "spBv1.0/g/NDATA/n", [(None, 1, None, 5, None)], seq=1)
    assert [r.name for r in data.metrics] == ["Rogue"], "the last BIRTH defines the alias"


def test_a_redefinition_after_a_death_or_of_a_device_follows_the_same_rule() -> None:
    """Offline, a new table is no news; a device's DBIRTH while online is counted."""
    state = sessions()
    take(state, "spBv1.0/g/NBIRTH/n", birth(bd=7))
    take(state, "spBv1.0/g/DBIRTH/n/d", [("x", 1, D.Int8, 1, None)], seq=1)
    take(state, "spBv1.0/g/DBIRTH/n/d", [("y", 1, D.Int8, 1, None)], seq=2)
    assert state.alias_changes == 1
    take(state, "spBv1.0/g/NDEATH/n", death(7))
    take(state, "spBv1.0/g/NBIRTH/n", birth(bd=8, temperature="Renamed"))
    assert state.alias_changes == 1


def test_the_counts_are_exported_at_each_scrape() -> None:
    state = sessions()
    metrics = Metrics()
    metrics.watch_sparkplug(state)
    take(state, "spBv1.0/g/NBIRTH/n", birth(bd=7))
    take(state, "spBv1.0/g/NDEATH/n", death(None))
    take(state, "spBv1.0/g/NBIRTH/n", birth(bd=7, temperature="Rogue"))
    sample = metrics.registry.get_sample_value
    assert sample("gateway_sparkplug_refused_total", {"reason": NDEATH_WITHOUT_BDSEQ}) == 1
    assert sample("gateway_sparkplug_refused_total", {"reason": NDEATH_STALE_BDSEQ}) == 0
    assert sample("gateway_sparkplug_alias_changes_total") == 1


@given(
    keys=st.lists(st.tuples(st.sampled_from("abcdef"), st.floats(0, 100)), max_size=50),
    most=st.integers(1, 4),
)
def test_a_pacer_lets_a_key_through_once_per_interval_and_stays_bounded(
    keys: list[tuple[str, float]], most: int
) -> None:
    pacer = Pacer(10.0, most)
    last: dict[str, float] = {}
    for key, now_s in sorted(keys, key=lambda item: item[1]):
        due = key not in last or now_s - last[key] >= 10.0
        allowed = pacer.allows((key,), now_s)
        # A full table may forget a key early (let it through sooner), never hold it longer.
        assert allowed or not due
        if allowed:
            last[key] = now_s
        assert len(pacer._next) <= most
