"""Retry delays: capped exponential backoff with full jitter, for every loop that retries.

The broker reconnect, the database write retry and the worker restart all wait this way, so
that many gateways (or workers) failing at once do not retry in step. Pure: the random source is
a parameter (`random.uniform` in the service, a fixed function in tests).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

# Doubling stops here: 2**30 times any initial delay is far past every cap.
MAX_DOUBLINGS = 30


def delay_s(
    failures: int, initial_s: float, cap_s: float, uniform: Callable[[float, float], float]
) -> float:
    """The wait after `failures` failures in a row: uniform in [0, min(cap, initial * 2**n)]."""
    return uniform(0.0, min(cap_s, initial_s * 2 ** min(failures, MAX_DOUBLINGS)))
