"""An outage's backoff and probe, without a database: a pure state and a ping function."""

from __future__ import annotations

import math

import anyio
import pytest

from gateway.config.sections import FlushSettings
from gateway.errors import SinkUnavailable, StorageError
from gateway.flush.outage import Outage

SETTINGS = FlushSettings(retry_initial_s=0.5, retry_max_s=2.0, probe_interval_s=0.01)


def test_no_failure_no_wait_and_no_outage_to_end() -> None:
    """A sink that never failed is written at once, and a landed write ends nothing."""
    outage = Outage(SETTINGS)
    assert outage.wait_s() == 0.0
    assert not outage.landed()


def test_a_retry_after_is_honoured_up_to_the_cap_and_one_worker_tries() -> None:
    """Retry-After of 60 s waits the cap (2 s), not the 0.5 s backoff; a trying worker holds off."""
    outage = Outage(SETTINGS)
    outage.failed(SinkUnavailable("503", retry_after_s=60))
    assert 1.9 <= outage.wait_s() <= 2.0
    outage.probing = True
    assert outage.wait_s() == math.inf
    assert outage.landed()
    assert outage.failures == 0
    assert outage.wait_s() == 0.0


def test_a_storage_failure_is_logged_once_and_backs_off_within_the_cap(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Readings that landed but could not be deleted: logged once, retried within the 2 s cap."""
    caplog.errors_expected = True  # type: ignore[attr-defined]
    outage = Outage(SETTINGS)
    outage.failed(StorageError("MDB_MAP_FULL"))
    outage.failed(StorageError("MDB_MAP_FULL"))
    assert outage.failures == 2
    assert 0.0 <= outage.wait_s() <= 2.0
    assert [r.getMessage()[:30] for r in caplog.records] == ["could not delete delivered rea"]


@pytest.mark.anyio
async def test_an_unreachable_database_is_pinged_until_it_answers_and_the_backoff_ends() -> None:
    """Pings every probe interval while it cannot be reached; the first answer ends the wait."""
    outage = Outage(SETTINGS.model_copy(update={"retry_initial_s": 60, "retry_max_s": 60}))
    outage.failed(SinkUnavailable("refused", unreachable=True))
    assert outage.wait_s() > 1
    answers = iter([False, False, True])
    heard: list[bool] = []

    async def ping() -> bool:
        return next(answers)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(outage.probe_while_unreachable, ping, heard.append)
            while not heard or not heard[-1]:  # noqa: ASYNC110 - polled under the deadline
                await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
    assert heard == [False, False, True]
    assert outage.wait_s() == 0.0, "the backoff ended with the answer"
    assert outage.failures == 1, "the outage ends with a write that lands, not with a ping"
