"""Flash wear in figures: bytes this process wrote to storage, their rates, the card's life.

The counter is read from /proc/self/io at each scrape (gateway/observe/procio.py); the
housekeeping tick samples it into two sliding windows (the last hour and the last day) for the
rates. Memory is bounded: a window keeps one sample per `span / SLOTS` seconds. Where /proc does
not say (some sandboxes), nothing is exported and one INFO line says why.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.observe import procio

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from prometheus_client.metrics_core import Metric

logger = logging.getLogger(__name__)

HOUR_S = 3600.0
DAY_S = 86400.0
# Samples kept per window: the rate's start moves in steps of span / SLOTS.
SLOTS = 120
# A rate over less than this is mostly the start-up's writes: none is given before.
MIN_SPAN_S = 60.0
# Card makers rate endurance in decimal terabytes written.
TB = 10**12


class RateWindow:
    """The rate of a counter over about the last `span_s` seconds, from bounded samples."""

    def __init__(self, span_s: float, min_span_s: float = MIN_SPAN_S, slots: int = SLOTS) -> None:
        """A window of `span_s`; no rate until its samples cover `min_span_s`."""
        self._span_s = span_s
        self._step_s = span_s / slots
        self._min_span_s = min_span_s
        self._samples: deque[tuple[float, int]] = deque()
        self._latest: tuple[float, int] | None = None

    def add(self, t: float, value: int) -> None:
        """Sample the counter's `value` at monotonic time `t`."""
        self._latest = (t, value)
        if not self._samples or t - self._samples[-1][0] >= self._step_s:
            self._samples.append((t, value))
        # The oldest kept sample is the last one at or before the window's start.
        while len(self._samples) > 1 and self._samples[1][0] <= t - self._span_s:
            self._samples.popleft()

    def __len__(self) -> int:
        """Samples held."""
        return len(self._samples)

    def per_second(self) -> float | None:
        """The counter's increase per second over the window; None while too short."""
        if self._latest is None:
            return None
        t0, v0 = self._samples[0]
        t1, v1 = self._latest
        if t1 - t0 < self._min_span_s:
            return None
        start = t1 - self._span_s
        if t0 < start and len(self._samples) > 1:
            # After a pause of the ticks (a stalled loop, a stopped process) the oldest sample
            # can be hours before the window: the counter is taken at the window's start,
            # along the line to the next sample, so the rate stays over the span.
            ta, va = self._samples[1]
            at_start = v0 + (va - v0) * (start - t0) / (ta - t0)
            return max(0.0, v1 - at_start) / (t1 - start)
        return max(0, v1 - v0) / (t1 - t0)


def projected_life_days(
    endurance_tbw: float | None, used_tb: float, bytes_per_day: float | None
) -> float | None:
    """Days until the card has taken its rated TBW at this rate; None without either.

    Infinite when nothing is written; 0 when the rating is already used up.
    """
    if endurance_tbw is None or bytes_per_day is None:
        return None
    remaining = max(0.0, (endurance_tbw - used_tb) * TB)
    # A used-up card has no life left, written to or not.
    if remaining == 0:
        return 0.0
    if bytes_per_day <= 0:
        return math.inf
    return remaining / bytes_per_day


class DiskWear:
    """This process's bytes written, sampled for rates; None everywhere /proc does not say."""

    def __init__(
        self,
        read: Callable[[], int | None] = procio.read_write_bytes,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Read the counter with `read`, time with `clock`."""
        self._read = read
        self._clock = clock
        self._told = False
        self.endurance_tbw: float | None = None
        self.endurance_used_tb = 0.0
        # One of several workers: the card takes all their writes, so no one of them can
        # project its life (the alert and the status page add the workers' rates up).
        self.sole_writer = True
        self.hour = RateWindow(HOUR_S)
        self.day = RateWindow(DAY_S)

    def written(self) -> int | None:
        """Bytes written so far; None (said once at INFO) where /proc/self/io is unreadable."""
        value = self._read()
        if value is None and not self._told:
            self._told = True
            logger.info(
                "/proc/self/io is absent or unreadable here: no gateway_disk_* metrics "
                "(bytes written and flash wear)"
            )
        return value

    def sample(self) -> None:
        """Add a sample to both windows (the housekeeping tick calls it)."""
        value = self.written()
        if value is not None:
            now = self._clock()
            self.hour.add(now, value)
            self.day.add(now, value)

    def figures(self, accepted: int) -> dict[str, Any] | None:
        """Bytes written, per reading, per hour and per day, projected life; None unknown."""
        written = self.written()
        if written is None:
            return None
        per_s_hour, per_s_day = self.hour.per_second(), self.day.per_second()
        per_day = None if per_s_day is None else per_s_day * DAY_S
        remaining = (
            None
            if self.endurance_tbw is None
            else max(0.0, self.endurance_tbw - self.endurance_used_tb) * TB
        )
        life = projected_life_days(self.endurance_tbw, self.endurance_used_tb, per_day)
        return {
            "written_bytes": written,
            "bytes_per_reading": written / accepted if accepted else None,
            "bytes_per_hour": None if per_s_hour is None else per_s_hour * HOUR_S,
            "bytes_per_day": per_day,
            "endurance_remaining_bytes": remaining,
            # JSON has no infinity: nothing written is a life without end, said as null.
            "projected_life_days": None if life is None or math.isinf(life) else life,
        }


class DiskWearCollector(Collector):
    """Exports the figures at each scrape; `accepted` gives the readings accepted so far."""

    def __init__(self, wear: DiskWear, accepted: Callable[[], int]) -> None:
        """Export `wear`'s figures."""
        self._wear = wear
        self._accepted = accepted

    def collect(self) -> Iterator[Metric]:
        """The counter, the rates known so far and, rated and measured, the projected life."""
        figures = self._wear.figures(self._accepted())
        if figures is None:
            return
        yield CounterMetricFamily(
            "gateway_disk_written_bytes",
            "Bytes this process caused to be written to storage (/proc/self/io write_bytes, "
            "page-cache writeback included)",
            value=figures["written_bytes"],
        )
        for name, key, help_text in (
            ("gateway_disk_written_bytes_per_reading", "bytes_per_reading",
             "Bytes written per reading accepted, since start"),
            ("gateway_disk_write_rate_bytes_per_hour", "bytes_per_hour",
             "Bytes written per hour, over the last hour"),
            ("gateway_disk_write_rate_bytes_per_day", "bytes_per_day",
             "Bytes written per day, over the last day (or since start)"),
            ("gateway_disk_endurance_remaining_bytes", "endurance_remaining_bytes",
             "What the card's rated endurance ([buffer] endurance_tbw) has left, bytes"),
        ):  # fmt: skip
            if figures[key] is not None:
                yield GaugeMetricFamily(name, help_text, value=figures[key])
        life = projected_life_days(
            self._wear.endurance_tbw, self._wear.endurance_used_tb, figures["bytes_per_day"]
        )
        if self._wear.sole_writer and life is not None:
            yield GaugeMetricFamily(
                "gateway_disk_projected_life_days",
                "Days until the card has taken its rated endurance at the daily write rate",
                value=life,
            )


def combine(workers: list[dict[str, Any]], accepted: int) -> dict[str, Any]:
    """The figures of the whole gateway from its workers' (the card takes all their writes)."""
    written = sum(w["written_bytes"] for w in workers)

    def total(key: str) -> float | None:
        values = [w[key] for w in workers]
        return None if None in values else sum(values)

    per_day = total("bytes_per_day")
    remaining = workers[0]["endurance_remaining_bytes"]
    life = None
    if remaining is not None and per_day is not None:
        # As projected_life_days: used up is 0 days, nothing written (infinite) is null.
        life = 0.0 if remaining == 0 else remaining / per_day if per_day > 0 else None
    return {
        "written_bytes": written,
        "bytes_per_reading": written / accepted if accepted else None,
        "bytes_per_hour": total("bytes_per_hour"),
        "bytes_per_day": per_day,
        "endurance_remaining_bytes": remaining,
        "projected_life_days": life,
    }
