"""`gateway status` and `gateway verify-buffer` read a buffer another process holds open."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import TYPE_CHECKING

from gateway.buffer.store import Buffer
from gateway.points.model import Reading
from gateway.points.record import pack

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
