"""A bounded sample of refused payloads, for debugging sensor firmware: `gateway rejects`.

Invalid messages are counted by reason in the metrics; this keeps the last `KEPT` of them with
topic, reason and the start of the payload, so an operator can see what a sensor sent. It is an
LMDB environment of its own beside the buffer (a few MiB, outside the buffer's budget), written
at most once a second, and readable while the gateway runs.
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Self

import lmdb

from gateway.errors import StorageError

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

KEPT = 200
PAYLOAD_BYTES_KEPT = 512
MAP_BYTES = 4 << 20
DIRECTORY = "rejects"
_SEQ = struct.Struct(">Q")


@dataclass(frozen=True, slots=True)
class Reject:
    """One refused message."""

    ts_ns: int
    topic: str
    reason: str
    detail: str
    payload: str  # the first PAYLOAD_BYTES_KEPT bytes, undecodable ones as \\x escapes
    payload_bytes: int

    @classmethod
    def of(cls, topic: str, payload: bytes, reason: str, detail: str) -> Reject:
        """A sample of a message refused for `reason`."""
        head = payload[:PAYLOAD_BYTES_KEPT].decode("utf-8", errors="backslashreplace")
        return cls(time.time_ns(), topic, reason, detail[:500], head, len(payload))


class RejectLog:
    """The last KEPT refused messages; see the module docstring."""

    def __init__(self, buffer_path: Path, *, readonly: bool = False) -> None:
        """Open (creating unless read-only) the log beside the buffer at `buffer_path`.

        Raises:
            StorageError: LMDB cannot open it (or, read-only, there is none yet).
        """
        path = buffer_path / DIRECTORY
        try:
            if not readonly:
                path.mkdir(parents=True, exist_ok=True)
            self._env = lmdb.open(str(path), map_size=MAP_BYTES, readonly=readonly, max_dbs=0)
        except lmdb.Error as exc:
            raise StorageError(f"cannot open the reject log at {path}: {exc}") from exc

    def __enter__(self) -> Self:
        """Use as a context manager that closes the log."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close on leaving the block."""
        self._env.close()

    def add(self, rejects: Sequence[Reject]) -> None:
        """Append samples, forgetting the oldest beyond KEPT; a full map is not an error."""
        try:
            with self._env.begin(write=True) as txn:
                cursor = txn.cursor()
                seq = _SEQ.unpack(cursor.key())[0] + 1 if cursor.last() else 0
                for reject in rejects:
                    txn.put(_SEQ.pack(seq), json.dumps(asdict(reject)).encode())
                    seq += 1
                excess = txn.stat()["entries"] - KEPT
                cursor.first()
                while excess > 0 and cursor.delete():
                    excess -= 1
        except lmdb.Error:
            return  # a debugging aid must never stop intake

    def newest_first(self) -> list[Reject]:
        """The kept samples, newest first."""
        with self._env.begin() as txn:
            return [Reject(**json.loads(bytes(v))) for _, v in txn.cursor().iterprev()]


def render(rejects: Sequence[Reject]) -> str:
    """The samples as text for a terminal."""
    if not rejects:
        return "no refused message kept"
    lines = []
    for r in rejects:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.ts_ns / 1e9))
        lines.append(f"{stamp}  {r.reason}  {r.topic!r}  ({r.payload_bytes} bytes)")
        lines.append(f"    {r.detail}")
        lines.append(f"    payload: {r.payload!r}")
    return "\n".join(lines)
