"""Every exception the gateway raises on purpose derives from GatewayError."""

from typing import ClassVar


class GatewayError(Exception):
    """Base of the gateway's own exceptions."""

    # A failure that waits for a retry may say when, from the other side (HTTP Retry-After).
    retry_after_s: float | None = None


class ConfigError(GatewayError):
    """The configuration is invalid; `problems` holds one "key.path: message" line per error."""

    def __init__(self, problems: list[str]) -> None:
        """Keep the individual problems so the CLI can print one per line."""
        super().__init__("; ".join(problems))
        self.problems = problems


class DecodeError(GatewayError):
    """A sensor sent something the gateway cannot turn into a reading; counted as invalid."""

    def __init__(self, reason: str, detail: str) -> None:
        """`reason` is a short stable label for metrics, `detail` explains it for logs."""
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class StorageError(GatewayError):
    """The LMDB buffer failed for a reason other than capacity."""


class DamagedChunkError(StorageError):
    """A stored chunk failed its checksum or could not be decoded (DESIGN invariant 12).

    The buffer catches it, sets the chunk aside and counts its readings; it never leaves the
    buffer. `kind` is "sealed" or "journal"; `key` the chunk's key in its database.
    """

    def __init__(self, kind: str, key: bytes, reason: str) -> None:
        """A damaged chunk of `kind` under `key`, and what was wrong with it."""
        super().__init__(f"damaged {kind} chunk {key.hex()}: {reason}")
        self.kind = kind
        self.key = key


class CapacityError(StorageError):
    """The buffer cannot take more now: its budget, its LMDB map or the disk is full.

    `disk_full` tells the disk filling up (another process, say) apart from the buffer's own
    limits: waiting for the flusher cannot help then, only free space can. `at_item` is the
    index of the reading that admission paused at, when that is what happened.
    """

    def __init__(
        self, message: str, *, disk_full: bool = False, at_item: int | None = None
    ) -> None:
        """Say which limit was reached, and where."""
        super().__init__(message)
        self.disk_full = disk_full
        self.at_item = at_item


class SinkError(GatewayError):
    """A write to the database failed.

    The policy is on the class: `retryable` (keep the readings and try again later, else isolate
    the refused points) and `operator_must_act` (log at ERROR: nothing heals without a person).
    """

    retryable: ClassVar[bool] = False
    operator_must_act: ClassVar[bool] = False
    # A sign the database is overloaded: the batch-size controller shrinks.
    overloaded: ClassVar[bool] = False
    # The `result` label of gateway_writes_total.
    result: ClassVar[str] = "retry"
    # No HTTP response came: the flusher probes for the database's return (SinkUnavailable).
    unreachable: bool = False


class SinkUnavailable(SinkError):
    """The database is unreachable, overloaded or failing; the write is retried later."""

    retryable = True
    overloaded = True

    def __init__(
        self, message: str, retry_after_s: float | None = None, *, unreachable: bool = False
    ) -> None:
        """`retry_after_s` carries the server's Retry-After, when it sent one.

        `unreachable`: no HTTP response came (connection refused, reset, no route), so the
        database's return can be noticed by probing it rather than by waiting out the backoff.
        """
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.unreachable = unreachable


class SinkRejected(SinkError):
    """The database refused the points as invalid (400/422); retrying cannot help."""

    result = "rejected"


class SinkPartial(SinkRejected):
    """The database stored the batch but the lines it lists (InfluxDB 3's partial write).

    `lines`: (line number in the body, from 1; the database's reason, naming the database) of
    each line refused, as the database listed them.
    The database lists at most `listed_max` of them; when the list is that long, lines after
    the last one listed may have been refused unlisted.
    """

    result = "partial"

    def __init__(self, message: str, lines: list[tuple[int, str]], listed_max: int) -> None:
        """Keep the refused lines; `message` names the database."""
        super().__init__(message)
        self.lines = lines
        self.listed_max = listed_max


class SinkAuthError(SinkError):
    """The database refused our credentials (401/403); the operator must act.

    Retried, because fixing the token must not require a restart, and dropping data is worse.
    """

    retryable = True
    operator_must_act = True
    result = "auth"
