"""Edge IoT telemetry gateway: MQTT in, durable LMDB write-behind buffer, InfluxDB out."""

__version__ = "0.6.0"
