"""The accounting identities hold in every snapshot, even while other threads change counts."""

from __future__ import annotations

import threading
import time

from gateway.observe.accounting import Accounting, Snapshot

COMMITS = 20_000


def holds(s: Snapshot) -> bool:
    o = s.outcomes
    return (
        o["received"] == o["invalid"] + o["refused"] + o["accepted"]
        and o["accepted"] + o["recovered"]
        == o["delivered"] + o["dead_lettered"] + o["dropped"] + s.buffered
        and sum(s.refused.values()) == o["refused"]
        and sum(s.dropped.values()) == o["dropped"]
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
