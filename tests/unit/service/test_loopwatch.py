"""The loop-lag sampler in a real event loop: a blocking call is measured and logged where it is."""

from __future__ import annotations

import logging
import time

import anyio
import pytest
from prometheus_client import CollectorRegistry, Histogram

from gateway.observe.looplag import LoopLag
from gateway.observe.metrics import LOOP_LAG_BUCKETS
from gateway.service import loopwatch
from gateway.service.loopwatch import LoopWatch

BLOCK_S = 0.6


def hold_the_loop() -> None:
    """What a seal that forgot to yield would do."""
    time.sleep(BLOCK_S)


@pytest.mark.anyio
async def test_a_blocking_call_is_measured_and_logged_while_it_lasts(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The histogram and the window get a lag of the block; the watcher thread names where the
    loop was stuck while it was, and the task says how long once it is back."""
    monkeypatch.setattr(loopwatch, "WATCH_EVERY_S", 0.02)
    lag = LoopLag()
    histogram = Histogram(
        "lag_seconds", "lag", registry=CollectorRegistry(), buckets=LOOP_LAG_BUCKETS
    )
    watch = LoopWatch(lag, histogram, interval_s=0.01, warn_after_s=0.2)
    caplog.set_level(logging.WARNING, logger=loopwatch.__name__)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch.run)
            await anyio.sleep(0.05)
            hold_the_loop()
            # Logged by the task once it woke: polled under the deadline above.
            while not any("stalled for" in r.getMessage() for r in caplog.records):  # noqa: ASYNC110
                await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
    assert BLOCK_S - 0.01 <= lag.recent_max(time.monotonic()) < BLOCK_S + 0.5
    (during,) = [r.getMessage() for r in caplog.records if "has not turned" in r.getMessage()]
    assert "test_loopwatch.py" in during
    assert "hold_the_loop" in during
    # The caller is named too, and the event loop's own frames are not.
    assert "test_a_blocking_call_is_measured_and_logged_while_it_lasts" in during, during
    assert "asyncio" not in during, during
    sample = histogram.collect()[0].samples
    over = {s.labels["le"]: s.value for s in sample if s.name.endswith("_bucket")}
    assert over["0.5"] < over["1.0"]  # one observation between 0.5 s and 1 s
