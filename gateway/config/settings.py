"""The whole configuration: one model of every section, each with its defaults."""

from __future__ import annotations

from gateway.config.mqtt import MqttSettings
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
from gateway.config.sparkplug import SparkplugSettings


class Settings(Section):
    """The whole configuration."""

    mqtt: MqttSettings
    buffer: BufferSettings
    influx: InfluxSettings
    flush: FlushSettings = FlushSettings()
    metrics: MetricsSettings = MetricsSettings()
    api: ApiSettings = ApiSettings()
    log: LogSettings = LogSettings()
    limits: LimitSettings = LimitSettings()
    sparkplug: SparkplugSettings = SparkplugSettings()
