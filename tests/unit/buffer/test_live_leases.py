"""Live batches in flight are never dropped, before or after their live-first split ends.

A live-first drain sends a FIFO's live stream ahead of its backlog. Once the backlog is
delivered the split ends and the live readings are the FIFO's oldest; a live batch still in
flight then must stay protected from admission's drops, and its delete must succeed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.buffer.core.admission import DEVICE_SHARE, Lane, Policy, Rules
from gateway.buffer.store import Buffer
from gateway.errors import CapacityError
from tests.unit.buffer.checks import assert_counts_match, reading

if TYPE_CHECKING:
    from pathlib import Path

CAPACITY = 64 << 20
DROPPING = Lane(policy=Policy.DROP_OLDEST)


def split_and_lease(buffer: Buffer, devices: list[str], live: int) -> dict[str, tuple[int, ...]]:
    """Backlog, split, live readings; lease each FIFO's live batch, then deliver the backlog."""
    buffer.append([(d, reading(d, ts, 8 + ts * 31 % 393)) for ts in range(1, 21) for d in devices])
    buffer.begin_live_first()
    buffer.append([(d, reading(d, ts, 100)) for ts in range(100, 100 + live) for d in devices])
    in_flight = {
        s.device: (s.first_seq, len(s.values))
        for s in buffer.read_live([(d, live // 2) for d in devices])
    }
    for span in buffer.read([(d, 100) for d in devices]):
        assert buffer.delete([(span.device, span.first_seq, len(span.values))]) == 20
    # The backlog is gone: the splits are over, the live batches still in flight.
    assert buffer.live_backlog() == {}
    return in_flight


def test_live_batch_in_flight_after_its_split_ended_is_not_dropped(tmp_path: Path) -> None:
    """drop_oldest at a full buffer takes readings after the live batch, which then deletes."""
    with Buffer(tmp_path, CAPACITY) as buffer:
        in_flight = split_and_lease(buffer, ["d"], live=20)
        first, count = in_flight["d"]
        leased = buffer.readings_of("d")[:count]
        rules = Rules(budget_bytes=buffer.totals().nbytes, high=1.0, low=0.5, default_lane=DROPPING)
        admitted = buffer.admit([("d", reading("d", 500, 400), DROPPING)], rules)
        dropped = sum(admitted.dropped.values())
        assert dropped > 0
        assert buffer.readings_of("d")[:count] == leased
        assert buffer.delete([("d", first, count)]) == count
        assert buffer.totals().readings == 20 + 1 - count - dropped
        assert_counts_match(buffer)


def test_many_devices_at_a_full_buffer_keep_live_batches_in_flight(tmp_path: Path) -> None:
    """Thousands of devices at a full buffer while live batches fly: every delete succeeds."""
    devices = [f"sensor-{i:04d}" for i in range(1500)]
    with Buffer(tmp_path, CAPACITY) as buffer:
        in_flight = split_and_lease(buffer, devices, live=6)
        rules = Rules(budget_bytes=buffer.totals().nbytes, high=1.0, low=0.5, default_lane=DROPPING)
        items = [(d, reading(d, 900, 8 + i % 393), DROPPING) for i, d in enumerate(devices)]
        admitted = buffer.admit(items, rules)
        dropped = sum(admitted.dropped.values())
        assert dropped
        deleted = 0
        for device, (first, count) in in_flight.items():
            deleted += buffer.delete([(device, first, count)])
        assert deleted == 3 * len(devices)
        assert buffer.totals().readings == 6 * len(devices) + admitted.stored - dropped - deleted
        assert_counts_match(buffer)


def test_device_over_its_share_keeps_its_live_batch_in_flight(tmp_path: Path) -> None:
    """A device past its share drops readings after its live batch, never the batch."""
    with Buffer(tmp_path, CAPACITY) as buffer:
        in_flight = split_and_lease(buffer, ["d"], live=40)
        first, count = in_flight["d"]
        leased = buffer.readings_of("d")[:count]
        budget = 1_000_000
        share = buffer.devices()["d"].nbytes / budget
        rules = Rules(budget_bytes=budget, device_share=share, default_lane=DROPPING)
        admitted = buffer.admit([("d", reading("d", 500, 400), DROPPING)], rules)
        dropped = admitted.dropped[DEVICE_SHARE, DROPPING.device_class]
        assert dropped
        assert buffer.readings_of("d")[:count] == leased
        assert buffer.delete([("d", first, count)]) == count
        assert buffer.totals().readings == 40 + 1 - count - dropped
        assert_counts_match(buffer)


def test_live_batch_alone_in_its_fifo_pauses_rather_than_drop(tmp_path: Path) -> None:
    """With little but the live batch in flight to take, drop_oldest spares the batch."""
    with Buffer(tmp_path, CAPACITY) as buffer:
        in_flight = split_and_lease(buffer, ["d"], live=4)
        first, count = in_flight["d"]
        rules = Rules(budget_bytes=buffer.totals().nbytes, high=1.0, low=0.5, default_lane=DROPPING)
        try:
            admitted = buffer.admit([("d", reading("d", 500, 400), DROPPING)], rules)
        except CapacityError:
            pass  # nothing of it stored or dropped
        else:
            assert sum(admitted.dropped.values()) <= 4 - count
        assert buffer.delete([("d", first, count)]) == count
        assert_counts_match(buffer)
