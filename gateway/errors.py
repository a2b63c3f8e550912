"""Every exception the gateway raises on purpose derives from GatewayError."""

from typing import ClassVar


class GatewayError(Exception):
    """Base of the gateway's own exceptions."""


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
    """A write to the database failed."""

    retryable: ClassVar[bool] = False


class SinkUnavailable(SinkError):
    """The database is unreachable, overloaded or failing; the write is retried later."""

    retryable = True

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        """`retry_after_s` carries the server's Retry-After, when it sent one."""
        super().__init__(message)
        self.retry_after_s = retry_after_s


class SinkRejected(SinkError):
    """The database refused the points as invalid (400/422); retrying cannot help."""


class SinkAuthError(SinkError):
    """The database refused our credentials (401/403); the operator must act.

    Retried, because fixing the token must not require a restart, and dropping data is worse.
    """

    retryable = True
