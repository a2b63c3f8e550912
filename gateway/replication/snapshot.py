"""A whole buffer as of one instant: how a standby too far behind is brought up to date.

A standby that missed records the primary has already sealed out of its journal cannot be sent
them one by one. The primary then copies both its LMDB environments from read transactions
taken at one instant (`Buffer.copy_frozen`), compacted, and ships the two files; the standby
puts them in place of its buffer's and opens it. Opening such a copy is a restart after kill -9
at that instant, which the buffer's recovery makes exact (DESIGN invariant 6); the primary then
ships the records after the copy's newest from its journal.
"""

from __future__ import annotations

import os
import shutil
from typing import TYPE_CHECKING

from gateway.buffer.environment import DATA_FILE, FILES, JOURNAL_FILE

if TYPE_CHECKING:
    from pathlib import Path

    from gateway.buffer.store import Buffer

# The files of a snapshot, in the order they are shipped.
PARTS = (DATA_FILE, JOURNAL_FILE)


def write(buffer: Buffer, directory: Path) -> int:
    """Copy `buffer` into `directory` (emptied first); returns the newest record it holds.

    Blocks for as long as copying the buffer takes: call it in a worker thread.
    """
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    return buffer.copy_frozen(directory, directory / JOURNAL_FILE)


def install(source: Path, buffer_dir: Path) -> None:
    """Put the snapshot in `source` in place of the (closed) buffer in `buffer_dir`.

    The files are synced before they replace the buffer's, and the old ones go first, so a
    crash in between leaves an empty buffer (the primary sends the snapshot again), never a mix.
    """
    for name in PARTS:
        with (source / name).open("rb+") as handle:
            os.fsync(handle.fileno())
    buffer_dir.mkdir(parents=True, exist_ok=True)
    discard(buffer_dir)
    _sync_dir(buffer_dir)
    for name in PARTS:
        (source / name).replace(buffer_dir / name)
    _sync_dir(buffer_dir)


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove(directory: Path) -> None:
    """Remove a snapshot's directory, if there is one."""
    shutil.rmtree(directory, ignore_errors=True)


def discard(buffer_dir: Path) -> None:
    """Remove a buffer's files (a snapshot that did not open), leaving an empty directory."""
    for name in FILES:
        (buffer_dir / name).unlink(missing_ok=True)
