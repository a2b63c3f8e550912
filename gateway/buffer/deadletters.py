"""The dead-letter store: points the database refused, kept in the buffer's LMDB environment.

This module owns the format: key `>Q` (sequence), value FIFO, NUL, the database's reason, NUL,
the refused line (UTF-8). The buffer writes letters in the transaction that deletes their
readings (`encode`); `DeadLetterStore` opens the environment on its own for `gateway
dead-letters`, outside the buffer's accounting, so it may run while the gateway does (LMDB
serializes writers across processes).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import lmdb

from gateway.buffer.core.ledger import DeadLetter
from gateway.buffer.environment import map_sizes
from gateway.errors import StorageError

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

_ID = struct.Struct(">Q")


@dataclass
class DeadLetterStore:
    """The dead-letter database of a buffer, opened on its own."""

    env: lmdb.Environment
    db: Any  # py-lmdb's database handle type is private

    @classmethod
    def open(cls, path: Path, capacity: int) -> DeadLetterStore:
        """Open the environment at `path` (one worker's) for its dead letters only.

        Raises:
            StorageError: no buffer at the path.
        """
        try:
            env = lmdb.open(
                str(path),
                create=False,
                max_dbs=4,
                # The map size the buffer gives its store: two processes must agree on it.
                map_size=map_sizes(capacity)[0],
            )
            return cls(env, env.open_db(b"dead"))
        except lmdb.Error as exc:
            raise StorageError(f"cannot open buffer at {path}: {exc}") from exc

    def close(self) -> None:
        """Close the environment."""
        self.env.close()

    def __iter__(self) -> Iterator[DeadLetter]:
        """Every dead letter, oldest first."""
        with self.env.begin() as txn:
            for key, value in txn.cursor(db=self.db):
                yield decode(key, value)

    def remove(self, ids: list[int]) -> int:
        """Remove dead letters by id; returns how many were there."""
        with self.env.begin(write=True) as txn:
            return len([n for n in ids if txn.delete(_ID.pack(n), db=self.db)])


def encode(fifo: str, reason: str, line: str) -> bytes:
    """A dead letter's stored value."""
    return f"{fifo}\0{reason}\0{line}".encode()


def decode(key: bytes, value: bytes) -> DeadLetter:
    """The dead letter stored under `key`."""
    device, reason, line = bytes(value).decode().split("\0", 2)
    return DeadLetter(_ID.unpack(key)[0], device, reason, line)
