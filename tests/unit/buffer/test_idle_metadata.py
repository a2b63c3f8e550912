"""Idle metadata of a small buffer: forgotten by checkpoints, bounded by the configuration.

Device entries without readings and latest values stay when the buffer is empty, and the page
guard counts them (twice: a checkpoint rewriting them needs a copy). Idle entries are forgotten
by the checkpoint, not only by a group commit the guard may refuse; a lowered bound of the
last-value table applies at start; and a configuration whose last-value table cannot fit its
capacity is refused, naming the keys.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from gateway.buffer import checkpoint
from gateway.buffer.store import Buffer
from gateway.buffer.transaction import PRUNE_FLOOR_ENTRIES
from gateway.config import loader
from gateway.errors import CapacityError, ConfigError
from gateway.points.model import Reading
from gateway.points.record import pack

if TYPE_CHECKING:
    from pathlib import Path

SMALL = 4 << 20
# Long device names, as some fleets have: more entry per device.
NAME = "sensor-{:06d}-of-the-north-plant-building"


def reading(device: str, ts: int, size: int = 40) -> bytes:
    """A packed reading of about `size` bytes (8 to 400), stamped `ts`."""
    pad = max(0, size - 30)
    fields = (("v", ts), ("p", "x" * pad)) if pad else (("v", ts),)
    return pack(Reading(device, "m", (("d", device),), fields, ts))


def append_soon(buffer: Buffer, items: list[tuple[str, bytes]], ticks: int = 3) -> None:
    """Append, giving the buffer's housekeeping a few ticks (each a due checkpoint) if refused."""
    for _ in range(ticks):
        try:
            buffer.append(items)
        except CapacityError:
            buffer.maintain()
        else:
            return
    buffer.append(items)


@pytest.fixture
def due_checkpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every housekeeping tick finds a checkpoint due, as one does every two seconds."""
    monkeypatch.setattr(checkpoint, "CHECKPOINT_INTERVAL_S", 0.0)


@pytest.mark.usefixtures("due_checkpoints")
def test_small_buffer_takes_readings_after_thousands_of_devices_went_idle(tmp_path: Path) -> None:
    """4 MiB, 9,900 devices in waves, each delivered: empty, it takes readings, also restarted."""
    devices = [NAME.format(i) for i in range(9900)]
    with Buffer(tmp_path, SMALL, latest_series=2000) as buffer:
        for start in range(0, len(devices), 1800):
            wave = devices[start : start + 1800]
            for at in range(0, len(wave), 300):
                append_soon(
                    buffer,
                    [
                        (d, reading(d, start + i, 8 + i % 393))
                        for i, d in enumerate(wave[at : at + 300])
                    ],
                )
            spans = buffer.read([(d, 10) for d in wave])
            buffer.delete([(s.device, s.first_seq, len(s.values)) for s in spans])
            buffer.maintain()
        assert buffer.totals().readings == 0
        append_soon(buffer, [(devices[0], reading(devices[0], 10**6))])
        assert len(buffer.devices()) < 2000
    with Buffer(tmp_path, SMALL, latest_series=2000) as buffer:
        append_soon(buffer, [(devices[1], reading(devices[1], 10**6 + 1, 400))])
        assert buffer.totals().readings == 2


@pytest.mark.usefixtures("due_checkpoints")
def test_idle_entries_are_forgotten_by_a_checkpoint_not_at_once(tmp_path: Path) -> None:
    """Past the floor, a device emptied since the last checkpoint keeps its entry one more."""
    devices = [f"d{i}" for i in range(PRUNE_FLOOR_ENTRIES + 2000)]
    idle, busy = devices[:7000], devices[7000:]
    with Buffer(tmp_path, 64 << 20) as buffer:
        buffer.append([(d, reading(d, i)) for i, d in enumerate(devices)])
        spans = buffer.read([(d, 1) for d in idle])
        buffer.delete([(s.device, s.first_seq, 1) for s in spans])
        # The delete's own checkpoint wrote them empty; the next one forgets them.
        assert len(buffer.devices()) == len(devices)
        buffer.maintain()
        assert set(buffer.devices()) == set(busy)
        assert buffer.verify().is_consistent
    with Buffer(tmp_path, 64 << 20) as buffer:
        assert set(buffer.devices()) == set(busy)
        assert buffer.totals().readings == len(busy)
        buffer.append([("d0", reading("d0", 10**6))])
        assert buffer.readings_of("d0") == [reading("d0", 10**6)]


@pytest.mark.usefixtures("due_checkpoints")
def test_few_idle_entries_are_kept(tmp_path: Path) -> None:
    """Below the floor and with room, idle devices keep their entries (and numbers)."""
    with Buffer(tmp_path, 64 << 20) as buffer:
        buffer.append([(f"d{i}", reading(f"d{i}", i)) for i in range(3000)])
        spans = buffer.read([(f"d{i}", 1) for i in range(2000)])
        buffer.delete([(s.device, s.first_seq, 1) for s in spans])
        buffer.maintain()
        buffer.maintain()
        assert len(buffer.devices()) == 3000


def test_lowered_latest_bound_applies_at_start(tmp_path: Path) -> None:
    """A last-value table filled under a higher bound is cut to the new one when opened."""
    devices = [NAME.format(i) for i in range(3000)]
    with Buffer(tmp_path, SMALL, latest_series=3000) as buffer:
        buffer.append([(d, reading(d, i)) for i, d in enumerate(devices)])
        assert len(buffer.latest_devices()) == 3000
    with Buffer(tmp_path, SMALL, latest_series=500) as buffer:
        assert len(buffer.latest_devices()) == 500
        assert buffer.totals().readings == 3000


def settings_with(capacity: str, latest_series: int | None = None, workers: int = 1) -> dict:
    """A raw configuration with the given capacity, read API bound and workers."""
    raw: dict = {
        "mqtt": {
            "workers": workers,
            "subscriptions": [{"topic": "s/{device}/{measurement}", "format": "json"}],
        },
        "buffer": {"path": "buffer", "capacity": capacity},
        "influx": {"api": "v1", "database": "telemetry"},
    }
    if latest_series is not None:
        raw["api"] = {"latest_series": latest_series}
    return raw


def test_config_refuses_a_last_value_table_that_cannot_fit() -> None:
    """4 MiB with the default 10,000 latest series is refused, naming both keys."""
    with pytest.raises(ConfigError) as info:
        loader.validate(settings_with("4MiB"))
    (problem,) = info.value.problems
    assert "api.latest_series = 10000" in problem
    assert "buffer.capacity = 4194304" in problem
    assert loader.validate(settings_with("4MiB", 2000)).api.latest_series == 2000
    assert loader.validate(settings_with("1GiB")).api.latest_series == 10_000


def test_config_counts_the_capacity_each_worker_gets() -> None:
    """Workers split the capacity: what fits one buffer may not fit a third of it."""
    assert loader.validate(settings_with("16MiB", 10_000)).mqtt.workers == 1
    with pytest.raises(ConfigError) as info:
        loader.validate(settings_with("16MiB", 10_000, workers=3))
    assert "shared by 3 workers" in info.value.problems[0]
    raw = settings_with("1MiB")
    raw["api"] = {"enabled": False}
    assert not loader.validate(raw).api.enabled
