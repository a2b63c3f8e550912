"""Worker layout, settings and merged metrics: pure logic, no server."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.buffer.store import Buffer
from gateway.config import loader as config
from gateway.errors import ConfigError
from gateway.observe import metricsmerge
from gateway.service import workerapi, workers

if TYPE_CHECKING:
    from gateway.config.settings import Settings

CONFIG_DIR = Path(__file__).parents[3] / "config"


def settings(tmp_path: Path, mqtt: str = "") -> Settings:
    path = tmp_path / "gateway.toml"
    text = (CONFIG_DIR / "minimal.toml").read_text().replace('client_id = "gateway-1"\n', "")
    if "client_id" not in mqtt:
        mqtt += 'client_id = "gateway"\n'
    text = text.replace("[buffer]\n", f'[buffer]\npath = "{tmp_path / "buf"}"\n#', 1)
    path.write_text(text.replace("[mqtt]\n", f"[mqtt]\n{mqtt}", 1))
    return config.load(path, {})


def test_one_worker_keeps_the_buffer_path_and_client_id(tmp_path: Path) -> None:
    s = settings(tmp_path)
    assert workers.slots(s) == [workers.Slot(s.buffer.path, s.mqtt.client_id, 0)]
    assert s.mqtt.share_group is None
    assert s.mqtt.subscribe_filter("a/+/b") == "a/+/b"


def test_n_workers_get_a_directory_a_client_id_and_a_share_of_the_disk(tmp_path: Path) -> None:
    s = settings(tmp_path, 'workers = 3\nclient_id = "edge/1"\n')
    slots = workers.slots(s)
    assert [(slot.path.name, slot.client_id) for slot in slots] == [
        ("worker-0", "edge/1-0"),
        ("worker-1", "edge/1-1"),
        ("worker-2", "edge/1-2"),
    ]
    # The group defaults to the client id, without the characters a filter reserves.
    assert s.mqtt.share_group == "edge_1"
    assert s.mqtt.subscribe_filter("a/+/b") == "$share/edge_1/a/+/b"
    one = workers.for_slot(s, slots[1])
    assert (one.mqtt.client_id, one.buffer.path) == ("edge/1-1", slots[1].path)
    assert one.buffer.capacity == s.buffer.capacity // 3
    assert one.mqtt.share_group == "edge_1"
    assert not one.mqtt.broker_stats
    assert workers.for_slot(s, slots[0]).mqtt.broker_stats


def test_environments_of_another_worker_count_are_retired(tmp_path: Path) -> None:
    four = settings(tmp_path, "workers = 4\n")
    for slot in workers.slots(four):
        Buffer(slot.path, 1 << 20).close()
    Buffer(four.buffer.path, 1 << 20).close()
    two = settings(tmp_path, "workers = 2\n")
    retired = workers.retired(two)
    assert [(r.path.name, r.client_id, r.index) for r in retired] == [
        ("buf", "gateway", None),
        ("worker-2", "gateway-2", None),
        ("worker-3", "gateway-3", None),
    ]
    assert workers.find(two, retired[1].path) == retired[1]
    assert workers.find(two, tmp_path / "elsewhere") is None
    one = settings(tmp_path)
    assert [r.path.name for r in workers.retired(one)] == [f"worker-{i}" for i in range(4)]
    workers.remove_environment(retired[0].path)
    workers.remove_environment(retired[1].path)
    assert [r.path.name for r in workers.retired(two)] == ["worker-3"]
    assert (four.buffer.path / "worker-0").is_dir()


@pytest.mark.parametrize("group", ["a/b", "a+", "#", ""])
def test_a_share_group_with_filter_characters_is_refused(tmp_path: Path, group: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings(tmp_path, f'share_group = "{group}"\n')
    assert any(p.startswith("mqtt.share_group:") for p in info.value.problems)


def test_workers_out_of_range_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        settings(tmp_path, "workers = 0\n")
    assert any(p.startswith("mqtt.workers:") for p in info.value.problems)


PAGE = """# HELP gateway_readings_total Readings by outcome
# TYPE gateway_readings_total counter
gateway_readings_total{{outcome="accepted"}} {accepted}
# HELP gateway_buffer_lag_seconds Lag
# TYPE gateway_buffer_lag_seconds gauge
gateway_buffer_lag_seconds {lag}
# HELP gateway_commit_readings Readings per commit
# TYPE gateway_commit_readings histogram
gateway_commit_readings_bucket{{le="10.0"}} 1.0
gateway_commit_readings_bucket{{le="+Inf"}} 2.0
gateway_commit_readings_count 2.0
gateway_commit_readings_sum 30.0
"""


def test_merged_metrics_label_each_series_by_worker() -> None:
    text = metricsmerge.merge(
        [("0", PAGE.format(accepted=5, lag=0.5)), ("1", PAGE.format(accepted=7, lag=2))]
    ).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert [f.type for f in families.values()] == ["counter", "gauge", "histogram"]
    accepted = {s.labels["worker"]: s.value for s in families["gateway_readings"].samples}
    assert accepted == {"0": 5, "1": 7}
    assert {s.labels["worker"] for s in families["gateway_commit_readings"].samples} == {"0", "1"}
    assert len(families["gateway_commit_readings"].samples) == 8
    # Each family once: Prometheus refuses a page that repeats one.
    assert text.count("# TYPE gateway_readings_total counter") == 1


def measurement(ts: int, temp: float, room: str = "a") -> dict[str, object]:
    return {
        "measurement": "m",
        "tags": {"device": "d", "room": room},
        "time": "",
        "time_ns": ts,
        "state": "buffered",
        "fields": {"temp": {"value": temp, "state": "buffered"}},
    }


def test_merged_latest_takes_each_series_newest_from_any_worker() -> None:
    a = {"device": "d", "source": "cache", "measurements": [measurement(5, 1.0)]}
    b = {
        "device": "d",
        "source": "cache",
        "measurements": [measurement(9, 2.0), measurement(1, 3.0, "b")],
    }
    code, body = workerapi.merge_latest([(200, a), (404, {"error": "x"}), (200, b)])
    assert code == 200
    assert [(m["tags"]["room"], m["time_ns"]) for m in body["measurements"]] == [("a", 9), ("b", 1)]
    assert workerapi.merge_latest([(404, {"error": "x"}), (404, {"error": "y"})])[0] == 404
    assert workerapi.merge_latest([(404, {"error": "x"}), (502, {"error": "y"})])[0] == 502
    assert workerapi.merge_latest([])[0] == 503


def test_merged_devices_add_backlogs_and_keep_the_latest_sighting() -> None:
    def row(n: int, age: float | None, seen: str | None) -> dict[str, object]:
        return {
            "device": "d",
            "buffered_readings": n,
            "oldest_buffered_age_s": age,
            "last_seen": seen,
        }

    code, body = workerapi.merge_devices(
        [
            (200, {"devices": [row(3, 1.5, "2026-01-01T00:00:02Z")]}),
            (200, {"devices": [row(4, None, "2026-01-01T00:00:01Z")]}),
        ],
        100,
    )
    assert (code, body["devices"]) == (200, [row(7, 1.5, "2026-01-01T00:00:02Z")])
    assert (
        workerapi.merge_status([(400, {"error": "top"}), (400, {"error": "top"})], "p", 5)[0] == 400
    )
