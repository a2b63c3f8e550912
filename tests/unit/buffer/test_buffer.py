"""The LMDB buffer: per-device FIFO, exact accounting, delete only what was delivered."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from gateway.buffer.deadletters import DeadLetterStore
from gateway.buffer.store import Buffer
from gateway.errors import CapacityError, StorageError
from gateway.points.model import Reading
from gateway.points.record import pack
from tests.points import unpack

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

MIB = 1 << 20


@pytest.fixture
def opened() -> Iterator[Callable[..., Buffer]]:
    """Opens buffers for a test and closes whatever is still open at its end."""
    buffers: list[Buffer] = []

    def open_buffer(path: Path, capacity: int = 16 * MIB) -> Buffer:
        buffers.append(Buffer(path, capacity))
        return buffers[-1]

    yield open_buffer
    for buf in buffers:
        buf.close()


def rec(device: str, ts: int) -> tuple[str, bytes]:
    return device, pack(Reading(device, "m", (("device", device),), (("v", float(ts)),), ts))


def test_fifo_per_device_and_exact_accounting(
    tmp_path: Path, opened: Callable[..., Buffer]
) -> None:
    """Readings come back per device in acceptance order; totals count every byte."""
    buf = opened(tmp_path)
    items = [rec("a", 1), rec("b", 2), rec("a", 3), rec("b", 4), rec("a", 5)]
    buf.append(items)
    assert buf.backlog() == {"a": 3, "b": 2}
    spans = buf.read([("a", 2), ("b", 10)])
    assert [
        (s.device, s.first_seq, [unpack(s.device, v).ts_ns for v in s.values]) for s in spans
    ] == [("a", 0, [1, 3]), ("b", 0, [2, 4])]
    totals = buf.totals()
    assert totals.readings == 5
    assert totals.nbytes == sum(12 + len(v) for _, v in items)
    assert buf.devices()["a"].oldest_ts_ns == 1

    assert buf.delete([("a", 0, 2)]) == 2
    assert buf.backlog() == {"a": 1, "b": 2}
    assert buf.devices()["a"].oldest_ts_ns == 5
    assert [unpack("a", v).ts_ns for v in buf.read([("a", 9)])[0].values] == [5]


def test_read_does_not_remove(tmp_path: Path, opened: Callable[..., Buffer]) -> None:
    """Reading twice returns the same readings."""
    buf = opened(tmp_path)
    buf.append([rec("a", 1)])
    assert buf.read([("a", 5)]) == buf.read([("a", 5)])
    assert buf.totals().readings == 1


def test_accounting_survives_reopen(tmp_path: Path, opened: Callable[..., Buffer]) -> None:
    """After close and reopen, counts, bytes and heads are what they were."""
    buf = opened(tmp_path)
    buf.append([rec(f"d{i % 7}", i) for i in range(100)])
    buf.delete([("d0", 0, 5), ("d3", 0, 14)])
    before = (buf.totals(), buf.devices())
    buf.close()
    again = opened(tmp_path)
    assert (again.totals(), again.devices()) == before
    assert again.read([("d0", 1)])[0].first_seq == 5
    again.append([rec("d0", 1000), rec("new", 1)])
    assert again.devices()["new"].number == 7


def test_delete_must_start_at_head(tmp_path: Path, opened: Callable[..., Buffer]) -> None:
    """Deleting what was already deleted, or more than exists, fails and changes nothing."""
    buf = opened(tmp_path)
    buf.append([rec("a", 1), rec("a", 2)])
    buf.delete([("a", 0, 1)])
    for bad in ([("a", 0, 1)], [("a", 1, 5)], [("zz", 0, 1)]):
        with pytest.raises(StorageError):
            buf.delete(bad)
    assert buf.totals().readings == 1


def test_failed_delete_is_all_or_nothing(tmp_path: Path, opened: Callable[..., Buffer]) -> None:
    """A delete with one bad span leaves every span in place."""
    buf = opened(tmp_path)
    buf.append([rec("a", 1), rec("b", 2)])
    with pytest.raises(StorageError):
        buf.delete([("a", 0, 1), ("b", 3, 1)])
    assert buf.backlog() == {"a": 1, "b": 1}
    buf.close()
    assert opened(tmp_path).backlog() == {"a": 1, "b": 1}


def test_budget_full_is_capacity_and_stores_nothing(
    tmp_path: Path, opened: Callable[..., Buffer]
) -> None:
    """Past the byte budget an append raises CapacityError and stores none of its readings."""
    buf = opened(tmp_path, MIB)
    batch = [rec("a", i) for i in range(1000)]
    batch_bytes = sum(12 + len(v) for _, v in batch)
    appended = 0
    while buf.totals().nbytes + batch_bytes <= buf.budget_bytes:
        buf.append(batch)
        appended += len(batch)
    with pytest.raises(CapacityError):
        buf.append(batch * 2)
    assert buf.totals().readings == appended
    assert buf.totals().nbytes == appended // 1000 * batch_bytes
    buf.delete([("a", 0, 1000)])
    buf.append(batch)
    assert buf.totals().readings == appended


def test_dead_letters_move_atomically(tmp_path: Path, opened: Callable[..., Buffer]) -> None:
    """A refused point leaves the FIFO and enters the dead-letter store in one transaction."""
    buf = opened(tmp_path)
    buf.append([rec("a", 1), rec("a", 2)])
    buf.delete([("a", 0, 2)], [("a", "HTTP 400: type conflict", "m v=2.0 2")])
    assert buf.totals().readings == 0
    buf.close()
    store = DeadLetterStore.open(tmp_path, buf.capacity_bytes)
    (letter,) = store
    store.close()
    assert (letter.device, letter.reason, letter.line) == (
        "a",
        "HTTP 400: type conflict",
        "m v=2.0 2",
    )


def test_many_devices(tmp_path: Path, opened: Callable[..., Buffer]) -> None:
    """10,000 devices with a few readings each keep separate, exact FIFOs."""
    buf = opened(tmp_path, 64 * MIB)
    buf.append([rec(f"dev-{i % 10_000}", i) for i in range(30_000)])
    backlog = buf.backlog()
    assert len(backlog) == 10_000
    assert set(backlog.values()) == {3}
    spans = buf.read([("dev-9999", 3)])
    assert [unpack("dev-9999", v).ts_ns for v in spans[0].values] == [9999, 19999, 29999]


def test_second_writer_is_refused(tmp_path: Path, opened: Callable[..., Buffer]) -> None:
    """Only one process may write a buffer."""
    opened(tmp_path).append([rec("a", 1)])
    with pytest.raises(StorageError, match="in use by another gateway process"):
        Buffer(tmp_path, 16 * MIB)


def corrupt_totals(path: Path, readings: int, nbytes: int) -> None:
    import struct  # noqa: PLC0415

    import lmdb  # noqa: PLC0415

    env = lmdb.open(str(path), max_dbs=4)
    with env.begin(write=True) as txn:
        txn.put(b"totals", struct.pack(">QQ", readings, nbytes), db=env.open_db(b"meta", txn=txn))
    env.close()


def test_verify_finds_and_start_repairs_a_mismatch(
    tmp_path: Path, opened: Callable[..., Buffer], caplog: pytest.LogCaptureFixture
) -> None:
    """Accounting that disagrees with the data is reported, and rebuilt at the next start."""
    buf = opened(tmp_path)
    buf.append([rec("a", 1), rec("b", 2), rec("a", 3)])
    good = buf.totals()
    assert buf.verify().is_consistent
    buf.close()
    corrupt_totals(tmp_path, 99, 5)

    with Buffer(tmp_path, 16 * MIB, readonly=True) as reader:
        report = reader.verify()
        assert report.problems == [
            f"totals (readings, bytes): stored (99, 5), found (3, {good.nbytes})"
        ]
    caplog.errors_expected = True  # type: ignore[attr-defined]
    again = opened(tmp_path)
    assert again.totals() == good
    assert again.verify().is_consistent
    assert "rebuilt it from a full scan" in caplog.text


@pytest.mark.soak
def test_one_device_with_two_million_readings(
    tmp_path: Path, opened: Callable[..., Buffer]
) -> None:
    """A single device's FIFO of 2,000,000 readings drains in order with exact accounting."""
    buf = opened(tmp_path, 1 << 30)
    for start in range(0, 2_000_000, 10_000):
        buf.append([rec("big", ts) for ts in range(start, start + 10_000)])
    assert buf.backlog() == {"big": 2_000_000}
    expected_ts = 0
    while buf.totals().readings:
        (span,) = buf.read([("big", 50_000)])
        assert unpack("big", span.values[0]).ts_ns == expected_ts
        assert unpack("big", span.values[-1]).ts_ns == expected_ts + len(span.values) - 1
        buf.delete([("big", span.first_seq, len(span.values))])
        expected_ts += len(span.values)
    assert expected_ts == 2_000_000
    assert buf.totals().nbytes == 0
    assert buf.verify().is_consistent


@pytest.mark.parametrize("devices", [1, 1000])
def test_file_never_grows_past_capacity_and_deletes_still_work(
    tmp_path: Path, opened: Callable[..., Buffer], devices: int
) -> None:
    """Filled until refused, the LMDB file stays within the capacity and can still shrink."""
    buf = opened(tmp_path, 2 * MIB)
    ts = 0
    refused = None
    while refused is None:
        batch = [rec(f"dev-{(ts + i) % devices}", ts + i) for i in range(200)]
        ts += len(batch)
        try:
            buf.append(batch)
        except CapacityError as exc:
            refused = exc
    assert buf.totals().nbytes <= buf.budget_bytes
    assert (tmp_path / "data.mdb").stat().st_size <= 2 * MIB
    backlog = buf.backlog()
    spans = buf.read(list(backlog.items()))
    assert buf.delete([(s.device, s.first_seq, len(s.values)) for s in spans]) == sum(
        backlog.values()
    )
    buf.append([rec("dev-0", ts)])
    assert buf.verify().is_consistent
