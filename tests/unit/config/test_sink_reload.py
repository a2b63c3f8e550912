"""SIGHUP and the sinks: a change of them waits for a restart; [flush] still reloads."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.config.reload import changed_keys, effective, is_reloadable
from tests.unit.config.test_config import MINIMAL
from tests.unit.config.test_sinks import FAR, NEAR, load, with_sinks

if TYPE_CHECKING:
    from pathlib import Path


def restart_keys(tmp_path: Path, before: str, after: str) -> list[str]:
    """The keys that changed from `before` to `after` and need a restart."""
    keys = changed_keys(load(tmp_path, before), load(tmp_path, after))
    assert keys, "the two configurations differ"
    return [key for key in keys if not is_reloadable(key)]


def test_a_change_of_a_sink_needs_a_restart(tmp_path: Path) -> None:
    """A sink's url, its own [flush] key, its limits, or one more sink: none is reloaded."""
    before = with_sinks(NEAR, FAR)
    assert restart_keys(tmp_path, before, with_sinks(NEAR, FAR.replace("influx.", "db."))) == [
        "sinks.1.url"
    ]
    assert restart_keys(tmp_path, before, with_sinks(NEAR, FAR + "linger_s = 5.0\n")) == [
        "sinks.1.linger_s"
    ]
    assert restart_keys(tmp_path, before, with_sinks(NEAR, FAR + "max_lag_s = 600\n")) == [
        "sinks.1.max_lag_s"
    ]
    third = NEAR.replace('"near"', '"third"')
    assert "sinks.2.name" in restart_keys(tmp_path, before, with_sinks(NEAR, FAR, third))


def test_moving_influx_into_sinks_needs_a_restart(tmp_path: Path) -> None:
    """From [influx] to [[sinks]]: every changed key is a restart key."""
    keys = changed_keys(load(tmp_path, MINIMAL), load(tmp_path, with_sinks(NEAR, FAR)))
    assert {"influx.url", "sinks.0.name", "sinks.1.url"} <= set(keys)
    assert restart_keys(tmp_path, MINIMAL, with_sinks(NEAR, FAR)) == keys


def test_a_reload_keeps_the_sinks_and_takes_flush(tmp_path: Path) -> None:
    """The sinks stay as started; [flush] reaches every sink that does not set the key."""
    old = load(tmp_path, with_sinks(NEAR, FAR + "linger_s = 10.0\n"))
    new = load(tmp_path, with_sinks(NEAR, FAR.replace("influx.", "db."), flush="linger_s = 3.0"))
    now = effective(old, new)
    assert now.sinks == old.sinks
    assert [sink.flush.linger_s for sink in now.resolved_sinks()] == [3.0, 10.0]


def test_a_reload_keeps_flush_that_the_running_sinks_cannot_take(tmp_path: Path) -> None:
    """New [flush] checked against new sinks only: with the old ones out of order, it waits."""
    old = load(
        tmp_path, with_sinks(NEAR, FAR + "batch_floor = 2000\n", flush="batch_initial = 3000")
    )
    new_text = with_sinks(NEAR, FAR, flush="batch_initial = 1500") + '\n[log]\nlevel = "debug"\n'
    new = load(tmp_path, new_text)
    now = effective(old, new)
    assert now.flush == old.flush
    assert now.log.level == "debug", "the rest of the reload is applied"
    assert [sink.flush.batch_initial for sink in now.resolved_sinks()] == [3000, 3000]
    assert now.sinks == old.sinks
