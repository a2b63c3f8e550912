"""Log lines: syslog priorities and no second timestamp under the journal, JSON with facts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pathlib import Path

# Logs one line per level, a line with facts, and a traceback, through the gateway's setup.
SCRIPT = """
import logging, sys
from gateway.service import logsetup
logsetup.setup("debug", sys.argv[1])
log = logging.getLogger("gateway.test")
log.debug("debug line")
log.info("info line %d", 7, extra={"readings": 7, "broker": "127.0.0.1:1883"})
log.warning("warning line")
log.error("error line")
try:
    raise ValueError("boom")
except ValueError:
    log.exception("with a traceback")
"""


def log_lines(tmp_path: Path, fmt: str, *, journal: bool) -> list[str]:
    """What the script writes to a file standing in for stdout, named by JOURNAL_STREAM or not."""
    out = tmp_path / f"stdout-{fmt}-{journal}"
    with out.open("wb") as stdout:
        stat = os.fstat(stdout.fileno())
        environ = dict(os.environ)
        environ.pop("JOURNAL_STREAM", None)
        # A stream that is not stdout (the parent's journal, inherited through a pipe) is ignored.
        environ["JOURNAL_STREAM"] = f"{stat.st_dev}:{stat.st_ino}" if journal else "1:1"
        subprocess.run(
            [sys.executable, "-c", SCRIPT, fmt], stdout=stdout, env=environ, check=True, timeout=60
        )
    return out.read_text().splitlines()


def test_under_the_journal_each_line_carries_its_priority_and_no_timestamp(tmp_path: Path) -> None:
    lines = log_lines(tmp_path, "text", journal=True)
    assert lines[:4] == [
        "<7>DEBUG gateway.test: debug line",
        "<6>INFO gateway.test: info line 7",
        "<4>WARNING gateway.test: warning line",
        "<3>ERROR gateway.test: error line",
    ]
    # A traceback's lines keep the entry's priority, so `-p err` shows them all.
    trace = lines[4:]
    assert trace[0] == "<3>ERROR gateway.test: with a traceback"
    assert len(trace) > 2
    assert all(line.startswith("<3>") for line in trace)
    assert trace[-1] == "<3>ValueError: boom"


def test_off_the_journal_lines_are_timestamped_without_priorities(tmp_path: Path) -> None:
    lines = log_lines(tmp_path, "text", journal=False)
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} DEBUG gateway.test: debug line", lines[0]
    )
    assert not any(line.startswith("<") for line in lines)


@pytest.mark.parametrize("journal", [False, True])
def test_json_lines_have_an_utc_iso_timestamp_and_the_facts_as_keys(
    tmp_path: Path, journal: bool
) -> None:
    lines = log_lines(tmp_path, "json", journal=journal)
    entries = [json.loads(line.removeprefix("<6>").removeprefix("<7>")) for line in lines[:2]]
    info = entries[1]
    assert info["level"] == "INFO"
    assert info["logger"] == "gateway.test"
    assert info["message"] == "info line 7"
    assert info["readings"] == 7
    assert info["broker"] == "127.0.0.1:1883"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+\+00:00", info["timestamp"])
    assert lines[1].startswith("<6>{") is journal
    error = json.loads(lines[-1].removeprefix("<3>"))
    assert "ValueError: boom" in error["exc_info"]
