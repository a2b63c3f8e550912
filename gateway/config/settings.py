"""The whole configuration: one model of every section, each with its defaults."""

from __future__ import annotations

import math

from pydantic import Field, model_validator

from gateway.config.mqtt import MqttSettings
from gateway.config.replication import ReplicationSettings
from gateway.config.section import Section
from gateway.config.sections import (
    ApiSettings,
    BufferSettings,
    FlushSettings,
    InfluxSettings,
    LimitSettings,
    LogSettings,
    MetricsSettings,
)
from gateway.config.sinks import (
    ResolvedSink,
    SinkSettings,
    influx_of,
    located,
    resolve,
    sink_problems,
)
from gateway.config.sparkplug import SparkplugSettings

# What one series of the last-value table takes on disk, its two databases together with their
# pages' free room (measured: 293 bytes for a 58-byte series with two fields).
LATEST_SERIES_BYTES = 320
# The page guard lets the buffer's pages reach this share of its capacity and counts the table
# twice, for the copy a checkpoint rewriting it needs (gateway/buffer/capacity.py).
GUARD_FRACTION = 0.9
GUARD_COPIES = 2
# The last-value table stays when the buffer is empty: it may take at most this share of what
# the guard allows, so that readings keep the rest.
LATEST_SHARE = 0.5


class Settings(Section):
    """The whole configuration."""

    mqtt: MqttSettings
    buffer: BufferSettings
    # The database: `[influx]` for one, or a `[[sinks]]` table for each (gateway/config/sinks.py).
    influx: InfluxSettings | None = None
    sinks: list[SinkSettings] = Field(default_factory=list)
    flush: FlushSettings = FlushSettings()
    metrics: MetricsSettings = MetricsSettings()
    api: ApiSettings = ApiSettings()
    log: LogSettings = LogSettings()
    limits: LimitSettings = LimitSettings()
    sparkplug: SparkplugSettings = SparkplugSettings()
    replication: ReplicationSettings = ReplicationSettings()

    @model_validator(mode="after")
    def _replication_fits(self) -> Settings:
        if self.replication.role == "off":
            return self
        if self.mqtt.workers > 1:
            msg = "replication: a replicated gateway runs one process ([mqtt] workers = 1)"
            raise ValueError(msg)
        if not self.mqtt.persistent_session:
            msg = (
                "replication: the standby takes over the primary's broker session, which needs "
                "[mqtt] persistent_session = true"
            )
            raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _sinks_are_consistent(self) -> Settings:
        problems = sink_problems(self.influx, self.sinks, self.flush)
        if problems:
            raise located(problems)
        resolve(self.influx, self.sinks, self.flush)  # raises naming each sink's key
        return self

    def resolved_sinks(self) -> list[ResolvedSink]:
        """Every database as the gateway runs it, in the order configured.

        Computed on each call, so that settings changed by `model_copy` (a reload's `[flush]`)
        resolve with what they hold now.

        Raises:
            ValidationError: only for settings changed past validation by `model_copy`, whose
                sinks' own `[flush]` keys no longer fit `[flush]` (see `reload.effective`).
        """
        return resolve(self.influx, self.sinks, self.flush)

    @property
    def primary_influx(self) -> InfluxSettings:
        """The first sink's database: the read API's misses and dead-letter replay use it."""
        # Not through `resolved_sinks`: the read API asks on every miss, and needs no pace.
        return self.influx if self.influx is not None else influx_of(self.sinks[0])

    @model_validator(mode="after")
    def _latest_values_fit(self) -> Settings:
        # Without this, a small buffer with many series refuses every reading, even empty.
        if not self.api.enabled:
            return self
        workers = self.mqtt.workers
        per_series = GUARD_COPIES * LATEST_SERIES_BYTES / (GUARD_FRACTION * LATEST_SHARE)
        fits = int(self.buffer.capacity // workers / per_series)
        if self.api.latest_series > fits:
            needed_mib = math.ceil(self.api.latest_series * per_series * workers / (1 << 20))
            split = f" shared by {workers} workers" if workers > 1 else ""
            raise ValueError(
                f"api.latest_series = {self.api.latest_series} does not fit buffer.capacity = "
                f"{int(self.buffer.capacity)} bytes{split}: the last-value table would take more "
                f"than half of the buffer's room. Lower api.latest_series to at most {fits}, or "
                f"raise buffer.capacity to at least {needed_mib} MiB"
            )
        return self
