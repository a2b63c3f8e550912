"""The benchmark's measurements: what a process wrote to storage, a histogram's largest value."""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import TYPE_CHECKING

import pytest

from gateway.tools import backlog
from gateway.tools.measure import histogram_max, write_bytes

if TYPE_CHECKING:
    from pathlib import Path

MIB = 1 << 20


def test_write_bytes_grows_by_what_this_process_synced(tmp_path: Path) -> None:
    """Two MiB written and fsynced show in /proc/<pid>/io; a missing process reads as 0."""
    before = write_bytes(os.getpid())
    with (tmp_path / "data").open("wb") as out:
        out.write(os.urandom(2 * MIB))
        out.flush()
        os.fsync(out.fileno())
    assert write_bytes(os.getpid()) - before >= 2 * MIB
    assert write_bytes(2**22 + 12345) == 0


def lag(counts: dict[str, float]) -> dict[str, float]:
    """A scrape of the loop-lag histogram with these cumulative bucket counts."""
    return {f"gateway_event_loop_lag_seconds_bucket{{le={le}}}": n for le, n in counts.items()}


def test_histogram_max_is_the_highest_bucket_observed_since_before() -> None:
    """The bound of the lowest bucket holding every observation of the window, not earlier ones."""
    before = lag({"0.01": 5, "0.1": 5, "1.0": 6, "+Inf": 6})
    after = lag({"0.01": 9, "0.1": 10, "1.0": 11, "+Inf": 11})
    assert histogram_max(after, "gateway_event_loop_lag_seconds") == 1.0
    assert histogram_max(after, "gateway_event_loop_lag_seconds", before) == 0.1
    assert histogram_max(before, "gateway_event_loop_lag_seconds", before) == 0.0
    assert histogram_max({}, "gateway_event_loop_lag_seconds") is None


class _StuckGateway:
    """A gateway that took some readings and takes no more (its buffer full under reject)."""

    def metric(self, _name: str) -> float:
        return 5.0

    def rss_mib(self, _key: str) -> float:
        return 1.0


def _published(load: object) -> None:
    """A publisher whose messages the broker took."""


def test_the_backlog_build_ends_when_the_gateway_takes_no_more(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Publishers done and the count stuck short of the backlog: an error, not a wait for ever."""
    monkeypatch.setattr(backlog, "publish", _published)
    monkeypatch.setattr(backlog, "load_plan", lambda *_, **__: [SimpleNamespace(count=10)])
    monkeypatch.setattr(backlog, "SLOW_POLL_S", 0.01)
    monkeypatch.setattr(backlog, "STALL_S", 0.3)
    with pytest.raises(RuntimeError, match="took 5 of 10 readings and no more"):
        backlog._build(_StuckGateway(), 1883, 10, 1, 1)  # type: ignore[arg-type]
