"""The compact policy through a long outage, with kill -9 in the middle of a compaction.

A 1 MiB buffer under `compact` (steps of 1 s, 5 s and 20 s) takes eight times what it holds
raw while influxd is stopped, so its oldest readings become 1-s summaries and those 5-s ones.
The gateway kills itself (the test-only fault hook) at its first compaction into 5-s summaries,
before or after that step's commit; it is started again without the hook, the broker delivers
again what it had not acknowledged, influxd comes back, and the buffer drains. Then the
database must hold every reading published, as itself or inside a summary: every device in
every 20-s window, every raw point exactly as published, and per window the exact minimum,
maximum, count and integer sum of what was published there.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

from gateway.tools import servers
from tests import backends
from tests.conftest import InfluxV1
from tests.gatewayproc import SMALL_API, assert_identities, publish_messages, wait_for

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from tests.conftest import Endpoint
    from tests.gatewayproc import GatewayProcess

pytestmark = pytest.mark.fault

# Batches grow to 5,000 so that the drain of 200,000 readings, most of them redelivered by the
# broker after the restart, ends well within its deadline on a busy 2-core machine.
FLUSH = "linger_s = 0.1\nretry_max_s = 1\nbatch_initial = 500\nbatch_ceiling = 5000\n"
# Watermarks below the defaults: at 0.9 these readings bring a 1 MiB buffer's pages to the page
# guard before compaction starts (at the midpoint of the two), and the guard then refuses the
# compaction's own commit too (the long-outage bench meets the same at 16 MiB).
BUFFER = (
    'capacity = "1MiB"\npolicy = "compact"\ncompact_interval_s = 1\ncompact_ladder = [5, 4]\n'
    "compact_level_share = 0.2\nhigh_watermark = 0.5\nlow_watermark = 0.4\n"
)
# Aligned to the coarsest step (20 s), so the published span is whole windows.
START_MS = 1_700_000_000_000
STEP_MS = 100
WINDOW_NS = 20 * 10**9
DEVICES = 20
# Eight times the readings the 1 MiB buffer's budget holds raw (about 25,000 of these).
PER_DEVICE = 10_000
PER_MESSAGE = 10
NS_PER_MS = 10**6


def value(k: int, i: int) -> dict[str, Any]:
    """Device k's reading i: a float, an integer and a string that all move."""
    return {"v": round(20 + (k * 13 + i * 7) % 1000 / 10, 1), "n": (k * 31 + i * 17) % 1000 - 500}


def label(i: int) -> str:
    """The string field of reading i."""
    return f"s{i % 7}"


def messages(run_id: str) -> list[tuple[str, str]]:
    """Every device's readings, `PER_MESSAGE` to a message, devices taking turns."""
    out = []
    for first in range(0, PER_DEVICE, PER_MESSAGE):
        for k in range(DEVICES):
            items = [
                {"ts": START_MS + i * STEP_MS, **value(k, i), "s": label(i)}
                for i in range(first, first + PER_MESSAGE)
            ]
            out.append((f"{run_id}/dev-{k:02}/telemetry", json.dumps(items)))
    return out


@pytest.fixture
def stopped_influxd(tmp_path: Path, run_id: str) -> Iterator[servers.Server]:
    """An influxd of this test's own with its database made, stopped until the test starts it."""
    db = backends.start_influxd(tmp_path / "influxd")
    servers.influxql(db.url, f"CREATE DATABASE {run_id}")
    db.stop()
    yield db
    db.stop()


def stored_sum(influx: InfluxV1) -> int:
    """Readings the database holds: its raw points plus the counts of its summaries."""
    series = influx.query('SELECT count("n"), count("n_count"), sum("n_count") FROM "telemetry"')
    if not series:
        return 0
    _, points, summaries, summarised = series[0]["values"][0]
    return int(points - summaries + (summarised or 0))


def _points(influx: InfluxV1) -> list[dict[str, Any]]:
    series = influx.query('SELECT * FROM "telemetry"')
    return [dict(zip(s["columns"], v, strict=True)) for s in series for v in s["values"]]


@pytest.mark.parametrize("moment", ["before_commit", "after_commit"])
def test_kill_during_compaction_keeps_every_reading_in_summaries_or_raw(
    gateway: Callable[..., GatewayProcess],
    mosquitto: Endpoint,
    stopped_influxd: servers.Server,
    run_id: str,
    moment: str,
) -> None:
    """kill -9 at the first 5-s compaction step, before or after its commit: after the
    restart and the database's return, every reading published is in the database, raw and
    unchanged or counted in a summary whose window's min, max, count and sum are exact."""
    db = stopped_influxd
    influx = InfluxV1(db.url, run_id)
    gw = gateway(
        influx.config,
        flush=FLUSH,
        buffer=BUFFER,
        api=SMALL_API,
        env={"GATEWAY_FAULT_COMPACT": f"{moment}:2:1"},
    )
    batch = messages(run_id)
    publish_messages(mosquitto.port, batch)
    assert gw.process is not None
    wait_for(lambda: gw.process.poll() is not None, 90, "the fault hook to kill the gateway")
    assert gw.process.returncode == -9, gw.log()
    gw.extra_env = {}
    # Not waiting for its connection: a restart on a full 1 MiB buffer may find its pages at the
    # guard, pause intake at once and wait for the database to free some.
    gw.start(wait_connected=False)
    db = backends.start_influxd(db.workdir, port=db.port)
    try:
        published = DEVICES * PER_DEVICE

        seen: dict[str, object] = {}

        def drained() -> bool:
            m = assert_identities(gw)
            left = m["gateway_buffer_readings"] + sum(
                v for k, v in m.items() if k.startswith("gateway_buffer_summaries{")
            )
            seen.update(left=left, stored=stored_sum(influx), metrics=m)
            return left == 0 and seen["stored"] == published

        try:
            wait_for(drained, 180, f"all {published:,} readings in the database")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last seen {seen}\n{gw.log()}") from None
        points = _points(influx)
        _assert_points(points)
        # The hook fired at a step into 5-s summaries, so two steps happened; one that committed
        # left 5-s summaries, or 20-s ones made of them.
        if moment == "after_commit":
            assert {p["time"] % 8 for p in points} & {2, 3}
    finally:
        db.stop()


def _assert_points(points: list[dict[str, Any]]) -> None:
    """Raw points exact, summaries marked, and each device's 20-s windows exact."""
    windows: dict[tuple[int, int], list[dict[str, Any]]] = {}
    levels = set()
    for p in points:
        k, ts = int(p["device"].removeprefix("dev-")), p["time"]
        levels.add(ts % 8)
        if ts % 8 == 0:
            i, off = divmod(ts // NS_PER_MS - START_MS, STEP_MS)
            assert off == 0
            assert (p["v"], p["n"], p["s"]) == (value(k, i)["v"], value(k, i)["n"], label(i))
            assert p["v_count"] is None
        else:
            assert p["v_count"] is not None, p
        windows.setdefault((k, ts // WINDOW_NS), []).append(p)
    assert {0, 1} <= levels, levels
    first = START_MS * NS_PER_MS // WINDOW_NS
    per_window = WINDOW_NS // NS_PER_MS // STEP_MS
    expected = {(k, first + w) for k in range(DEVICES) for w in range(PER_DEVICE // per_window)}
    assert set(windows) == expected, "every device has a point in every 20-s window"
    for (k, w), held in windows.items():
        first_i = (w - first) * per_window
        raw = [value(k, i) for i in range(first_i, first_i + per_window)]
        assert min(_field(p, "v", "min") for p in held) == min(r["v"] for r in raw)
        assert max(_field(p, "v", "max") for p in held) == max(r["v"] for r in raw)
        assert sum(p["n_count"] or 1 for p in held) == len(raw)
        assert sum(_field(p, "n", "sum") for p in held) == sum(r["n"] for r in raw)


def _field(point: dict[str, Any], name: str, stat: str) -> float:
    """A summary's statistic, or a raw point's value that stands for it."""
    kept = point.get(f"{name}_{stat}")
    return point[name] if kept is None else kept
