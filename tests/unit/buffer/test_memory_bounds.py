"""The buffer's memory bounds hold for readings and chunks of every size, bigger ones included."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.buffer import fiforead, sealing
from gateway.buffer.core.admission import Lane, Policy, Rules
from gateway.buffer.fiforead import DecodedChunks
from gateway.buffer.store import Buffer
from gateway.config.sections import BufferSettings
from gateway.errors import CapacityError
from tests.unit.buffer.checks import reading

if TYPE_CHECKING:
    from pathlib import Path

    from gateway.buffer.core.chunk import Segment

MIB = 1 << 20
BOUND = 1000


@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 3 * BOUND)), max_size=200))
def test_the_decoded_chunks_never_hold_more_than_their_bound(
    steps: list[tuple[int, int]],
) -> None:
    """Whatever the chunks' sizes, the records held stay within the bound; reads still decode."""
    chunks = DecodedChunks(BOUND)
    sizes: dict[bytes, int] = {}
    for number, drawn in steps:
        key = number.to_bytes(2, "big")
        size = sizes.setdefault(key, drawn)  # a key's chunk never changes
        value = chunks.get(key, lambda key=key, size=size: ((key, size), size))
        assert value == (key, size)
        assert chunks.nbytes <= BOUND
        assert (key in chunks) == (size <= BOUND), "the chunk just read is held unless too big"
        held = sum(s for k, s in sizes.items() if k in chunks)
        assert chunks.nbytes == held


def test_a_chunk_bigger_than_the_bound_evicts_nothing() -> None:
    """A chunk too big to hold is decoded for its read and leaves the held ones where they are."""
    chunks = DecodedChunks(BOUND)
    chunks.put(b"a", "small", 400)
    chunks.put(b"b", "huge", BOUND + 1)
    assert b"a" in chunks
    assert b"b" not in chunks
    assert chunks.nbytes == 400


@pytest.mark.parametrize("pending_bytes", [1, 200, 4096, 64 << 10])
def test_a_seal_holds_no_more_than_its_bound_and_one_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pending_bytes: int
) -> None:
    """Before each journal record it reads, a seal holds at most its bound; nothing is lost.

    Readings of 8 to 400 bytes, so that some are bigger than the bound on their own.
    """
    seen: list[tuple[int, int, int]] = []
    real_copy = sealing.Sealing._copy

    def copy(
        self: sealing.Sealing,
        txn: object,
        db: object,
        segments: list[Segment],
        groups: list[list[bytes]],
        states: object,
    ) -> int:
        before = self._pending_bytes
        spent = real_copy(self, txn, db, segments, groups, states)  # type: ignore[arg-type]
        seen.append((before, self._pending_bytes, sum(len(r) for g in groups for r in g)))
        return spent

    monkeypatch.setattr(sealing.Sealing, "_copy", copy)
    buf = Buffer(tmp_path, 64 * MIB, seal_pending_bytes=pending_bytes, decoded_cache_bytes=4096)
    sizes = (8, 40, 150, 400)
    sent: dict[str, list[bytes]] = {}
    ts = 0
    for commit in range(30):
        items = []
        for device in range(40):
            ts += 1
            name = f"dev-{device:02d}"
            value = reading(name, ts, sizes[(commit + device) % len(sizes)])
            items.append((name, value))
            sent.setdefault(name, []).append(value)
        buf.append(items)
    buf._checkpointer.seal_wanted = True
    buf.checkpoint()  # the seal asked for, run to its end
    assert buf._ledger.sealed_through >= 0, "a seal ran"
    assert len(seen) >= 30, "every record was read"
    for before, after, record in seen:
        assert before <= pending_bytes
        assert after <= pending_bytes + record
    assert max(after for _, after, _ in seen) > 0
    for name, values in sent.items():
        assert buf.readings_of(name) == values
    assert buf.verify().is_consistent
    buf.close()


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The journal records decoded by reads, drops and deletes, in order."""
    decoded: list[bytes] = []
    real_records = fiforead.journal_records

    def counting(value: bytes) -> object:
        decoded.append(value)
        return real_records(value)

    monkeypatch.setattr(fiforead, "journal_records", counting)
    return decoded


def test_a_chunk_bigger_than_the_bound_is_decoded_once_per_read(
    tmp_path: Path, decodes: list[bytes]
) -> None:
    """A read and a delete of every device of one too-big commit decode its chunk once each."""
    bound = 64 << 10
    buf = Buffer(tmp_path, 64 * MIB, decoded_cache_bytes=bound)
    names = [f"dev-{i:04d}" for i in range(1000)]
    items = [(name, reading(name, i, 100)) for i, name in enumerate(names)]
    buf.append(items)
    assert sum(len(value) for _, value in items) > bound, "the chunk is too big to be held"
    spans = buf.read([(name, 1) for name in names])
    assert [span.values for span in spans] == [(value,) for _, value in items]
    assert len(decodes) == 1
    buf.delete([(span.device, span.first_seq, len(span.values)) for span in spans])
    assert len(decodes) <= 2
    assert buf.totals().readings == 0
    buf.close()


def test_a_small_buffer_of_many_devices_seals_chunks_of_hundreds_of_readings(
    tmp_path: Path,
) -> None:
    """At the default bound, 100 interleaved devices in 16 MiB seal long chunks, not ~30 readings.

    Chunks of 30 readings compressed poorly and filled the map's leaf pages, which the page
    guard counts twice: a 16 MiB `compact` buffer met the guard at half its readings budget.
    """
    capacity = 16 * MIB
    settings = BufferSettings(path=tmp_path, capacity=capacity)  # type: ignore[arg-type]
    pending = settings.seal_pending_max_bytes
    buf = Buffer(tmp_path / "buffer", capacity, seal_pending_bytes=pending)
    devices, per_commit = 100, 10
    for commit in range(60):
        buf.append(
            [
                (f"dev-{d:03d}", reading(f"dev-{d:03d}", commit * per_commit + i, 60))
                for d in range(devices)
                for i in range(per_commit)
            ]
        )
    buf._checkpointer.seal_wanted = True
    buf.checkpoint()
    with buf._env.begin() as txn:
        chunks = txn.stat(buf._tables.sealed)["entries"]
    assert chunks, "a seal ran"
    assert 60 * per_commit * devices / chunks >= 300
    buf.close()


def test_a_full_small_buffer_decodes_journal_records_per_commit_not_per_drop(
    tmp_path: Path, decodes: list[bytes]
) -> None:
    """A 4 MiB drop_oldest buffer of 100 devices, full, with a flusher failing every other batch.

    Each commit's drops walk the victims' oldest readings behind the leases, which are in the
    journal's records, each serving every device of its commit. With a cache sized from the
    capacity that cannot hold a few of them, each drop decoded them again: 54 decodes a commit
    (128 at most), 80 % of its time. The floor holds them.
    """
    capacity = 4 * MIB
    cache = BufferSettings(path=tmp_path, capacity=capacity).decoded_cache_max_bytes  # type: ignore[arg-type]
    lane = Lane(policy=Policy.DROP_OLDEST)
    devices = [f"device-{i:03d}" for i in range(100)]
    per_commit: list[int] = []
    message = 0
    with Buffer(tmp_path, capacity, "none", decoded_cache_bytes=cache) as buffer:
        rules = Rules(budget_bytes=buffer.budget_bytes, high=0.9, low=0.8, default_lane=lane)
        for commit in range(60):
            items = []
            for _ in range(400):  # messages of five readings, the wide devices' of 300 B
                device = devices[message % 100]
                size = 300 if message % 100 < 40 else 60
                items += [(device, reading(device, message * 5 + j, size), lane) for j in range(5)]
                message += 1
            decodes.clear()
            with contextlib.suppress(CapacityError):  # the page guard: a pause, then again
                if sum(buffer.admit(items, rules).dropped.values()):
                    per_commit.append(len(decodes))
            spans = buffer.read([(device, 10) for device in devices])
            if commit % 2:
                buffer.delete([(s.device, s.first_seq, len(s.values)) for s in spans])
            else:
                buffer.release([s.device for s in spans])
    assert len(per_commit) >= 10, "the buffer was full for most of the commits"
    assert max(per_commit) <= 8, per_commit
