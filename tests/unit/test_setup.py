"""scripts/setup leaves no system service of the packages it installed running or enabled."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
QUIETED = ROOT / ".venv" / ".setup-quieted-units"


def quieted_units() -> list[str]:
    if not QUIETED.exists():
        pytest.skip("scripts/setup installed no server package on this machine")
    return sorted(set(QUIETED.read_text().split()))


def test_units_setup_installed_are_not_enabled() -> None:
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        pytest.skip("no systemctl")
    for unit in quieted_units():
        state = subprocess.run(
            [systemctl, "is-enabled", unit], capture_output=True, text=True, check=False
        ).stdout.strip()
        assert state != "enabled", f"{unit} is {state}"
        if Path("/run/systemd/system").is_dir():
            active = subprocess.run([systemctl, "is-active", unit], check=False).returncode
            assert active != 0, f"{unit} runs"


def test_no_server_runs_from_its_system_configuration() -> None:
    """A system instance reads /etc (or no file at all); the tests' own read their work folders."""
    quieted_units()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue  # the process ended meanwhile
        program = Path(argv[0].decode(errors="replace")).name
        if program in {"mosquitto", "influxd", "victoria-metrics", "prometheus"}:
            text = b" ".join(argv).decode(errors="replace")
            assert "/etc/" not in text, f"a system instance runs: {text}"
            assert len(argv) > 2, f"a server without its own configuration runs: {text}"
