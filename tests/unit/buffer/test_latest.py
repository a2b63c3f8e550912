"""The last-value table in a real LMDB buffer: newest by timestamp, bounded, state by FIFO."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.buffer.store import Buffer
from gateway.points.model import Reading
from gateway.points.record import pack

if TYPE_CHECKING:
    from pathlib import Path

MIB = 1 << 20


def rec(device: str, ts: int, value: float, room: str = "a") -> tuple[str, bytes]:
    tags = (("device", device), ("room", room))
    return device, pack(Reading(device, "m", tags, (("v", value),), ts))


def values(buffer: Buffer, device: str) -> dict[str, tuple[float, int, bool]]:
    return {
        latest.tags["room"]: (latest.fields["v"], latest.ts_ns, latest.buffered)
        for latest in buffer.latest_of(device)
    }


def test_newest_by_timestamp_per_series_not_the_last_to_arrive(tmp_path: Path) -> None:
    with Buffer(tmp_path, 16 * MIB) as buffer:
        buffer.append([rec("d1", 10, 1.0), rec("d1", 30, 3.0), rec("d1", 20, 2.0)])
        buffer.append([rec("d1", 25, 2.5), rec("d1", 5, 0.5, room="b")])
        assert values(buffer, "d1") == {"a": (3.0, 30, True), "b": (0.5, 5, True)}
        assert values(buffer, "d2") == {}
        assert set(buffer.latest_devices()) == {"d1"}


def test_a_value_is_delivered_once_its_reading_left_the_buffer(tmp_path: Path) -> None:
    with Buffer(tmp_path, 16 * MIB) as buffer:
        buffer.append([rec("d1", 10, 1.0), rec("d1", 20, 2.0)])
        (span,) = buffer.read([("d1", 1)])
        buffer.delete([("d1", span.first_seq, 1)])
        assert values(buffer, "d1") == {"a": (2.0, 20, True)}
        (span,) = buffer.read([("d1", 1)])
        buffer.delete([("d1", span.first_seq, 1)])
        assert values(buffer, "d1") == {"a": (2.0, 20, False)}
        buffer.append([rec("d1", 15, 1.5)])  # older than the delivered one: not the latest
        assert values(buffer, "d1") == {"a": (2.0, 20, False)}


def test_the_least_recently_updated_series_is_evicted_past_the_bound(tmp_path: Path) -> None:
    with Buffer(tmp_path, 16 * MIB, latest_series=3) as buffer:
        buffer.append([rec("d1", 1, 1.0), rec("d2", 1, 1.0), rec("d3", 1, 1.0)])
        buffer.append([rec("d1", 2, 2.0)])  # d1 is now the most recent
        buffer.append([rec("d4", 1, 1.0)])
        assert set(buffer.latest_devices()) == {"d1", "d3", "d4"}
        buffer.append([rec(f"x{i}", 1, 1.0) for i in range(10)])
        assert set(buffer.latest_devices()) == {"x7", "x8", "x9"}


def test_values_from_the_database_are_kept_and_survive_a_restart(tmp_path: Path) -> None:
    with Buffer(tmp_path, 16 * MIB) as buffer:
        buffer.remember("d9", [b'm,device=d9,room=z v=4.5,ok=true,s="x y" 1700000000000000000'])
    with Buffer(tmp_path, 16 * MIB, readonly=True) as buffer:
        (latest,) = buffer.latest_of("d9")
        assert latest.fields == {"v": 4.5, "ok": True, "s": "x y"}
        assert (latest.ts_ns, latest.buffered, latest.from_database) == (
            1700000000000000000,
            False,
            True,
        )


def test_a_value_read_back_with_spaces_in_names_and_strings_keeps_its_series(
    tmp_path: Path,
) -> None:
    with Buffer(tmp_path, 16 * MIB) as buffer:
        buffer.remember(
            "d9",
            [
                b'm,device=d9,room=a\\ b s="x y",v=1 100',
                b'm,device=d9,room=a\\ b s="z w",v=2 200',
            ],
        )
        buffer.append([rec("d9", 300, 3.0, room="a b")])
        (latest,) = buffer.latest_of("d9")
        assert (latest.tags["room"], latest.fields["v"], latest.ts_ns) == ("a b", 3.0, 300)


def test_no_table_is_kept_when_turned_off(tmp_path: Path) -> None:
    with Buffer(tmp_path, 16 * MIB, latest_series=0) as buffer:
        buffer.append([rec("d1", 10, 1.0)])
        assert buffer.latest is None
        assert buffer.latest_of("d1") == []
        assert buffer.totals().readings == 1


def test_a_series_too_long_for_a_key_is_buffered_without_a_latest_value(tmp_path: Path) -> None:
    # Valid names reach LMDB's 511-byte key limit: 4-byte characters, or several long tags.
    device = "\U0001f321" * 100  # as long as a device name may be (MAX_DEVICE_BYTES)
    long_tags = (("device", device), ("room", "x" * 256))
    readings = [
        (device, pack(Reading(device, "m", long_tags, (("v", 1.0),), 5))),
        rec("d1", 10, 1.0),
        (device, pack(Reading(device, "m", (("device", "d2"),), (("v", 2.0),), 6))),
    ]
    with Buffer(tmp_path, 16 * MIB) as buffer:
        buffer.append(readings)
        buffer.remember(device, [b"m,room=" + b"y" * 600 + b" v=4.5 1700000000000000000"])
        buffer.checkpoint()
        assert values(buffer, "d1") == {"a": (1.0, 10, True)}
        assert [latest.tags for latest in buffer.latest_of(device)] == [{"device": "d2"}]
        assert buffer.latest_of("z" * 600) == []
        index = buffer.device_index()
        assert index.names == sorted([device, "d1"])
        accounting, seen = buffer.device_details(index.names, index)
        assert len(accounting[device]) == 1
        assert set(seen) == {device, "d1"}
    with Buffer(tmp_path, 16 * MIB) as buffer:
        assert buffer.totals().readings == 3
        assert values(buffer, "d1") == {"a": (1.0, 10, True)}
