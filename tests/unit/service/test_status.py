"""`gateway status` and `gateway verify-buffer` read a buffer another process holds open."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import TYPE_CHECKING

from gateway.buffer.core.ledger import level_fifo
from gateway.buffer.store import Buffer
from gateway.buffer.view import combine, snapshot
from gateway.points.model import Reading
from gateway.points.record import pack
from gateway.service.status import render

if TYPE_CHECKING:
    from pathlib import Path

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
