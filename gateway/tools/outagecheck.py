"""Reading a long outage back: coverage, the error of what was delivered, the identities.

Used by the long-outage scenario (gateway/tools/longoutage.py). The readings published are
not kept: device k's reading i is `simulate.values(k, i)` at `start_ms + i * step_ms`, so the
raw statistics of any window are recomputed when needed.

A point whose timestamp is divisible by 8 is a raw reading (gateway/buffer/core/summary.py):
it must carry exactly the published values. Any other point is a summary of level `ts % 8`,
standing for the readings of its window (that level's step, aligned to the epoch). Summary
windows nest, so each summary, and each raw point inside a summary's window, belongs to the
coarsest summary window around it; the points of such a window together (raw points as one
sample each, summaries by their count, sum, min and max) are compared with the raw readings
published in it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from gateway.buffer.core.summary import LEVEL_BITS
from gateway.tools import servers
from gateway.tools.simulate import device_name, values

FIELDS = ("temp", "hum")
NS_PER_MS = 10**6
NS_PER_S = 10**9


@dataclass(frozen=True, slots=True)
class Span:
    """What was published: readings 0 to `last` - 1 of each device, the outage's first."""

    start_ms: int
    step_ms: int
    devices: int
    outage_per_device: int
    last: int


@dataclass(slots=True)
class Merged:
    """Count, sum, min and max of one field over the points of a window."""

    count: int = 0
    sums: list[float] = field(default_factory=list)
    low: float = math.inf
    high: float = -math.inf

    def add(self, count: int, total: float, low: float, high: float) -> None:
        """Take a point standing for `count` readings."""
        self.count += count
        self.sums.append(total)
        self.low = min(self.low, low)
        self.high = max(self.high, high)


@dataclass(slots=True)
class Tally:
    """The figures, summed over devices."""

    pairs: int = 0
    covered: int = 0
    raw_points: int = 0
    raw_points_wrong: int = 0
    summary_points: int = 0
    windows: int = 0
    windows_count_off: int = 0
    err: dict[str, float] = field(default_factory=lambda: dict.fromkeys(("min", "max", "mean"), 0))

    def error(self, kind: str, value: float) -> None:
        """Keep the largest error of each kind."""
        self.err[kind] = max(self.err[kind], abs(value))


def check(
    url: str, database: str, span: Span, steps_s: tuple[int, ...], coverage_s: int
) -> dict[str, float]:
    """The coverage and error figures of what the database holds (see the module docstring)."""
    tally = Tally()
    steps_ns = [s * NS_PER_S for s in steps_s]
    for k in range(span.devices):
        # The simulator's own device names: nothing to quote.
        where = f"\"device\" = '{device_name(k)}'"
        query = f'SELECT * FROM "telemetry" WHERE {where}'  # noqa: S608
        series = servers.influxql(url, query, database)
        rows = [dict(zip(s["columns"], v, strict=True)) for s in series for v in s["values"]]
        _cover(tally, span, rows, coverage_s * NS_PER_S)
        _compare(tally, span, k, rows, steps_ns)
    return {
        "coverage_share": tally.covered / tally.pairs if tally.pairs else 0.0,
        "uncovered_pairs": tally.pairs - tally.covered,
        "max_abs_err_min": tally.err["min"],
        "max_abs_err_max": tally.err["max"],
        "max_abs_err_mean": tally.err["mean"],
        "raw_points": tally.raw_points,
        "raw_points_wrong": tally.raw_points_wrong,
        "summary_points": tally.summary_points,
        "summary_windows": tally.windows,
        "summary_windows_count_off": tally.windows_count_off,
    }


def _cover(tally: Tally, span: Span, rows: list[dict[str, Any]], window_ns: int) -> None:
    """Count the outage's windows of this device, and those holding a point."""
    first = span.start_ms * NS_PER_MS // window_ns
    end_ms = span.start_ms + (span.outage_per_device - 1) * span.step_ms
    last = end_ms * NS_PER_MS // window_ns
    held = {row["time"] // window_ns for row in rows}
    tally.pairs += last - first + 1
    tally.covered += sum(1 for w in held if first <= w <= last)


def _compare(
    tally: Tally, span: Span, k: int, rows: list[dict[str, Any]], steps_ns: list[int]
) -> None:
    """Raw points against the published readings; summary windows against their readings."""
    windows = {
        (level, row["time"] - row["time"] % steps_ns[level - 1])
        for row in rows
        if (level := row["time"] % LEVEL_BITS)
    }
    groups: dict[tuple[int, int], dict[str, Merged]] = {}
    for row in rows:
        ts = row["time"]
        around = _coarsest(ts, windows, steps_ns)
        if ts % LEVEL_BITS:
            tally.summary_points += 1
        else:
            tally.raw_points += 1
        if around is None:
            _check_raw(tally, span, k, row)
            continue
        merged = groups.setdefault(around, {f: Merged() for f in FIELDS})
        for f in FIELDS:
            if ts % LEVEL_BITS:
                merged[f].add(row[f"{f}_count"], row[f"{f}_sum"], row[f"{f}_min"], row[f"{f}_max"])
            else:
                merged[f].add(1, row[f], row[f], row[f])
    for (level, start_ns), merged in groups.items():
        _check_window(tally, span, k, (start_ns, start_ns + steps_ns[level - 1]), merged)


def _coarsest(
    ts: int, windows: set[tuple[int, int]], steps_ns: list[int]
) -> tuple[int, int] | None:
    """The coarsest summary window holding `ts`, if any."""
    for level in range(len(steps_ns), 0, -1):
        key = (level, ts - ts % steps_ns[level - 1])
        if key in windows:
            return key
    return None


def _check_raw(tally: Tally, span: Span, k: int, row: dict[str, Any]) -> None:
    i, off = divmod(row["time"] // NS_PER_MS - span.start_ms, span.step_ms)
    want = values(k, i) if not off and 0 <= i < span.last else None
    if want is None or any(row[f] != want[f] for f in FIELDS):
        tally.raw_points_wrong += 1


def _check_window(
    tally: Tally, span: Span, k: int, window_ns: tuple[int, int], merged: dict[str, Merged]
) -> None:
    """One summary window's points against every reading published in it."""
    tally.windows += 1
    start_ms, end_ms = window_ns[0] // NS_PER_MS, window_ns[1] // NS_PER_MS
    first = max(0, -(-(start_ms - span.start_ms) // span.step_ms))
    end = min(span.last, -(-(end_ms - span.start_ms) // span.step_ms))
    readings = [values(k, i) for i in range(first, end)]
    for f in FIELDS:
        got = merged[f]
        raw = [r[f] for r in readings]
        if got.count != len(raw):
            tally.windows_count_off += 1
        if not raw:
            continue
        tally.error("min", got.low - min(raw))
        tally.error("max", got.high - max(raw))
        tally.error("mean", math.fsum(got.sums) / got.count - math.fsum(raw) / len(raw))


def identities(metrics: dict[str, float]) -> dict[str, float]:
    """The accounting identities from one scrape, and the counts they hold."""

    def outcome(name: str) -> float:
        return metrics.get(f"gateway_readings_total{{outcome={name}}}", 0.0)

    def summed(prefix: str, label: str = "") -> float:
        return sum(v for k, v in metrics.items() if k.startswith(prefix) and label in k)

    def summaries(name: str) -> float:
        return summed("gateway_summary_points_total{", f"outcome={name}")

    received, accepted = outcome("received"), outcome("accepted")
    unstored = outcome("invalid") + outcome("refused") + outcome("suppressed")
    removed = outcome("delivered") + outcome("dead_lettered") + outcome("dropped")
    made = summed("gateway_summaries_total{")
    gone = sum(summaries(n) for n in ("delivered", "dead_lettered", "resummarised", "dropped"))
    exact = (
        received == unstored + accepted
        and accepted + outcome("recovered")
        == removed + outcome("summarised") + metrics.get("gateway_buffer_readings", 0.0)
        and made + summaries("recovered") == gone + summed("gateway_buffer_summaries{")
    )
    return {
        "identities_exact": float(exact),
        "received": received,
        "suppressed": outcome("suppressed"),
        "dropped": outcome("dropped"),
        "refused": outcome("refused"),
        "summarised": outcome("summarised"),
        "summaries_made": made,
        "summaries_delivered": summaries("delivered"),
        "stored_per_received": accepted / received if received else 0.0,
    }
