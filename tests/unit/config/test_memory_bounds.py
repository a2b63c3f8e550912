"""Memory bounds as settings: sized from the capacity, named in errors; the small-box profile."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from gateway.buffer.fiforead import MAX_DECODED_BYTES
from gateway.buffer.sealing import PENDING_MAX_BYTES
from gateway.config import loader as config
from gateway.config.sections import BufferSettings
from tests.unit.config.test_config import CONFIG_DIR, MINIMAL, problems, write

if TYPE_CHECKING:
    from pathlib import Path

KIB, MIB = 1 << 10, 1 << 20


def test_the_bounds_sized_from_the_default_capacity_are_the_former_fixed_ones(
    tmp_path: Path,
) -> None:
    """Unset, at the default capacity, each bound is the value it had before it was a setting."""
    settings = config.load(write(tmp_path, MINIMAL.replace('capacity = "1GiB"\n', "")), {})
    assert settings.buffer.capacity == 1 << 30
    assert settings.buffer.decoded_cache_max_bytes == MAX_DECODED_BYTES == 16 * MIB
    assert settings.buffer.seal_pending_max_bytes == PENDING_MAX_BYTES == 8 * MIB
    assert settings.mqtt.receive_maximum == 20_000


@pytest.mark.parametrize(
    ("capacity", "decoded", "pending"),
    [
        (1 * MIB, 4 * MIB, 256 * KIB),  # the decoded cache's floor
        # 100 devices interleaving in 16 MiB seal chunks of hundreds of readings, not 30.
        (16 * MIB, 4 * MIB, 4 * MIB),
        (256 * MIB, 4 * MIB, 8 * MIB),
        (64 << 30, 16 * MIB, 8 * MIB),  # the ceilings: a bigger disk takes no more memory
    ],
)
def test_unset_bounds_follow_the_capacity_between_floor_and_ceiling(
    capacity: int, decoded: int, pending: int
) -> None:
    """capacity/64 and capacity/4, kept between a useful floor and the former fixed value."""
    buffer = BufferSettings(path="/var/lib/gateway", capacity=capacity)  # type: ignore[arg-type]
    assert buffer.decoded_cache_max_bytes == decoded
    assert buffer.seal_pending_max_bytes == pending


def test_set_bounds_win_over_the_sizing(tmp_path: Path) -> None:
    """A bound set in the file is taken as it is, above the ceiling too."""
    text = MINIMAL.replace(
        'capacity = "1GiB"',
        'capacity = "1GiB"\ndecoded_cache_bytes = "64MiB"\nseal_pending_bytes = 65536',
    )
    buffer = config.load(write(tmp_path, text), {}).buffer
    assert buffer.decoded_cache_max_bytes == 64 * MIB
    assert buffer.seal_pending_max_bytes == 64 * KIB


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ('decoded_cache_bytes = "1KiB"', "buffer.decoded_cache_bytes"),
        ('seal_pending_bytes = "2GiB"', "buffer.seal_pending_bytes"),
        ('seal_pending_bytes = "lots"', "buffer.seal_pending_bytes"),
    ],
)
def test_a_bound_out_of_range_is_named(tmp_path: Path, line: str, key: str) -> None:
    """Too small, too big or not a size: the error names the key."""
    found = problems(tmp_path, MINIMAL.replace('capacity = "1GiB"', f'capacity = "1GiB"\n{line}'))
    assert len(found) == 1
    assert found[0].startswith(f"{key}: "), found
    assert "unknown key" not in found[0]


def test_receive_maximum_out_of_range_is_named(tmp_path: Path) -> None:
    """MQTT 5 allows 1 to 65,535 messages in flight."""
    text = MINIMAL.replace(
        'client_id = "gateway-1"', 'client_id = "gateway-1"\nreceive_maximum = 0'
    )
    (found,) = problems(tmp_path, text)
    assert found.startswith("mqtt.receive_maximum: "), found
    assert "unknown key" not in found


def test_the_small_box_profile_loads_with_the_bounds_it_states() -> None:
    """config/small-box.toml validates, and its bounds are those its comments explain."""
    settings = config.load(CONFIG_DIR / "small-box.toml", {})
    buffer = settings.buffer
    assert buffer.capacity == 256 * MIB
    assert buffer.decoded_cache_max_bytes == 2 * MIB
    assert buffer.seal_pending_max_bytes == 1 * MIB
    assert buffer.commit_max_readings == 500
    assert settings.mqtt.receive_maximum == 1000
    assert settings.mqtt.workers == 1
    assert settings.influx.api == "v1", "v2 loads influxdb-client, past the profile's budget"
    assert (settings.flush.batch_ceiling, settings.flush.max_in_flight) == (2000, 2)
    assert settings.api.latest_series == 1000
    assert settings.api.miss_cache_entries == 1000
    assert settings.metrics.max_connections == 16
