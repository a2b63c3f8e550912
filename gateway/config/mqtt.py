"""`[mqtt]`: the broker connection, TLS toward servers, and the subscriptions."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    FilePath,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gateway.config.section import Section, both_or_neither
from gateway.points.topics import TopicTemplate

# The device class of a subscription that names none: its readings' admission lane.
DEFAULT_DEVICE_CLASS = "default"
# Sparkplug B's topic namespace (Eclipse Sparkplug 3.0): spBv1.0/<group>/<type>/<node>[/<device>].
SPARKPLUG_NAMESPACE = "spBv1.0"


class Deadband(Section):
    """`deadband` of a subscription: which readings are not worth storing.

    A reading is suppressed when every numeric field moved less than its band since the last
    reading kept for its series, every other field is unchanged, and it comes less than
    `heartbeat_s` (reading time) after that one. The band is the larger of the absolute one and
    the relative one times the last kept value's magnitude. A number applies to every numeric
    field; a table names fields, and fields it does not name have no band.
    """

    absolute: float | dict[str, float] | None = None
    relative: float | dict[str, float] | None = None
    heartbeat_s: float = Field(default=300.0, gt=0, le=86_400)
    max_series: int = Field(default=10_000, ge=1, le=1_000_000)

    @field_validator("absolute")
    @classmethod
    def _absolute_is_a_distance(
        cls, band: float | dict[str, float] | None
    ) -> float | dict[str, float] | None:
        for name, value in _bands(band):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name}must be a finite number >= 0, got {value}")
        return band

    @field_validator("relative")
    @classmethod
    def _relative_is_a_fraction(
        cls, band: float | dict[str, float] | None
    ) -> float | dict[str, float] | None:
        for name, value in _bands(band):
            if not 0 < value <= 1:
                raise ValueError(f"{name}must be a fraction in (0, 1], got {value}")
        return band

    @model_validator(mode="after")
    def _has_a_band(self) -> Deadband:
        if self.absolute is None and self.relative is None:
            raise ValueError("set absolute, relative or both: without a band nothing is suppressed")
        return self


def _bands(band: float | dict[str, float] | None) -> list[tuple[str, float]]:
    """(prefix for a message, value) of each band, so one check serves a number and a table."""
    if band is None:
        return []
    if isinstance(band, dict):
        return [(f"{field}: ", value) for field, value in band.items()]
    return [("", band)]


class Subscription(Section):
    """One `[[mqtt.subscriptions]]` entry: which topics to take and how to read them."""

    # Before `topic`, whose check depends on it.
    format: Literal["json", "line", "value", "sparkplug_b"] = "json"
    topic: str
    qos: Literal[0, 1, 2] = 1
    measurement: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    # Near capacity (see [buffer] policy): the device class names this subscription's lane in
    # metrics and in the buffer; subscriptions sharing a class must agree on its policy,
    # priority, critical and deadband.
    device_class: str = Field(
        default=DEFAULT_DEVICE_CLASS, min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_.-]+$"
    )
    # None: the [buffer] policy. "shed" drops the lowest priority first; critical is never dropped
    # (nor compacted).
    policy: Literal["reject", "drop_oldest", "shed", "compact"] | None = None
    priority: int = Field(default=0, ge=0, le=9)
    critical: bool = False
    # Report by exception (gateway/ingest/core/deadband.py): readings within the band of the
    # last one kept for their series are acknowledged and counted, never stored.
    deadband: Deadband | None = None
    timestamp_key: str = "ts"
    # None means the format's natural unit: ms for json, ns for line protocol.
    timestamp_unit: Literal["s", "ms", "us", "ns"] | None = None
    value_field: str = "value"
    # JSON and plain numbers do not say int or float; a sensor sending 21 then 21.5 would make the
    # database refuse the second as a type conflict, so numbers are floats unless asked otherwise.
    integers: Literal["float", "int"] = "float"

    @field_validator("topic")
    @classmethod
    def _topic_is_a_template(cls, topic: str, info: ValidationInfo) -> str:
        if info.data.get("format") == "sparkplug_b":
            levels = topic.split("/")
            if (
                levels[0] != SPARKPLUG_NAMESPACE
                or levels[-1] != "#"
                or len(levels) > 3  # noqa: PLR2004 - namespace, group, '#'
                or any(not level or "+" in level or "#" in level for level in levels[1:-1])
            ):
                raise ValueError(
                    f"format 'sparkplug_b' takes a whole namespace or one group: "
                    f"'{SPARKPLUG_NAMESPACE}/#' or '{SPARKPLUG_NAMESPACE}/<group>/#'"
                )
            return topic
        TopicTemplate.parse(topic)
        return topic

    @model_validator(mode="after")
    def _measurement_has_one_source(self) -> Subscription:
        if self.format == "sparkplug_b":
            if self.measurement is not None:
                raise ValueError(
                    "format 'sparkplug_b' names each measurement after its metric; map "
                    "metric names to measurements in [sparkplug] measurements instead"
                )
            return self
        in_topic = "measurement" in TopicTemplate.parse(self.topic).placeholders
        if self.format == "line":
            if in_topic or self.measurement is not None:
                raise ValueError(
                    "format 'line' carries its own measurement in every line; "
                    "remove {measurement} from the topic and the measurement key"
                )
        elif in_topic and self.measurement is not None:
            raise ValueError(
                "measurement is given twice: by {measurement} in the topic and by the "
                "measurement key"
            )
        elif not in_topic and self.measurement is None:
            raise ValueError("no measurement: put {measurement} in the topic or set measurement")
        return self

    @property
    def template(self) -> TopicTemplate:
        """The parsed topic template (not for format 'sparkplug_b', whose topic is a filter)."""
        return TopicTemplate.parse(self.topic)

    @property
    def mqtt_filter(self) -> str:
        """The filter this subscription subscribes with."""
        return self.topic if self.format == "sparkplug_b" else self.template.mqtt_filter


class TlsSettings(Section):
    """TLS toward a server (`[mqtt.tls]`, `[influx.tls]`): TLS 1.2 or newer, always verified."""

    # The CA bundle that signed the server's certificate; none: the system's CAs.
    ca_file: FilePath | None = None
    # A client certificate and its key, for servers that authenticate clients by certificate.
    cert_file: FilePath | None = None
    key_file: FilePath | None = None
    # Turn off only for a server reached by an address its certificate does not name.
    verify_hostname: bool = True

    @model_validator(mode="after")
    def _cert_has_key(self) -> TlsSettings:
        both_or_neither(self, "cert_file", "key_file")
        return self


class MqttSettings(Section):
    """`[mqtt]`: the broker connection and the subscriptions."""

    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    client_id: str = Field(default="gateway", min_length=1)
    username: str | None = None
    password_file: Path | None = None
    password: SecretStr | None = None
    # TLS to the broker; without this table the connection is plain TCP.
    tls: TlsSettings | None = None
    keepalive_s: int = Field(default=60, ge=5, le=65535)
    protocol: Literal["3.1.1", "5"] = "5"
    # MQTT 5: QoS 1/2 messages the broker may send before our PUBACKs (which wait for the
    # commit); bounds what is held in memory while a commit is slow or intake is paused.
    receive_maximum: int = Field(default=20_000, ge=1, le=65_535)
    # The broker keeps QoS 1 messages for us while we are away only with a persistent session.
    persistent_session: bool = True
    # MQTT 5 ends a session at disconnect unless an expiry is sent; one week outlives any outage.
    session_expiry_s: int = Field(default=7 * 24 * 3600, ge=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)
    # Subscribe to the broker's $SYS counters (Mosquitto: dropped and stored messages,
    # clients) and export them as metrics; brokers without them simply send nothing.
    broker_stats: bool = True
    # Gateway processes under one parent, each with its own connection in the shared
    # subscription group, its own LMDB environment (buffer.path/worker-N) and its own flusher.
    workers: int = Field(default=1, ge=1, le=64)
    # Subscribe as `$share/<share_group>/<filter>`: the broker hands each message to one member
    # of the group. Needed by workers > 1 (defaults to client_id then) and by several gateways
    # on several boxes taking one stream between them.
    share_group: str | None = Field(default=None, min_length=1, pattern=r"^[^/+#]+$")
    subscriptions: list[Subscription] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _workers_share(cls, data: Any) -> Any:  # noqa: ANN401 - the raw table
        if isinstance(data, dict) and data.get("share_group") is None:
            workers, client_id = data.get("workers", 1), data.get("client_id", "gateway")
            if isinstance(workers, int) and workers > 1 and isinstance(client_id, str):
                data = {**data, "share_group": re.sub(r"[/+#]", "_", client_id) or "gateway"}
        return data

    def subscribe_filter(self, mqtt_filter: str) -> str:
        """The filter as sent in SUBSCRIBE: shared when a share group is configured."""
        return f"$share/{self.share_group}/{mqtt_filter}" if self.share_group else mqtt_filter

    @model_validator(mode="after")
    def _sparkplug_in_one_process(self) -> MqttSettings:
        for index, sub in enumerate(self.subscriptions):
            if sub.format == "sparkplug_b" and self.share_group is not None:
                raise ValueError(
                    f"subscriptions.{index}: format 'sparkplug_b' needs every message of an "
                    "edge node in one gateway process (a DATA message is read with the alias "
                    "map of its node's BIRTH), so it cannot be used with workers > 1 or "
                    "share_group"
                )
        return self

    @model_validator(mode="after")
    def _classes_agree(self) -> MqttSettings:
        first: dict[str, tuple[int, Subscription]] = {}
        for index, sub in enumerate(self.subscriptions):
            seen = first.setdefault(sub.device_class, (index, sub))
            for key in ("policy", "priority", "critical", "deadband"):
                if getattr(sub, key) != getattr(seen[1], key):
                    raise ValueError(
                        f"subscriptions.{index}.{key}: device_class {sub.device_class!r} has "
                        f"{key} {getattr(seen[1], key)!r} in subscriptions.{seen[0]}; a class is "
                        "one lane, so give this subscription a device_class of its own"
                    )
        return self
