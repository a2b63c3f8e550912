"""The pure parts of operations: health verdicts, reload diffs, repeat suppression, sd_notify."""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING

from gateway.config import loader as config
from gateway.config.reload import changed_keys, effective, is_reloadable
from gateway.observe.brokerstats import BrokerStats
from gateway.observe.health import LOOP_STALL_S, Health
from gateway.service.logsetup import RepeatFilter
from gateway.service.sdnotify import Notifier

if TYPE_CHECKING:
    from pathlib import Path

    from gateway.config.settings import Settings

BASE = {
    "mqtt": {"subscriptions": [{"topic": "s/{device}/{measurement}"}]},
    "buffer": {"path": "/var/lib/gateway"},
    "influx": {"api": "v1", "database": "t"},
}


def settings(**changes: dict[str, object]) -> Settings:
    raw = {k: dict(v) for k, v in BASE.items()}  # type: ignore[call-overload]
    for section, values in changes.items():
        raw.setdefault(section, {}).update(values)
    return config.validate(raw)


def test_health_turns_on_stalls_and_connection() -> None:
    health = Health(started=100.0)
    assert health.liveness(101.0).ok
    assert not health.readiness(101.0).ok  # not connected yet
    health.connected = True
    assert health.readiness(101.0).ok
    health.paused = True
    assert health.readiness(101.0).problems == (
        "intake paused: the buffer is at capacity or the disk is full",
    )
    health.paused = False
    stalled = health.liveness(100.0 + LOOP_STALL_S + 1)
    assert not stalled.ok
    assert "event loop stalled" in stalled.problems[0]


def test_reload_applies_tuning_and_names_what_needs_a_restart() -> None:
    old = settings()
    new = settings(
        log={"level": "debug"},
        flush={"linger_s": 0.5, "max_in_flight": 8},
        buffer={"high_watermark": 0.95, "capacity": "2GiB"},
        mqtt={"keepalive_s": 30},
    )
    keys = changed_keys(old, new)
    assert keys == [
        "buffer.capacity",
        "buffer.high_watermark",
        "flush.linger_s",
        "flush.max_in_flight",
        "log.level",
        "mqtt.keepalive_s",
    ]
    assert [k for k in keys if is_reloadable(k)] == [
        "buffer.high_watermark",
        "flush.linger_s",
        "log.level",
    ]
    now = effective(old, new)
    assert now.log.level == "debug"
    assert now.flush.linger_s == 0.5
    assert now.flush.max_in_flight == old.flush.max_in_flight
    assert now.buffer.high_watermark == 0.95
    assert now.buffer.capacity == old.buffer.capacity
    assert now.mqtt == old.mqtt
    assert changed_keys(now, new) == ["buffer.capacity", "flush.max_in_flight", "mqtt.keepalive_s"]


def test_repeats_are_held_back_and_counted() -> None:
    clock = [0.0]
    repeat = RepeatFilter(60.0, clock=lambda: clock[0])

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("gw", logging.WARNING, __file__, 1, msg, None, None)

    assert repeat.filter(record("disk slow"))
    clock[0] = 10.0
    assert not repeat.filter(record("disk slow"))
    assert not repeat.filter(record("disk slow"))
    assert repeat.filter(record("another line"))
    clock[0] = 61.0
    again = record("disk slow")
    assert repeat.filter(again)
    assert again.getMessage() == "disk slow (2 more like this in the last 61 s)"


def test_notifier_speaks_the_notify_protocol(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))
    receiver.settimeout(5)
    try:
        notifier = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "4000000"})
        assert notifier.watchdog_interval_s == 2.0
        notifier.send(READY="1", STATUS="up")
        assert receiver.recv(4096) == b"READY=1\nSTATUS=up"
        notifier.close()
    finally:
        receiver.close()
    quiet = Notifier({})
    assert not quiet.enabled
    assert quiet.watchdog_interval_s is None
    quiet.send(READY="1")  # nothing to send to, nothing raised
    other_pid = Notifier({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "1"})
    assert other_pid.watchdog_interval_s is None


def test_broker_stats_keep_the_last_number_of_known_topics() -> None:
    stats = BrokerStats()
    stats.update("$SYS/broker/publish/messages/dropped", b"17")
    stats.update("$SYS/broker/clients/connected", b"not a number")
    stats.update("$SYS/broker/uptime", b"12 seconds")
    stats.update("$SYS/broker/store/messages/count", b"nan")
    families = {f.name: f for f in stats.collect()}
    assert set(families) == {"gateway_broker_publish_messages_dropped"}
    assert families["gateway_broker_publish_messages_dropped"].type == "counter"
    assert families["gateway_broker_publish_messages_dropped"].samples[0].value == 17
