"""The accounting identities hold in every snapshot, even while other threads change counts."""

from __future__ import annotations

import threading
import time
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.buffer.core.ledger import Compacted
from gateway.observe.accounting import SUMMARY_OUTCOMES, Accounting, Snapshot, step_label

COMMITS = 20_000
CLASSES = ("default", "telemetry")
LEVELS = (1, 2, 3)


def holds(s: Snapshot) -> bool:
    """The three identities, and every breakdown adding up to its total."""
    o, made = s.outcomes, {name: sum(s.summaries[name].values()) for name in SUMMARY_OUTCOMES}
    return (
        o["received"] == o["invalid"] + o["refused"] + o["suppressed"] + o["accepted"]
        and o["accepted"] + o["recovered"]
        == o["delivered"] + o["dead_lettered"] + o["dropped"] + o["summarised"] + s.buffered
        and made["made"] + made["recovered"]
        == made["delivered"]
        + made["dead_lettered"]
        + made["resummarised"]
        + made["dropped"]
        + sum(s.summaries_buffered.values())
        and sum(s.refused.values()) == o["refused"]
        and sum(s.dropped.values()) == o["dropped"]
        and sum(s.suppressed.values()) == o["suppressed"]
        and sum(s.summarised.values()) == o["summarised"]
    )


def test_identities_hold_under_concurrent_updates() -> None:
    """Snapshots taken while one thread commits and another removes always add up."""
    acc = Accounting(recovered=7)
    done = threading.Event()

    def ingest() -> None:
        for _ in range(COMMITS):
            acc.committed(
                accepted=3,
                invalid=1,
                refused={("device_share", "default"): 2},
                dropped={("shed", "telemetry"): 1},
            )
        done.set()

    def flush() -> None:
        while not done.is_set() or acc.snapshot().buffered >= 2:
            if acc.snapshot().buffered >= 2:
                acc.removed(delivered=1, dead_lettered=1)
            else:
                time.sleep(0.0001)

    threads = [threading.Thread(target=ingest), threading.Thread(target=flush)]
    for t in threads:
        t.start()
    snapshots = [acc.snapshot()]
    while any(t.is_alive() for t in threads) and len(snapshots) < 100_000:
        snapshots.append(acc.snapshot())
    for t in threads:
        t.join(timeout=30)
        assert not t.is_alive()
    final = acc.snapshot()
    assert snapshots
    assert all(holds(s) for s in snapshots)
    assert holds(final)
    assert final.outcomes["accepted"] == 3 * COMMITS
    assert final.refused == {("device_share", "default"): 2 * COMMITS}
    assert final.dropped == {("shed", "telemetry"): COMMITS}
    assert final.buffered in (0, 1)


def _by_class(draw: st.DrawFn, most: int) -> Counter[str]:
    """Counts by device class adding up to at most `most`."""
    counts: Counter[str] = Counter()
    for device_class in CLASSES:
        counts[device_class] = draw(st.integers(0, max(0, most - sum(counts.values()))))
    return +counts


def _by_level(draw: st.DrawFn, held: Counter[int]) -> Counter[int]:
    """Counts by level, each at most what the level holds."""
    return +Counter({level: draw(st.integers(0, held[level])) for level in LEVELS})


@st.composite
def _calls(draw: st.DrawFn) -> tuple[int, Counter[int], list[tuple[str, object]]]:
    """A start and a sequence of calls that never take more than is buffered, as the buffer."""
    recovered = draw(st.integers(0, 50))
    summaries_recovered = Counter({level: draw(st.integers(0, 20)) for level in LEVELS})
    raw, held = recovered, Counter(summaries_recovered)
    calls: list[tuple[str, object]] = []
    for _ in range(draw(st.integers(1, 30))):
        kind = draw(st.sampled_from(("committed", "compacted", "removed", "damaged")))
        if kind == "committed":
            accepted = draw(st.integers(0, 40))
            dropped = _by_class(draw, raw)
            args: object = (
                accepted,
                draw(st.integers(0, 5)),
                {("device_share", c): n for c, n in _by_class(draw, 10).items()},
                {("drop_oldest", c): n for c, n in dropped.items()},
                _by_class(draw, 10),
            )
            raw += accepted - sum(dropped.values())
        elif kind == "compacted":
            summarised = _by_class(draw, raw)
            resummarised = _by_level(draw, held)
            held -= resummarised
            dropped_summaries = _by_level(draw, held)
            held -= dropped_summaries
            made = +Counter({level: draw(st.integers(0, 10)) for level in LEVELS})
            held += made
            raw -= sum(summarised.values())
            args = Compacted(summarised, made, resummarised, dropped_summaries, sum(made.values()))
        elif kind == "removed":
            delivered = draw(st.integers(0, raw))
            dead = draw(st.integers(0, raw - delivered))
            summaries_delivered = _by_level(draw, held)
            held -= summaries_delivered
            summaries_dead = _by_level(draw, held)
            held -= summaries_dead
            raw -= delivered + dead
            args = (delivered, dead, summaries_delivered, summaries_dead)
        else:
            lost = _by_class(draw, raw)
            summaries_lost = _by_level(draw, held)
            held -= summaries_lost
            raw -= sum(lost.values())
            args = ({("damaged", c): n for c, n in lost.items()}, summaries_lost)
        calls.append((kind, args))
    return recovered, summaries_recovered, calls


@settings(max_examples=300, deadline=None)
@given(_calls())
def test_identities_hold_after_any_sequence_of_calls(
    case: tuple[int, Counter[int], list[tuple[str, object]]],
) -> None:
    """Commits, compactions, removals and damage in any order keep all three identities."""
    recovered, summaries_recovered, calls = case
    acc = Accounting(recovered=recovered, summaries_recovered=summaries_recovered)
    assert holds(acc.snapshot())
    for kind, args in calls:
        if kind == "compacted":
            assert isinstance(args, Compacted)
            acc.compacted(args)
        else:
            assert isinstance(args, tuple)
            getattr(acc, kind)(*args)
        snapshot = acc.snapshot()
        assert holds(snapshot), (kind, args, snapshot)
        assert snapshot.buffered >= 0
        assert all(n > 0 for n in snapshot.summaries_buffered.values())


def test_summaries_buffered_follow_each_level() -> None:
    """A compaction moves summaries up a level; delivery and damage take them off theirs."""
    acc = Accounting(recovered=100, summaries_recovered={1: 4})
    acc.compacted(Compacted(Counter(default=90), Counter({1: 6, 2: 2}), Counter({1: 3}), Counter()))
    assert acc.snapshot().summaries_buffered == {1: 7, 2: 2}
    acc.removed(0, 0, {1: 5}, {2: 1})
    acc.damaged({}, {1: 2})
    s = acc.snapshot()
    assert s.summaries_buffered == {2: 1}
    assert s.buffered == 10
    assert s.summarised == {"default": 90}
    assert s.summaries["dropped"] == {1: 2}
    assert holds(s)


def test_levels_are_named_by_their_step() -> None:
    """A level is named by its step in seconds, or by its number past the configured steps."""
    assert [step_label(level, (60, 600)) for level in (1, 2, 3)] == ["60s", "600s", "level 3"]
