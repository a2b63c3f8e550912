"""Housekeeping takes compaction steps one per short pause, counting each as it commits.

Between ticks, a service with a compact lane asks every `COMPACT_POLL_S` whether compaction is
due; one without asks once a tick.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from dataclasses import dataclass, field
from types import SimpleNamespace

import anyio
import pytest

from gateway.buffer.core.admission import Lane, Policy, Rules
from gateway.buffer.core.ledger import Compacted, Totals
from gateway.errors import CapacityError
from gateway.observe.health import Health
from gateway.observe.metrics import Metrics
from gateway.service.housekeeping import COMPACT_POLL_S, SEAL_STEP_PAUSE_S, Housekeeping

RULES = Rules(1000, default_lane=Lane(policy=Policy.COMPACT, steps_ns=(10**9,)))
NO_COMPACT_LANE = Rules(1000, default_lane=Lane(policy=Policy.DROP_OLDEST))


@dataclass
class FakeBuffer:
    """Compacts `steps` times once `not_due` asks are over (failing once first, if asked), and
    seals `seals` steps."""

    steps: int
    seals: int = 0
    fail_first: bool = False
    not_due: int = 0
    rules: Rules = RULES
    budget_bytes: int = 1000
    calls: list[tuple[str, float]] = field(default_factory=list)
    done: anyio.Event = field(default_factory=anyio.Event)

    def compact(self, rules: object) -> Compacted | None:
        assert rules is self.rules
        self.calls.append(("compact", time.monotonic()))
        if self.fail_first:
            self.fail_first = False
            raise CapacityError("no page left")
        if self.not_due:
            self.not_due -= 1
            return None
        if not self.steps:
            self.done.set()
            return None
        self.steps -= 1
        return Compacted(Counter(default=10), Counter({1: 2}), appended=2)

    def maintain(self) -> bool:
        self.calls.append(("seal", time.monotonic()))
        self.seals = max(0, self.seals - 1)
        return bool(self.seals)

    def dead_letter_count(self) -> int:
        return 0

    def totals(self) -> Totals:
        return Totals(readings=0, nbytes=0, devices=0)


class FakeFlusher:
    """Records what compaction told it."""

    batch_size = 10

    def __init__(self) -> None:
        self.appended: list[int] = []

    def note_appended(self, summaries: int) -> None:
        self.appended.append(summaries)

    def lag_s(self, _now: float) -> float:
        return 0.0


def _chores(buffer: FakeBuffer) -> tuple[Housekeeping, Metrics, FakeFlusher]:
    metrics = Metrics()
    metrics.accounting.committed(accepted=100, invalid=0)
    flusher = FakeFlusher()
    ingest = SimpleNamespace(
        committer=SimpleNamespace(rules=buffer.rules), housekeeping=lambda: None
    )
    notifier = SimpleNamespace(watchdog_interval_s=None, send=lambda **_: None)
    chores = Housekeeping(
        buffer=buffer,  # type: ignore[arg-type]
        flusher=flusher,  # type: ignore[arg-type]
        ingest=ingest,  # type: ignore[arg-type]
        metrics=metrics,
        health=Health(started=time.monotonic()),
        notifier=notifier,  # type: ignore[arg-type]
        summary_interval_s=0,
    )
    return chores, metrics, flusher


async def _run_until_done(chores: Housekeeping, buffer: FakeBuffer, within_s: float = 1.5) -> None:
    """Run the chores until the buffer has nothing left to compact (by default, in one tick)."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(chores.run)
        with anyio.fail_after(within_s):
            await buffer.done.wait()
        tg.cancel_scope.cancel()


def _gaps(calls: list[tuple[str, float]]) -> list[float]:
    return [b[1] - a[1] for a, b in itertools.pairwise(calls)]


@pytest.mark.anyio
async def test_compaction_steps_follow_each_other_with_the_loop_free_between() -> None:
    """Every step is counted and told to the flusher, each after a pause, within one tick."""
    buffer = FakeBuffer(steps=5)
    chores, metrics, flusher = _chores(buffer)
    await _run_until_done(chores, buffer)
    compactions = [c for c in buffer.calls if c[0] == "compact"]
    assert len(compactions) == 6, "five steps, then one that found nothing to do"
    assert min(_gaps(compactions)) >= SEAL_STEP_PAUSE_S * 0.9
    s = metrics.accounting.snapshot()
    assert s.outcomes["summarised"] == 50
    assert s.buffered == 50
    assert s.summaries_buffered == {1: 10}
    assert flusher.appended == [2] * 5


@pytest.mark.anyio
async def test_seal_and_compaction_take_turns() -> None:
    """While a seal is under way, compaction still gets every other step."""
    buffer = FakeBuffer(steps=3, seals=20)
    chores, _, _ = _chores(buffer)
    await _run_until_done(chores, buffer)
    kinds = [kind for kind, _ in buffer.calls]
    # The tick's own seal step, then the two alternate, one per pause.
    assert kinds[:7] == ["seal"] + ["seal", "compact"] * 3
    assert min(_gaps(buffer.calls[1:])) >= SEAL_STEP_PAUSE_S * 0.9


@pytest.mark.anyio
async def test_a_failed_step_is_said_once_and_the_next_tick_tries_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No room on disk ends the steps with one warning; the next poll tries again."""
    buffer = FakeBuffer(steps=1, fail_first=True)
    chores, metrics, _ = _chores(buffer)
    await _run_until_done(chores, buffer)
    compactions = [c for c in buffer.calls if c[0] == "compact"]
    assert compactions[1][1] - compactions[0][1] >= COMPACT_POLL_S * 0.9
    warnings = [r for r in caplog.records if "compaction had no room" in r.getMessage()]
    assert len(warnings) == 1
    assert metrics.accounting.snapshot().outcomes["summarised"] == 10


@pytest.mark.anyio
async def test_compaction_that_becomes_due_between_ticks_starts_within_a_poll() -> None:
    """With a compact lane the fill is looked at every poll, not once a tick (2 s)."""
    buffer = FakeBuffer(steps=2, not_due=4)
    chores, metrics, _ = _chores(buffer)
    started = time.monotonic()
    await _run_until_done(chores, buffer, within_s=1)
    assert time.monotonic() - started < 1
    asks = [at for kind, at in buffer.calls if kind == "compact"]
    assert len(asks) == 4 + 2 + 1
    assert min(_gaps([("", at) for at in asks[:4]])) >= COMPACT_POLL_S * 0.9
    assert metrics.accounting.snapshot().outcomes["summarised"] == 20


@pytest.mark.anyio
async def test_without_a_compact_lane_compaction_is_asked_once_a_tick() -> None:
    """Under the other policies nothing polls between ticks."""
    buffer = FakeBuffer(steps=0, rules=NO_COMPACT_LANE)
    chores, _, _ = _chores(buffer)
    async with anyio.create_task_group() as tg:
        tg.start_soon(chores.run)
        await anyio.sleep(0.5)
        tg.cancel_scope.cancel()
    assert [kind for kind, _ in buffer.calls] == ["seal", "compact"]
