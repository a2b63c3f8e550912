"""`gateway check-config --connect` against real servers: OK where it is, exactly why where not."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from gateway.tools import servers

if TYPE_CHECKING:
    from pathlib import Path

    from tests.conftest import Endpoint, InfluxV1

pytestmark = pytest.mark.integration

CONFIG = """
[mqtt]
host = "127.0.0.1"
port = {mqtt_port}
client_id = "gw-{run}"

[[mqtt.subscriptions]]
topic = "{run}/{{device}}/{{measurement}}"

[buffer]
path = "{buffer}"

[influx]
{influx}
"""


def connect_checks(
    config: Path, environ: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """`check-config --connect` on `config`: the finished process and its OK/FAIL lines."""
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", "-c", str(config), "--connect"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env=environ,
    )
    lines = [line for line in result.stderr.splitlines() if line[:4] in {"OK  ", "FAIL"}]
    return result, lines


def check(tmp_path: Path, mqtt_port: int, influx: str, run: str) -> tuple[int, list[str]]:
    """Exit code and the check lines of `check-config --connect` on a configuration of these."""
    path = tmp_path / "gateway.toml"
    path.write_text(
        CONFIG.format(mqtt_port=mqtt_port, run=run, buffer=tmp_path / "buffer", influx=influx)
    )
    result, lines = connect_checks(path)
    return result.returncode, lines


def test_every_check_passes_against_the_configured_servers(
    tmp_path: Path, mosquitto: Endpoint, influx: InfluxV1, run_id: str
) -> None:
    code, lines = check(tmp_path, mosquitto.port, influx.config, run_id)
    assert code == 0, lines
    assert lines == [
        f"OK   broker 127.0.0.1:{mosquitto.port}: connected without a login",
        f"OK   subscription '{run_id}/+/+': granted QoS 1",
        f"OK   database {influx.url} (v1, database '{influx.database}'): answers its ping",
        "OK   database write: an empty write was accepted",
    ]
    assert influx.query("SHOW MEASUREMENTS") == [], "the check stores nothing"
    assert not (tmp_path / "buffer").exists(), "nor does it open the buffer"


def test_each_failure_says_why(
    tmp_path: Path, influxd_url: str, victoria_url: str, run_id: str
) -> None:
    """A closed broker port, a missing database and a database that is not there at all."""
    closed = servers.free_port()
    missing_db = f'url = "{influxd_url}"\napi = "v1"\ndatabase = "no_such_{run_id}"'
    code, lines = check(tmp_path, closed, missing_db, run_id)
    assert code == 1
    assert lines[0].startswith(f"FAIL broker 127.0.0.1:{closed}: ")
    assert (
        lines[1]
        == f"OK   database {influxd_url} (v1, database 'no_such_{run_id}'): answers its ping"
    )
    assert lines[2].startswith(
        f"FAIL database write: not allowed: database at {influxd_url}: HTTP 404"
    )
    assert "database not found" in lines[2]

    nowhere = f"http://127.0.0.1:{servers.free_port()}"
    code, lines = check(tmp_path, closed, f'url = "{nowhere}"\napi = "v1"\ndatabase = "x"', run_id)
    assert code == 1
    assert lines[-1] == (
        f"FAIL database {nowhere} (v1, database 'x'): "
        "no answer to GET /ping (down, wrong url or port)"
    )

    v2 = f'url = "{victoria_url}"\napi = "v2"\norg = "o"\nbucket = "b"'
    code, lines = check(tmp_path, closed, v2, run_id)
    assert lines[1:] == [
        f"OK   database {victoria_url} (v2, bucket 'b'): answers its ping",
        "OK   database write: an empty write was accepted",
    ]


def test_no_secret_is_printed_by_a_failing_connect_check(tmp_path: Path, run_id: str) -> None:
    """Every secret loaded, both servers unreachable: the output names neither secret."""
    secrets = {"mqtt": "mqtt-Secret-7f3e1a", "influx": "influx-Secret-90b2cd"}
    for name, secret in secrets.items():
        (tmp_path / name).write_text(secret + "\n")
    nowhere = f"http://127.0.0.1:{servers.free_port()}"
    influx = (
        f'url = "{nowhere}"\napi = "v1"\ndatabase = "x"\nusername = "gw"\n'
        f'password_file = "{tmp_path / "influx"}"'
    )
    path = tmp_path / "gateway.toml"
    path.write_text(
        CONFIG.format(
            mqtt_port=servers.free_port(), run=run_id, buffer=tmp_path / "buffer", influx=influx
        ).replace("[mqtt]\n", f'[mqtt]\nusername = "gw"\npassword_file = "{tmp_path / "mqtt"}"\n')
    )
    environ = {**os.environ, "GATEWAY__METRICS__TOKEN": "metrics-Secret-4d5e6f70"}
    result, lines = connect_checks(path, environ)
    assert result.returncode == 1
    assert [line[:4] for line in lines] == ["FAIL", "FAIL"]
    shown = result.stdout + result.stderr
    assert '"password": "**********"' in shown, "the secrets were loaded, and masked"
    for secret in [*secrets.values(), "metrics-Secret-4d5e6f70"]:
        assert secret not in shown
