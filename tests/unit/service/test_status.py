"""`gateway status` and `gateway verify-buffer` read a buffer another process holds open."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import TYPE_CHECKING

from gateway.buffer.core.ledger import level_fifo
from gateway.buffer.store import Buffer
from gateway.buffer.view import combine, snapshot
from gateway.config import loader
from gateway.points.model import Reading
from gateway.points.record import pack
from gateway.service import status as status_module
from gateway.service.status import render

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

CONFIG = """
[mqtt]
[[mqtt.subscriptions]]
topic = "s/{{device}}/{{measurement}}"
[buffer]
path = "{path}"
capacity = "16MiB"
[influx]
api = "v1"
database = "x"
"""


def gateway_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, check=False
    )


def test_status_and_verify_while_a_writer_holds_the_buffer(tmp_path: Path) -> None:
    """Another process sees exact per-device backlog while this one keeps the buffer open."""
    config = tmp_path / "gateway.toml"
    config.write_text(CONFIG.format(path=tmp_path / "buffer"))
    with Buffer(tmp_path / "buffer", 16 << 20) as buffer:
        buffer.append(
            [
                (d, pack(Reading(d, "m", (("device", d),), (("v", 1.0),), 10**18 + i)))
                for i, d in enumerate(["big"] * 5 + ["small"] * 2)
            ]
        )
        shown = gateway_cli("status", "--config", str(config), "--json")
        assert shown.returncode == 0, shown.stderr
        view = json.loads(shown.stdout)
        assert view["readings"] == 7
        assert [(d["device"], d["readings"]) for d in view["devices"]] == [("big", 5), ("small", 2)]
        assert view["devices"][0]["oldest_ts_ns"] == 10**18

        table = gateway_cli("status", "--config", str(config))
        assert "7 readings" in table.stdout
        assert "big" in table.stdout

        verified = gateway_cli("verify-buffer", "--config", str(config))
        assert verified.returncode == 0
        assert ": consistent; 7 readings of 2 devices" in verified.stdout
        as_json = json.loads(gateway_cli("verify-buffer", "-c", str(config), "--json").stdout)
        assert [(v["consistent"], v["readings"], v["devices"]) for v in as_json] == [(True, 7, 2)]

        repair = gateway_cli("verify-buffer", "--config", str(config), "--repair")
        assert repair.returncode == 1
        assert "in use by another gateway process" in repair.stderr


def test_status_of_missing_buffer_is_a_clear_error(tmp_path: Path) -> None:
    """No buffer yet: a one-line error, not a traceback."""
    config = tmp_path / "gateway.toml"
    config.write_text(CONFIG.format(path=tmp_path / "nothing-here"))
    shown = gateway_cli("status", "--config", str(config))
    assert shown.returncode == 1
    assert shown.stderr.startswith("gateway: cannot open buffer")
    assert "Traceback" not in shown.stderr


def test_status_counts_summaries_by_step_apart_from_readings(tmp_path: Path) -> None:
    """Summaries show by step and on their device's row; readings stay the raw ones."""
    a1, a2 = level_fifo("a", 1), level_fifo("a", 2)
    with Buffer(tmp_path / "buffer", 16 << 20) as buffer:
        buffer.append(
            [
                ("a", pack(Reading("a", "m", (), (("v", 1.0),), 10**18))),
                ("b", pack(Reading("b", "m", (), (("v", 1.0),), 10**18))),
                (a1, pack(Reading("a", "m", (), (("v", 1.0),), 10**17 + 1))),
                (a1, pack(Reading("a", "m", (), (("v", 1.0),), 10**17 + 9))),
                (a2, pack(Reading("a", "m", (), (("v", 1.0),), 10**16 + 2))),
            ]
        )
        view = snapshot(buffer, 2 * 10**18, steps_s=(60, 600))
    assert view["readings"] == 2
    assert view["summaries"] == {"60s": 2, "600s": 1}
    rows = [(d["device"], d["readings"], d["summaries"]) for d in view["devices"]]
    assert rows == [("a", 1, 3), ("b", 1, 0)]
    assert view["devices"][0]["oldest_ts_ns"] == 10**16 + 2

    text = render(view, top=10)
    assert "summaries buffered: 60s 2 · 600s 1" in text
    assert "summarised since" not in text, "from disk nothing says what the service did"
    running = {**view, "runtime": {"readings": {"summarised": 1234}}}
    assert "(1,234 readings summarised since the service started)" in render(running, top=10)

    both = combine("all", [view, view])
    assert both["summaries"] == {"60s": 4, "600s": 2}
    assert [(d["device"], d["summaries"]) for d in both["devices"]] == [("a", 6), ("b", 0)]


def test_status_without_summaries_keeps_its_table(tmp_path: Path) -> None:
    """Under the other policies the table has no summaries column and no summaries line."""
    with Buffer(tmp_path / "buffer", 16 << 20) as buffer:
        buffer.append([("a", pack(Reading("a", "m", (), (("v", 1.0),), 10**18)))])
        view = snapshot(buffer, 2 * 10**18, steps_s=(60,))
    assert view["summaries"] == {}
    lines = render(view, top=10).splitlines()
    assert not any(line.startswith("summaries buffered") for line in lines)
    assert lines[2].split() == ["device", "class", "readings", "bytes", "oldest"]


def running_view(sinks: list[dict[str, object]]) -> dict[str, object]:
    """A service's status answer with no backlog, and `sinks` as its runtime's list."""
    return {
        "path": "/b",
        "readings": 0,
        "bytes": 0,
        "budget_bytes": 1 << 20,
        "fill_ratio": 0.0,
        "file_bytes": 0,
        "capacity_bytes": 1 << 20,
        "devices_with_backlog": 0,
        "dead_letters": 0,
        "devices": [],
        "runtime": {
            "lag_s": 75.0,
            "batch_size": 500,
            "sink": {"state": "failing", "failed_writes_in_a_row": 3},
            "sinks": sinks,
            "admission": {"policy": "reject", "paused": False},
            "mqtt_connected": True,
        },
    }


SINKS = [
    {
        "name": "near",
        "state": "ok",
        "failed_writes_in_a_row": 0,
        "lag_s": 0.3,
        "batch_size": 1000,
        "last_write_s": 0.01,
        "backlog_readings": 12,
        "skipped_readings": 0,
    },
    {
        "name": "cloud",
        "state": "failing",
        "failed_writes_in_a_row": 3,
        "lag_s": 75.0,
        "batch_size": 100,
        "last_write_s": 2.0,
        "backlog_readings": 48_000,
        "skipped_readings": 1_200,
    },
]


def test_status_prints_a_line_per_sink_when_there_are_several(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two sinks: a line each after the runtime lines, names aligned; --json passes them on."""
    config = tmp_path / "gateway.toml"
    config.write_text(CONFIG.format(path=tmp_path / "buffer"))
    settings = loader.load(config, {})
    monkeypatch.setattr(status_module, "from_service", lambda *_a, **_k: running_view(SINKS))
    lines = status_module.status(settings, as_json=False, top=10).splitlines()
    assert lines[-2:] == [
        "sink near   ok, lag 0.3 s, backlog 12 readings, 0 skipped",
        (
            "sink cloud  failing (3 writes in a row), lag 75.0 s, backlog 48,000 readings, "
            "1,200 skipped"
        ),
    ]
    as_json = json.loads(status_module.status(settings, as_json=True, top=10))
    assert as_json["runtime"]["sinks"] == SINKS


def test_status_of_one_sink_keeps_its_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One sink (or a service that gives no list) prints what it printed before sinks."""
    config = tmp_path / "gateway.toml"
    config.write_text(CONFIG.format(path=tmp_path / "buffer"))
    settings = loader.load(config, {})
    texts = []
    for sinks in ([], SINKS[:1]):
        monkeypatch.setattr(
            status_module, "from_service", lambda *_a, s=sinks, **_k: running_view(s)
        )
        texts.append(status_module.status(settings, as_json=False, top=10))
    assert texts[0] == texts[1]
    assert texts[0].splitlines()[-1].startswith("event loop lag in the last minute: ")
    assert "sink " not in texts[0]
