"""The benchmark's disk measurement reads what a process really wrote to storage."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from gateway.tools.measure import write_bytes

if TYPE_CHECKING:
    from pathlib import Path

MIB = 1 << 20


def test_write_bytes_grows_by_what_this_process_synced(tmp_path: Path) -> None:
    """Two MiB written and fsynced show in /proc/<pid>/io; a missing process reads as 0."""
    before = write_bytes(os.getpid())
    with (tmp_path / "data").open("wb") as out:
        out.write(os.urandom(2 * MIB))
        out.flush()
        os.fsync(out.fileno())
    assert write_bytes(os.getpid()) - before >= 2 * MIB
    assert write_bytes(2**22 + 12345) == 0
