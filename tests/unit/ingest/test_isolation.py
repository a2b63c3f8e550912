"""Per-message isolation in ingest, and the poison-message breaker's state, without servers.

Ingest runs here on a real buffer and reject log; only the MQTT connection is absent, as the
methods under test take paho's own message objects and never touch it.
"""

from __future__ import annotations

import collections
import json
from typing import TYPE_CHECKING

import anyio
import pytest

from gateway.buffer.core.admission import Rules
from gateway.buffer.rejects import RejectLog
from gateway.buffer.store import Buffer
from gateway.config.mqtt import MqttSettings, Subscription
from gateway.config.sections import LimitSettings
from gateway.errors import CapacityError, ConfigError
from gateway.ingest.breaker import (
    RECORD_BYTES,
    STATE_FILE,
    Breaker,
    BreakerState,
    Suspect,
    fingerprint,
    judge,
    parse,
    render,
)
from gateway.ingest.core.decode import Decoder
from gateway.ingest.core.packets import Incoming
from gateway.ingest.faults import ENV, InjectedFault, from_environment
from gateway.ingest.intake import Ingest
from gateway.observe.health import Health
from gateway.observe.metrics import Metrics

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from pathlib import Path

    from gateway.buffer.core.admission import Lane
    from gateway.buffer.core.ledger import Admitted

SUBSCRIPTION = Subscription(topic="s/{device}/{measurement}", format="json")
NEEDLE = b"trip"


class _AdmissionBug(Buffer):
    """A buffer whose admission raises on a chosen reading, as a bug in it would."""

    def admit(
        self, items: Iterable[tuple[str, bytes, Lane]], rules: Rules, notes: dict | None = None
    ) -> Admitted:
        items = list(items)
        if any(NEEDLE in value for _, value, _ in items):
            raise ZeroDivisionError("a bug in admission")
        return super().admit(items, rules, notes)


@pytest.fixture
def make_ingest(tmp_path: Path) -> Iterator[Callable[..., tuple[Ingest, Buffer, Metrics]]]:
    opened: list[object] = []

    def make(
        buffer_class: type[Buffer] = Buffer, fault: Callable[[bytes], None] | None = None
    ) -> tuple[Ingest, Buffer, Metrics]:
        buffer = buffer_class(tmp_path / "buffer", 16 << 20, sync="none")
        rejects = RejectLog(tmp_path / "buffer")
        opened.extend([buffer, rejects])
        metrics = Metrics()
        ingest = Ingest(
            settings=MqttSettings(subscriptions=[SUBSCRIPTION]),
            commit_max_readings=100,
            commit_window_s=0.005,
            buffer=buffer,
            decoder=Decoder([SUBSCRIPTION], LimitSettings()),
            metrics=metrics,
            on_commit=lambda _n: None,
            on_drop=lambda _n: None,
            space_freed=anyio.Event,
            rules=Rules(budget_bytes=buffer.budget_bytes),
            health=Health(started=0.0),
            on_ready=lambda: None,
            broker_stats=metrics.broker,
            rejects=rejects,
            fault=fault,
        )
        return ingest, buffer, metrics

    yield make
    for thing in reversed(opened):
        thing.__exit__(None, None, None)  # type: ignore[attr-defined]


def message(mid: int, payload: bytes, topic: bytes = b"s/dev-1/m") -> Incoming:
    return Incoming(topic, payload, mid, 1, False, 0.0)


def take_and_admit(ingest: Ingest, *payloads: bytes) -> Admitted:
    """One group commit of these payloads, as the consume loop makes it."""
    batch = [ingest.taker.take(message(mid, p)) for mid, p in enumerate(payloads, start=1)]
    admitted, paused = ingest.committer._admit(batch)
    assert paused is None
    return admitted


def invalid(metrics: Metrics, reason: str) -> float:
    return (
        metrics.registry.get_sample_value("gateway_readings_invalid_total", {"reason": reason})
        or 0.0
    )


def test_an_exception_while_taking_a_message_stays_with_that_message(
    make_ingest: Callable[..., tuple[Ingest, Buffer, Metrics]], caplog: pytest.LogCaptureFixture
) -> None:
    """A decoder that raises costs its message only: counted, sampled with the type, taken."""
    caplog.errors_expected = True  # type: ignore[attr-defined]

    def fault(payload: bytes) -> None:
        if NEEDLE in payload:
            raise InjectedFault("boom")

    ingest, buffer, metrics = make_ingest(fault=fault)
    admitted = take_and_admit(ingest, b'{"v": 1}', b'{"v": 2, "s": "trip"}', b'{"v": 3}')
    assert admitted.stored == buffer.totals().readings == 2
    assert invalid(metrics, "internal_error") == 1
    (line,) = [r for r in caplog.records if r.levelname == "ERROR"]
    assert "InjectedFault" in line.getMessage()
    assert line.exc_info is not None
    (sample,) = ingest.committer._rejects.newest_first()
    assert sample.reason == "internal_error"
    assert sample.detail.startswith("InjectedFault")
    outcomes = metrics.accounting.snapshot().outcomes
    assert outcomes["received"] == outcomes["invalid"] + outcomes["accepted"] == 3


def test_a_bug_in_admission_costs_only_the_message_that_meets_it(
    make_ingest: Callable[..., tuple[Ingest, Buffer, Metrics]], caplog: pytest.LogCaptureFixture
) -> None:
    """The group commit fails; its messages are admitted one by one and only one is lost."""
    caplog.errors_expected = True  # type: ignore[attr-defined]
    ingest, buffer, metrics = make_ingest(buffer_class=_AdmissionBug)
    admitted = take_and_admit(
        ingest, b'[{"v": 1}, {"v": 1.5}]', b'[{"s": "trip"}, {"v": 2}]', b'{"v": 3}'
    )
    assert admitted.stored == buffer.totals().readings == 3
    assert invalid(metrics, "internal_error") == 2  # both readings of message 2
    outcomes = metrics.accounting.snapshot().outcomes
    assert outcomes["received"] == outcomes["invalid"] + outcomes["accepted"] == 5


def test_text_utf8_cannot_carry_is_invalid_not_a_crash(
    make_ingest: Callable[..., tuple[Ingest, Buffer, Metrics]],
) -> None:
    """The reported crash: a lone surrogate escape reached record.pack and raised there."""
    ingest, buffer, metrics = make_ingest()
    take_and_admit(ingest, b'{"ts": 1700000000000, "note": "\\ud800"}', b'{"\\udfff": 1}')
    assert invalid(metrics, "not_unicode") == 2
    assert invalid(metrics, "internal_error") == 0
    assert buffer.totals().readings == 0


def test_judge_sets_aside_a_message_on_its_second_death() -> None:
    """One death in flight, a second while taken alone: poison; any other message is taken."""
    first = judge(None, "a")
    assert first == Suspect("a", 1)
    assert judge(first, "a") is None
    assert judge(first, "b") == Suspect("b", 1)


def test_the_breaker_is_careful_only_after_an_unclean_stop(tmp_path: Path) -> None:
    """Fresh: not careful. Killed (no clean stop): careful. A clean stop: not careful again."""
    assert not Breaker(tmp_path, careful_max=10).careful
    killed = Breaker(tmp_path, careful_max=10)  # the previous run never stopped cleanly
    assert killed.careful
    killed.stopped_cleanly()
    assert not Breaker(tmp_path, careful_max=10).careful


def test_a_message_taken_alone_when_the_gateway_died_is_poison_next_time(tmp_path: Path) -> None:
    """The record survives the death; the same message is refused, another one is taken."""
    Breaker(tmp_path, careful_max=10)  # a run that dies
    second = Breaker(tmp_path, careful_max=10)
    assert second.take_alone("s/d/m", b"kills")  # ... and dies again while taking it
    third = Breaker(tmp_path, careful_max=10)
    assert third.careful
    assert third.take_alone("s/d/m", b"fine")
    assert not third.take_alone("s/d/m", b"kills")
    state = json.loads((tmp_path / STATE_FILE).read_text())
    assert state["clean"] is False
    assert state["suspect"]["digest"] == fingerprint("s/d/m", b"fine")


def test_a_death_before_the_suspect_is_taken_again_does_not_count(tmp_path: Path) -> None:
    """Only deaths while the message is being taken count against it."""
    Breaker(tmp_path, careful_max=10).take_alone("t", b"x")  # died while taking it
    Breaker(tmp_path, careful_max=10)  # died at start, before it came again
    assert Breaker(tmp_path, careful_max=10).take_alone("t", b"x")


def test_careful_mode_ends_at_a_fresh_message_or_its_budget(tmp_path: Path) -> None:
    """Redelivered messages are taken alone until one is not, or `careful_max` were."""
    Breaker(tmp_path, careful_max=2)
    breaker = Breaker(tmp_path, careful_max=2)
    assert breaker.end_careful_if(redelivered=True)
    assert not breaker.end_careful_if(redelivered=False)
    assert not breaker.careful
    Breaker(tmp_path, careful_max=2)
    budget = Breaker(tmp_path, careful_max=2)
    for payload in (b"1", b"2"):
        assert budget.end_careful_if(redelivered=True)
        assert budget.take_alone("t", payload)
    assert not budget.end_careful_if(redelivered=True)


def test_an_unreadable_state_file_counts_as_an_unclean_stop(tmp_path: Path) -> None:
    """A torn or foreign file errs on the careful side."""
    (tmp_path / STATE_FILE).write_text("{not json")
    assert Breaker(tmp_path, careful_max=1).careful


def test_the_fault_hook_is_off_unless_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset: no hook at all. Malformed: a configuration error naming the variable."""
    monkeypatch.delenv(ENV, raising=False)
    assert from_environment() is None
    monkeypatch.setenv(ENV, "explode:x")
    with pytest.raises(ConfigError, match=ENV):
        from_environment()
    monkeypatch.setenv(ENV, "raise:trip")
    hook = from_environment()
    assert hook is not None
    hook(b"harmless")
    with pytest.raises(InjectedFault):
        hook(b"a trip wire")


def test_every_record_has_the_same_size_so_one_written_in_place_replaces_the_last() -> None:
    """The longest record fits the padded size; any record parses back to itself."""
    longest = BreakerState(clean=False, suspect=Suspect("f" * 64, 10**9))
    for state in (BreakerState(), longest):
        text = render(state)
        assert len(text.encode()) == RECORD_BYTES
        assert parse(text) == state


class _BugThenFullDisk(Buffer):
    """Admission raises on the whole batch; alone, the second message finds the disk full."""

    def admit(
        self, items: Iterable[tuple[str, bytes, Lane]], rules: Rules, notes: dict | None = None
    ) -> Admitted:
        items = list(items)
        if len(items) > 1:
            raise ZeroDivisionError("a bug in admission")
        if b"full" in items[0][1]:
            raise CapacityError("the disk holding the buffer is full", disk_full=True)
        return super().admit(items, rules, notes)


def test_a_full_disk_while_admitting_one_by_one_pauses_there_and_counts_what_was_stored(
    make_ingest: Callable[..., tuple[Ingest, Buffer, Metrics]],
) -> None:
    """What was committed before the full disk is counted; the pause starts at that message."""
    ingest, buffer, metrics = make_ingest(buffer_class=_BugThenFullDisk)
    batch = [
        ingest.taker.take(message(1, b'{"v": 1}')),
        ingest.taker.take(message(2, b'{"s": "full"}')),
        ingest.taker.take(message(3, b'{"v": 3}')),
    ]
    admitted, paused = ingest.committer._admit(batch)
    assert paused is not None
    assert paused.at_message == 1
    assert paused.error.disk_full
    assert admitted.stored == buffer.totals().readings == 1
    outcomes = metrics.accounting.snapshot().outcomes
    assert outcomes["accepted"] == 1
    assert outcomes["received"] == 1


def test_a_full_disk_under_the_breaker_is_capacity_not_a_crash(tmp_path: Path) -> None:
    """Careful mode on a full disk pauses intake (CapacityError) instead of stopping the box."""
    Breaker(tmp_path, careful_max=10)  # a run that dies
    breaker = Breaker(tmp_path, careful_max=10)
    (tmp_path / STATE_FILE).unlink()
    (tmp_path / STATE_FILE).symlink_to("/dev/full")  # every write: no space left on device
    with pytest.raises(CapacityError) as raised:
        breaker.take_alone("t", b"x")
    assert raised.value.disk_full
    breaker.stopped_cleanly()  # replaced by a real file: a clean stop still records itself
    assert not Breaker(tmp_path, careful_max=10).careful


class Queued:
    """A connection's inbox as `_take_batch` reads it."""

    def __init__(self, messages: list[Incoming]) -> None:
        self.inbox = collections.deque(messages)

    def take_queued(self) -> Incoming | None:
        return self.inbox.popleft() if self.inbox else None


def test_a_group_commit_of_messages_without_readings_is_bounded_as_one_of_readings(
    make_ingest: Callable[..., tuple[Ingest, Buffer, Metrics]],
) -> None:
    """1,000 invalid messages queued make batches of commit_max_readings (100), not one batch."""
    ingest, _, _ = make_ingest()
    queued = Queued([message(mid, b'{"v": 1,') for mid in range(2, 1001)])
    batch = ingest._take_batch(queued, message(1, b'{"v": 1,'))  # type: ignore[arg-type]
    assert len(batch) == 100
    assert len(queued.inbox) == 900
    valid = Queued([message(mid, b'{"v": 1}') for mid in range(2, 1001)])
    assert len(ingest._take_batch(valid, message(1, b'{"v": 1}'))) == 100  # type: ignore[arg-type]
