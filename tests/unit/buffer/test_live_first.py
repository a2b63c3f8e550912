"""The buffer's live-first split: the live stream ahead of the backlog, each in order, exact."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from gateway.buffer.core.admission import Lane, Policy, Rules
from gateway.errors import StorageError
from tests.points import unpack
from tests.unit.buffer.test_buffer import opened, rec

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from gateway.buffer.core.ledger import Span
    from gateway.buffer.store import Buffer

__all__ = ["opened"]


def stamps(spans: list[Span]) -> list[tuple[str, int, list[int]]]:
    return [(s.device, s.first_seq, [unpack(s.device, v).ts_ns for v in s.values]) for s in spans]


def split_buffer(buf: Buffer) -> None:
    """a: backlog ts 1-4, then live ts 10-13; b: backlog ts 1-2 only."""
    buf.append([rec("a", ts) for ts in (1, 2, 3, 4)] + [rec("b", 1), rec("b", 2)])
    assert buf.begin_live_first() == {"a": 4, "b": 2}
    buf.append([rec("a", ts) for ts in (10, 11, 12, 13)])


def test_the_live_stream_goes_ahead_and_the_backlog_follows(
    tmp_path: Path, opened: Callable[..., Buffer]
) -> None:
    buf = opened(tmp_path)
    split_buffer(buf)
    assert buf.live_backlog() == {"a": 4}
    assert buf.backlog() == {"a": 4, "b": 2}, "reads of the backlog stop at the split"

    live = buf.read_live([("a", 3)])
    assert stamps(live) == [("a", 4, [10, 11, 12])]
    assert buf.delete([("a", 4, 3)]) == 3
    assert buf.totals().readings == 7
    assert buf.live_backlog() == {"a": 1}
    assert stamps(buf.read([("a", 10)])) == [("a", 0, [1, 2, 3, 4])]
    assert buf.delete([("a", 0, 4)]) == 4

    # The backlog is gone: the FIFO is one again, read from its head.
    assert buf.live_backlog() == {}
    assert stamps(buf.read([("a", 10)])) == [("a", 7, [13])]
    assert buf.delete([("a", 7, 1)]) == 1
    assert buf.backlog() == {"b": 2}


def test_a_reading_not_newer_than_the_backlog_waits_behind_it(
    tmp_path: Path, opened: Callable[..., Buffer]
) -> None:
    """Sent ahead, a timestamp the backlog also has could be overwritten by the backlog's."""
    buf = opened(tmp_path)
    buf.append([rec("a", ts) for ts in (5, 6)])
    buf.begin_live_first()
    buf.append([rec("a", ts) for ts in (7, 6, 8)])
    assert stamps(buf.read_live([("a", 10)])) == [("a", 2, [7])]
    buf.delete([("a", 2, 1)])
    assert buf.read_live([("a", 10)]) == [], "the stream stops at 6, not after it"
    assert buf.live_backlog() == {}, "so nothing of it is offered until the backlog is gone"
    buf.delete([("a", 0, 2)])
    assert stamps(buf.read([("a", 10)])) == [("a", 3, [6, 8])]


@pytest.mark.parametrize("crash", [False, True])
def test_after_a_restart_the_fifo_is_one_again(
    tmp_path: Path, opened: Callable[..., Buffer], crash: bool
) -> None:
    """A clean stop keeps the delivered live run out (the FIFO's gap); kill -9 before the next
    checkpoint brings it back, in order, to be written again (harmless, DESIGN invariant 6)."""
    buf = opened(tmp_path)
    split_buffer(buf)
    buf.read_live([("a", 2)])
    buf.delete([("a", 4, 2)])
    if crash:
        buf.abandon()
    else:
        buf.close()

    again = opened(tmp_path)
    assert again.totals().readings == (10 if crash else 8)
    assert again.live_backlog() == {}
    backlog = [1, 2, 3, 4, 10, 11, 12, 13] if crash else [1, 2, 3, 4]
    assert stamps(again.read([("a", 10), ("b", 10)])) == [("a", 0, backlog), ("b", 0, [1, 2])]
    if not crash:
        again.delete([("a", 0, 4)])
        assert stamps(again.read([("a", 10)])) == [("a", 6, [12, 13])]


def test_a_live_delete_must_be_the_run_that_was_read(
    tmp_path: Path, opened: Callable[..., Buffer]
) -> None:
    buf = opened(tmp_path)
    split_buffer(buf)
    buf.read_live([("a", 2)])
    with pytest.raises(StorageError):
        buf.delete([("a", 5, 1)])
    with pytest.raises(StorageError):
        buf.delete([("a", 4, 3)])
    assert buf.totals().readings == 10


def test_drops_take_the_backlog_never_the_live_stream(
    tmp_path: Path, opened: Callable[..., Buffer]
) -> None:
    """drop_oldest frees room from the oldest readings, and stops at the split."""
    buf = opened(tmp_path)
    split_buffer(buf)
    before = buf.totals().nbytes
    rules = Rules(budget_bytes=before, default_lane=Lane(policy=Policy.DROP_OLDEST))
    admitted = buf.admit([(*rec("c", 1), Lane(policy=Policy.DROP_OLDEST))], rules)
    assert admitted.stored == 1
    assert sum(admitted.dropped.values()) >= 1
    assert buf.live_backlog() == {"a": 4}
    assert all(unpack("a", v).ts_ns < 10 for span in buf.read([("a", 10)]) for v in span.values)
