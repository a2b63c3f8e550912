"""The sink for the configured database API."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.flush.sink import V1Sink, V2Sink
from gateway.flush.sinkv3 import V3Sink

if TYPE_CHECKING:
    from gateway.config.sections import InfluxSettings
    from gateway.flush.sink import Sink


def make_sink(settings: InfluxSettings) -> Sink:
    """The sink for `[influx] api`."""
    if settings.api == "v3":
        return V3Sink(settings)
    return V1Sink(settings) if settings.api == "v1" else V2Sink(settings)
