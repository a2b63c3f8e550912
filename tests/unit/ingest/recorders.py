"""Stand-ins for a broker connection in unit tests of the committer: what it was asked, recorded."""

from __future__ import annotations


class AckRecorder:
    """What the committer asks of a broker connection, recorded."""

    def __init__(self) -> None:
        self.acked: list[tuple[int, int]] = []

    def ack(self, pairs: list[tuple[int, int]]) -> None:
        self.acked.extend(pairs)

    def publish(self, messages: list[tuple[str, bytes]]) -> None:
        raise AssertionError(messages)

    def announce(self) -> None:
        raise AssertionError
