"""The bytes a process caused to reach storage, from Linux's /proc/<pid>/io.

`write_bytes` counts what the process sent towards the block device, page-cache writeback
attributed to it included; `wchar` would count every write() call, cached or not, and say
nothing about flash wear. The gateway's metrics (gateway/observe/diskwear.py) and the
benchmark (gateway/tools/measure.py) both read it here, so that they agree.
"""

from __future__ import annotations

from pathlib import Path


def parse_write_bytes(text: str) -> int | None:
    """The `write_bytes:` value of a /proc/<pid>/io text; None where the text has none."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "write_bytes":
            try:
                return int(value.strip())
            except ValueError:
                return None
    return None


def read_write_bytes(pid: int | str = "self") -> int | None:
    """Bytes process `pid` caused to be written to storage; None where /proc does not say."""
    try:
        return parse_write_bytes(Path(f"/proc/{pid}/io").read_text())
    except OSError:
        return None
