"""A damaged chunk or journal record is set aside and counted; the rest of the buffer goes on.

The damage is made in LMDB directly (one byte of a stored value changed), as a rotting SD card
would; the buffer must find it by its checksum, count the readings it held, keep delivering
every other reading in order, and keep taking new ones.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import lmdb
import pytest

from gateway.buffer import checkpoint, sealing
from gateway.buffer.core.chunk import encode_sealed, is_sealed_intact, sealed_count
from gateway.buffer.core.damage import DAMAGED, SEALED_KIND, take_range
from gateway.buffer.core.ledger import SEALED_KEY, DeviceState
from gateway.buffer.fiforead import DecodedChunks
from gateway.buffer.store import Buffer
from gateway.config import loader as config
from gateway.observe.accounting import Accounting
from gateway.observe.metrics import Metrics
from gateway.points.model import Reading
from gateway.points.record import pack
from gateway.service import status

if TYPE_CHECKING:
    from collections.abc import Iterator

MIB = 1 << 20


@pytest.fixture(autouse=True)
def errors_expected(caplog: pytest.LogCaptureFixture) -> None:
    """Damage is logged at ERROR, as it should be."""
    caplog.errors_expected = True  # type: ignore[attr-defined]


@pytest.fixture
def small_seals(monkeypatch: pytest.MonkeyPatch) -> None:
    """Seal at every checkpoint, in chunks of 10 readings; no timed checkpoints."""
    monkeypatch.setattr(checkpoint, "SEAL_READINGS", 1)
    monkeypatch.setattr(sealing, "SEALED_CHUNK_READINGS", 10)
    monkeypatch.setattr(checkpoint, "CHECKPOINT_INTERVAL_S", 1e9)


def rec(device: str, ts: int, size: int = 0) -> tuple[str, bytes]:
    fields = (("v", ts), ("pad", "x" * size)) if size else (("v", ts),)
    return device, pack(Reading(device, "m", (("device", device),), fields, ts))


class Counted:
    """What the buffer reported through `on_damaged`."""

    def __init__(self) -> None:
        self.chunks = 0
        self.readings: Counter[tuple[str, str]] = Counter()

    def __call__(self, chunks: int, readings: Counter[tuple[str, str]]) -> None:
        self.chunks += chunks
        self.readings.update(readings)


def drain(buf: Buffer, batch: int = 7) -> dict[str, list[bytes]]:
    """Deliver everything, batch by batch, as the flusher does; returns what was delivered."""
    delivered: dict[str, list[bytes]] = {}
    for _ in range(100_000):
        backlog = buf.backlog()
        if not backlog:
            break
        spans = buf.read([(fifo, batch) for fifo in backlog])
        assert spans, "readings buffered but none readable"
        for span in spans:
            delivered.setdefault(span.device, []).extend(span.values)
        assert buf.delete([(s.device, s.first_seq, len(s.values)) for s in spans]) == sum(
            len(s.values) for s in spans
        )
    assert buf.totals().readings == 0
    return delivered


def damage(path: Path, pick: Iterator[tuple[bytes, bytes]] | None = None, *, db: bytes) -> bytes:
    """Change one byte in the middle of a stored value of `db` (b"" is the journal); its key."""
    journal = not db
    env = lmdb.open(
        str(path / "journal.mdb") if journal else str(path),
        subdir=not journal,
        max_dbs=0 if journal else 12,
    )
    try:
        handle = None if journal else env.open_db(db, create=False)
        with env.begin(write=True, db=handle) as txn:
            entries = [(bytes(k), bytes(v)) for k, v in txn.cursor()]
            key, value = next(pick) if pick is not None else entries[len(entries) // 2]
            if pick is None:
                key, value = entries[len(entries) // 2]
            at = len(value) // 2
            txn.put(key, value[:at] + bytes([value[at] ^ 0x40]) + value[at + 1 :])
            return key
    finally:
        env.close()


def sealed_entries(path: Path) -> dict[bytes, bytes]:
    env = lmdb.open(str(path), max_dbs=12, readonly=True, lock=False)
    try:
        with env.begin(db=env.open_db(b"sealed", create=False)) as txn:
            return {bytes(k): bytes(v) for k, v in txn.cursor()}
    finally:
        env.close()


def test_sealed_chunk_checksum_round_trips() -> None:
    """A sealed chunk proves itself; one changed byte fails it; an old chunk still reads."""
    chunk = encode_sealed([b"a", b"bc"])
    assert is_sealed_intact(chunk)
    assert sealed_count(chunk) == 2
    broken = chunk[:6] + bytes([chunk[6] ^ 1]) + chunk[7:]
    assert not is_sealed_intact(broken)
    old = (2).to_bytes(4, "big") + chunk[4:-4]  # no flag, no checksum: before checksums
    assert is_sealed_intact(old)


def test_take_range_moves_the_head_past_a_loss_at_it() -> None:
    """A loss at the head moves it; a loss mid-way keeps it and counts what is buffered."""
    state = DeviceState(1, 10, 40, 25, 2500, 7, gap_start=20, gap_end=25)
    assert take_range(state, 10, 15) == (5, 5 * 22)
    assert state.head == 15
    assert take_range(state, 18, 30) == (7, 7 * 22)  # 18, 19 and 25 to 29: the gap is gone
    assert (state.head, state.readings) == (15, 13)
    assert take_range(state, 0, 100) == (13, 2500 - 12 * 22)
    assert (state.head, state.readings, state.nbytes) == (40, 0, 0)


@pytest.mark.usefixtures("small_seals")
def test_damaged_sealed_chunk_is_set_aside_and_counted(tmp_path: Path) -> None:
    """One damaged sealed chunk: its readings counted, every other one delivered in order."""
    buf = Buffer(tmp_path, 16 * MIB)
    items = [rec(d, ts) for ts in range(1, 51) for d in ("a", "b")]
    buf.append(items)
    buf.checkpoint()  # seals: 5 chunks of 10 per device
    buf.close()
    # Damage a's third chunk (readings 20 to 29): mid-way in its FIFO.
    entries = sealed_entries(tmp_path)
    target = next(k for k in entries if SEALED_KEY.unpack(k)[1:] == (0, 20))
    damage(tmp_path, iter([(target, entries[target])]), db=b"sealed")

    buf = Buffer(tmp_path, 16 * MIB)
    counted = Counted()
    buf.on_damaged = counted
    delivered = drain(buf)
    a = [v for d, v in items if d == "a"]
    assert delivered["a"] == a[:20] + a[30:]
    assert delivered["b"] == [v for d, v in items if d == "b"]
    assert counted.chunks == 1
    assert counted.readings == Counter({(DAMAGED, "default"): 10})
    assert buf.damaged()[0] == 1
    assert buf.verify().is_consistent
    buf.append([rec("a", 100)])  # the process API goes on
    assert buf.readings_of("a") == [rec("a", 100)[1]]
    buf.close()

    # Written aside: the chunk left `sealed` for `damaged`, and is not counted again.
    assert target not in sealed_entries(tmp_path)
    env = lmdb.open(str(tmp_path), max_dbs=12, readonly=True, lock=False)
    with env.begin(db=env.open_db(b"damaged", create=False)) as txn:
        assert txn.get(SEALED_KIND + target) is not None
    env.close()
    buf = Buffer(tmp_path, 16 * MIB)
    assert buf.damaged()[0] == 0
    assert buf.totals().readings == 1
    buf.close()


@pytest.mark.usefixtures("small_seals")
def test_damaged_chunk_at_the_head_moves_the_head(tmp_path: Path) -> None:
    """The first chunk damaged: the first read starts past it."""
    buf = Buffer(tmp_path, 16 * MIB)
    items = [rec("a", ts) for ts in range(1, 31)]
    buf.append(items)
    buf.checkpoint()
    buf.close()
    entries = sealed_entries(tmp_path)
    first = min(entries)
    damage(tmp_path, iter([(first, entries[first])]), db=b"sealed")
    buf = Buffer(tmp_path, 16 * MIB)
    (span,) = buf.read([("a", 100)])
    assert (span.first_seq, list(span.values)) == (10, [v for _, v in items[10:]])
    assert buf.devices()["a"].oldest_ts_ns == 11
    assert buf.totals().readings == 20
    buf.close()


@pytest.mark.usefixtures("small_seals")
def test_damaged_journal_record_found_while_running(tmp_path: Path) -> None:
    """A journal record damaged under a running buffer: its readings counted, the rest go on."""
    buf = Buffer(tmp_path, 16 * MIB)
    monkey = pytest.MonkeyPatch()
    monkey.setattr(checkpoint, "SEAL_READINGS", 10**9)
    commits = [[rec(d, 10 * c + i) for d in ("a", "b") for i in range(3)] for c in range(5)]
    for items in commits:
        buf.append(items)
    counted = Counted()
    buf.on_damaged = counted
    journal = buf._journal
    assert journal is not None
    with journal.begin(write=True) as txn:
        key = (2).to_bytes(8, "big")
        value = bytes(txn.get(key))
        txn.put(key, value[:-10] + bytes([value[-10] ^ 1]) + value[-9:])
    buf._decoded = DecodedChunks()
    delivered = drain(buf, batch=2)
    expected = [v for c, items in enumerate(commits) if c != 2 for d, v in items if d == "a"]
    assert delivered["a"] == expected
    assert counted.chunks == 1
    assert sum(counted.readings.values()) == 6
    monkey.undo()
    buf.append([rec("a", 1000)])
    buf.close()
    buf = Buffer(tmp_path, 16 * MIB)
    assert buf.readings_of("a") == [rec("a", 1000)[1]]
    assert buf.damaged()[0] == 0
    buf.close()


def test_damaged_journal_record_found_at_start(tmp_path: Path) -> None:
    """After kill -9, a damaged journal record: later records show what it held."""
    buf = Buffer(tmp_path, 16 * MIB)
    commits = [[rec(d, 10 * c + i) for d in ("a", "b") for i in range(3)] for c in range(4)]
    buf.checkpoint()
    for items in commits:
        buf.append(items)
    buf.abandon()
    key = damage(
        tmp_path,
        iter([((1).to_bytes(8, "big"), _journal_value(tmp_path, 1))]),
        db=b"",
    )
    assert key == (1).to_bytes(8, "big")
    buf = Buffer(tmp_path, 16 * MIB)
    assert buf.damaged() == (1, Counter({(DAMAGED, "default"): 6}))
    delivered = drain(buf)
    assert delivered["a"] == [v for c in (0, 2, 3) for d, v in commits[c] if d == "a"]
    assert buf.verify().is_consistent
    buf.close()


def _journal_value(path: Path, record: int) -> bytes:
    env = lmdb.open(str(path / "journal.mdb"), subdir=False, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return bytes(txn.get(record.to_bytes(8, "big")))
    finally:
        env.close()


@pytest.mark.usefixtures("small_seals")
def test_thousands_of_devices_with_damaged_chunks(tmp_path: Path) -> None:
    """2,000 devices, readings of 8 to 400 bytes, a few chunks damaged: exact counts."""
    rng = random.Random(7)
    devices = [f"dev{n}" for n in range(2000)]
    items = [rec(d, ts, rng.randrange(0, 400)) for ts in range(1, 13) for d in devices]
    buf = Buffer(tmp_path, 256 * MIB)
    for start in range(0, len(items), 500):
        buf.append(items[start : start + 500])
    buf.checkpoint()
    buf.close()
    entries = sealed_entries(tmp_path)
    targets = rng.sample(sorted(entries), 5)
    for target in targets:
        damage(tmp_path, iter([(target, entries[target])]), db=b"sealed")
    lost = {
        (SEALED_KEY.unpack(k)[1], SEALED_KEY.unpack(k)[2]): sealed_count(entries[k])
        for k in targets
    }
    buf = Buffer(tmp_path, 256 * MIB)
    counted = Counted()
    buf.on_damaged = counted
    numbers = {fifo: state.number for fifo, state in buf.devices().items()}
    delivered = drain(buf, batch=5)
    assert counted.chunks == 5
    assert sum(counted.readings.values()) == sum(lost.values())
    for device in devices:
        number = numbers[device]
        mine = [v for d, v in items if d == device]
        gone = {
            seq
            for (n, first), count in lost.items()
            if n == number
            for seq in range(first, first + count)
        }
        assert delivered.get(device, []) == [v for seq, v in enumerate(mine) if seq not in gone]
    assert buf.verify().is_consistent
    buf.close()


@pytest.mark.usefixtures("small_seals")
def test_verify_buffer_reports_damaged_chunks(tmp_path: Path) -> None:
    """`gateway verify-buffer` lists a damaged chunk and exits with the mismatch code."""
    data = tmp_path / "buffer"
    buf = Buffer(data, 16 * MIB)
    buf.append([rec("a", ts) for ts in range(1, 31)])
    buf.checkpoint()
    buf.close()
    damage(data, db=b"sealed")
    text = (Path(__file__).parents[3] / "config" / "minimal.toml").read_text()
    text = text.replace('path = "/var/lib/gateway"', f'path = "{data}"')
    (tmp_path / "gateway.toml").write_text(text)
    settings = config.load(tmp_path / "gateway.toml", {})
    code, report = status.verify(settings, repair=False)
    assert code == status.EXIT_MISMATCH
    assert "1 damaged chunks set aside (1 found by this scan, 10 readings lost)" in report
    assert "sealed chunk of FIFO number 0 from sequence 10" in report
    found = json.loads(status.verify(settings, repair=False, as_json=True)[1])[0]
    assert found["damaged_readings_found"] == 10


def test_accounting_counts_damaged_readings_as_dropped() -> None:
    """Readings lost with a damaged chunk keep the accounting identity, as dropped (damaged)."""
    metrics = Metrics()
    metrics.accounting = Accounting(recovered=10)
    metrics.buffer_damaged(1, Counter({(DAMAGED, "default"): 4}))
    snapshot = metrics.accounting.snapshot()
    assert snapshot.outcomes["dropped"] == 4
    assert snapshot.dropped == {(DAMAGED, "default"): 4}
    assert snapshot.buffered == 6
    assert metrics.registry.get_sample_value("gateway_buffer_damaged_chunks_total") == 1


def test_damaged_journal_record_the_checkpoint_counted(tmp_path: Path) -> None:
    """A damaged record older than the checkpoint: a scan at start tells what it held."""
    buf = Buffer(tmp_path, 16 * MIB)
    commits = [[rec(d, 10 * c + i) for d in ("a", "b") for i in range(3)] for c in range(4)]
    for items in commits:
        buf.append(items)
    buf.checkpoint()
    buf.abandon()
    damage(tmp_path, iter([((1).to_bytes(8, "big"), _journal_value(tmp_path, 1))]), db=b"")
    buf = Buffer(tmp_path, 16 * MIB)
    assert buf.damaged() == (1, Counter({(DAMAGED, "default"): 6}))
    delivered = drain(buf)
    assert delivered["b"] == [v for c in (0, 2, 3) for d, v in commits[c] if d == "b"]
    buf.close()
