"""The pure response classifier of the sink."""

from __future__ import annotations

import pytest

from gateway.errors import SinkAuthError, SinkRejected, SinkUnavailable
from gateway.flush.sink import Delivered, classify, retry_after


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (204, {}, Delivered),
        (200, {}, Delivered),
        (400, {}, SinkRejected),
        (413, {}, SinkRejected),
        (422, {}, SinkRejected),
        (401, {}, SinkAuthError),
        (403, {}, SinkAuthError),
        (404, {}, SinkAuthError),
        (429, {"Retry-After": "7"}, SinkUnavailable),
        (500, {}, SinkUnavailable),
        (503, {}, SinkUnavailable),
    ],
)
def test_classify(status: int, headers: dict[str, str], expected: type) -> None:
    """Each status class maps to its outcome; only refusals are not retried."""
    outcome = classify(status, headers, "body")
    assert type(outcome) is expected
    if expected is not Delivered:
        assert outcome.retryable is (expected is not SinkRejected)  # type: ignore[union-attr]


def test_retry_after_is_honoured() -> None:
    """Retry-After in seconds or as a past date is read; garbage is ignored."""
    outcome = classify(429, {"Retry-After": "7"}, "")
    assert isinstance(outcome, SinkUnavailable)
    assert outcome.retry_after_s == 7
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0
    assert retry_after("soon") is None
    assert retry_after(None) is None
