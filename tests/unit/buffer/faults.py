"""Storage failures on demand: a buffer's LMDB write transactions failing where a test says.

`Faults(buffer)` puts proxies in place of the buffer's two environments (`_env`, the store;
`_journal`, the journal). Read transactions pass through untouched. A write transaction counts
its writes (put, delete, replace, pop and drop, on the transaction or on its cursors); once a
`Fault` is armed, the write transaction it names raises its error at the write it names (before
the write reaches LMDB), or at the commit when it performs fewer writes or none is named. The
real transaction is aborted, as a failing LMDB write leaves it: nothing of it reaches the disk.
An armed fault always fires, so a test knows what failed. `events` logs every commit, abort and
sync in order, for tests of the order in which the two files become durable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Self

import lmdb

if TYPE_CHECKING:
    from collections.abc import Iterator

    from gateway.buffer.store import Buffer

Env = Literal["store", "journal"]
_WRITES = frozenset({"put", "delete", "replace", "pop", "drop", "putmulti"})


@dataclass(frozen=True)
class Fault:
    """Which write transaction fails, where, and how.

    `env`: the environment; `txn`: which of its write transactions begun from now on (0: the
    next); `write`: the write that raises (0: the first), None or past the last: the commit;
    `error`: `lmdb.Error`, or `lmdb.MapFullError` for a full map.
    """

    env: Env
    txn: int = 0
    write: int | None = None
    error: type[lmdb.Error] = lmdb.Error


class Faults:
    """The proxies of one buffer's environments and the fault armed in them."""

    def __init__(self, buffer: Buffer) -> None:
        """Wrap `buffer`'s environments (again after each reopen: a new buffer has new ones)."""
        self.armed: Fault | None = None
        # The fault that fired last, and at which write (None: at the commit).
        self.fired: tuple[Fault, int | None] | None = None
        self.events: list[tuple[Env, str]] = []
        self._began: dict[Env, int] = {"store": 0, "journal": 0}
        buffer._env = _Environment(buffer._env, "store", self)
        if buffer._journal is not None:
            buffer._journal = _Environment(buffer._journal, "journal", self)
        # The checkpoints and seals run through the same environments.
        buffer._checkpointer._env = buffer._env
        buffer._checkpointer._journal = buffer._journal

    def arm(self, fault: Fault) -> None:
        """Fail the write transaction `fault` names; counting starts now."""
        self.armed = fault
        self.fired = None
        self._began = {"store": 0, "journal": 0}

    def disarm(self) -> None:
        """Fail nothing (a fault that did not fire is forgotten)."""
        self.armed = None

    def _fault_for(self, env: Env) -> Fault | None:
        """The fault for the write transaction of `env` being begun, if it is the one."""
        fault = self.armed
        if fault is None or fault.env != env:
            return None
        self._began[env] += 1
        if self._began[env] - 1 != fault.txn:
            return None
        self.armed = None
        return fault


class _Environment:
    """An `lmdb.Environment` whose write transactions may fail."""

    def __init__(self, env: lmdb.Environment, name: Env, faults: Faults) -> None:
        self._real = env
        self._name = name
        self._faults = faults

    def begin(self, *args: Any, **kwargs: Any) -> Any:
        txn = self._real.begin(*args, **kwargs)
        if not kwargs.get("write", False):
            return txn
        return _Transaction(txn, self._name, self._faults, self._faults._fault_for(self._name))

    def sync(self, *args: Any) -> None:
        self._faults.events.append((self._name, "sync"))
        self._real.sync(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class _Transaction:
    """A write transaction counting its writes, failing at the one its fault names."""

    def __init__(
        self, txn: lmdb.Transaction, env: Env, faults: Faults, fault: Fault | None
    ) -> None:
        self._real = txn
        self._env = env
        self._faults = faults
        self._fault = fault
        self._writes = 0
        self._done = False

    def _fail(self, at: int | None) -> None:
        fault = self._fault
        if fault is None:
            return
        self._fault = None
        self._faults.fired = (fault, at)
        self._abort()
        message = f"injected failure in the {self._env}'s write transaction"
        if fault.error is lmdb.MapFullError:
            message = "mdb_put: MDB_MAP_FULL: Environment mapsize limit reached (injected)"
        raise fault.error(message)

    def write(self) -> None:
        """Count one write, failing here if the fault names it."""
        if self._fault is not None and self._fault.write == self._writes:
            self._fail(self._writes)
        self._writes += 1

    def _abort(self) -> None:
        if not self._done:
            self._done = True
            self._real.abort()
            self._faults.events.append((self._env, "abort"))

    def commit(self) -> None:
        if self._done:
            # A write failed and aborted the transaction; the caller's commit is refused too.
            raise lmdb.Error("transaction already aborted")
        self._fail(None)
        self._done = True
        self._real.commit()
        self._faults.events.append((self._env, "commit"))

    def abort(self) -> None:
        self._abort()

    def cursor(self, *args: Any, **kwargs: Any) -> _Cursor:
        return _Cursor(self._real.cursor(*args, **kwargs), self)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self._abort()

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._real, name)
        if name not in _WRITES:
            return found

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.write()
            return found(*args, **kwargs)

        return counted


class _Cursor:
    """A cursor of a `_Transaction`: its writes count as the transaction's."""

    def __init__(self, cursor: lmdb.Cursor, txn: _Transaction) -> None:
        self._real = cursor
        self._txn = txn

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        return iter(self._real)

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._real, name)
        if name not in _WRITES:
            return found

        def counted(*args: Any, **kwargs: Any) -> Any:
            self._txn.write()
            return found(*args, **kwargs)

        return counted
