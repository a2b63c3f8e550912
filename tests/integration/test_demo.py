"""`gateway demo --outage`: the backlog grows while the database is down and every reading lands."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.tools import demo

pytestmark = pytest.mark.integration


def test_the_demo_survives_an_outage_with_exact_counts() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "demo",
            *("--devices", "3", "--rate", "150", "--duration", "8", "--outage", "3"),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=180,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "demo: the status page is on http://127.0.0.1:" in out
    assert "demo: database stopped for 3 s" in out
    assert "demo: database back; the backlog drains" in out
    rows = [line.split() for line in out.splitlines() if re.match(r"\s+\d+\s+(up|DOWN)\s", line)]
    down = [int(row[3]) for row in rows if row[1] == "DOWN"]
    assert len(down) >= 2
    assert down[-1] > down[0], "the backlog grows on disk while the database is down"
    assert rows[-1][1] == "up"
    assert rows[-1][3] == "0", "and drains once it is back"
    summary = re.search(
        r"accepted (\d+) readings; InfluxDB holds (\d+) points .*: all of them", out
    )
    assert summary is not None, out
    assert summary.group(1) == summary.group(2)
    assert int(summary.group(1)) == 8 * 150


def test_a_failed_demo_keeps_the_log_and_the_configuration(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "gateway.log").write_text("the log")
    (work / "gateway.toml").write_text("[mqtt]")
    out = io.StringIO()
    demo._clean_up(work, kept=True, out=out)
    kept = out.getvalue().rsplit(" ", 1)[-1].strip()
    assert out.getvalue().startswith("demo: the gateway's log and configuration are kept in ")
    assert (Path(kept) / "gateway.log").read_text() == "the log"
    assert (Path(kept) / "gateway.toml").read_text() == "[mqtt]"
    shutil.rmtree(kept)
    assert not work.exists()
    demo._clean_up(tmp_path / "gone", kept=False, out=out)
