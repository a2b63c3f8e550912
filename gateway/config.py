"""Configuration: TOML file plus environment overrides, validated by pydantic.

Every default lives in these models. Unknown keys are errors, and every error names the key path.

Environment overrides: `GATEWAY__<SECTION>__<KEY>=value` sets `[section] key`; levels are
joined by a double underscore, list items by their index (`GATEWAY__MQTT__SUBSCRIPTIONS__0__QOS=0`).
The value is read as TOML when it parses as such (`1883`, `true`, `"text"`), else as a string.

Secrets (the MQTT password, the InfluxDB token and password) are never written in the file: they
come from a `*_file` key naming a file that holds them, or from the environment
(`GATEWAY__MQTT__PASSWORD`, `GATEWAY__INFLUX__TOKEN`, `GATEWAY__INFLUX__PASSWORD`).
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    FilePath,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.admission import DEFAULT_CLASS, Lane, Policy, Rules
from gateway.errors import ConfigError
from gateway.topics import TopicTemplate

if TYPE_CHECKING:
    from collections.abc import Mapping

ENV_PREFIX = "GATEWAY__"
# Keys that hold a secret; they may come from the environment or a *_file key, never the TOML file.
SECRET_KEYS = {
    ("mqtt", "password"),
    ("influx", "token"),
    ("influx", "password"),
    ("metrics", "token"),
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Subscription(_Section):
    """One `[[mqtt.subscriptions]]` entry: which topics to take and how to read them."""

    topic: str
    qos: Literal[0, 1, 2] = 1
    format: Literal["json", "line", "value"] = "json"
    measurement: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    # Near capacity (see [buffer] policy): the device class names this subscription's lane in
    # metrics and in the buffer; subscriptions sharing a class must agree on the three below.
    device_class: str = Field(
        default=DEFAULT_CLASS, min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_.-]+$"
    )
    # None: the [buffer] policy. "shed" drops the lowest priority first; critical is never dropped.
    policy: Literal["reject", "drop_oldest", "shed"] | None = None
    priority: int = Field(default=0, ge=0, le=9)
    critical: bool = False
    timestamp_key: str = "ts"
    # None means the format's natural unit: ms for json, ns for line protocol.
    timestamp_unit: Literal["s", "ms", "us", "ns"] | None = None
    value_field: str = "value"
    # JSON and plain numbers do not say int or float; a sensor sending 21 then 21.5 would make the
    # database refuse the second as a type conflict, so numbers are floats unless asked otherwise.
    integers: Literal["float", "int"] = "float"

    @field_validator("topic")
    @classmethod
    def _topic_is_a_template(cls, topic: str) -> str:
        TopicTemplate.parse(topic)
        return topic

    @model_validator(mode="after")
    def _measurement_has_one_source(self) -> Subscription:
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
        """The parsed topic template."""
        return TopicTemplate.parse(self.topic)


def _both_or_neither(section: BaseModel, first: str, second: str) -> None:
    """A certificate without its key (or the reverse) is a mistake worth naming."""
    if (getattr(section, first) is None) != (getattr(section, second) is None):
        raise ValueError(f"{first} and {second} go together")


class TlsSettings(_Section):
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
        _both_or_neither(self, "cert_file", "key_file")
        return self


class MqttSettings(_Section):
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
    def _classes_agree(self) -> MqttSettings:
        first: dict[str, tuple[int, Subscription]] = {}
        for index, sub in enumerate(self.subscriptions):
            seen = first.setdefault(sub.device_class, (index, sub))
            for key in ("policy", "priority", "critical"):
                if getattr(sub, key) != getattr(seen[1], key):
                    raise ValueError(
                        f"subscriptions.{index}.{key}: device_class {sub.device_class!r} has "
                        f"{key} {getattr(seen[1], key)!r} in subscriptions.{seen[0]}; a class is "
                        "one lane, so give this subscription a device_class of its own"
                    )
        return self


class BufferSettings(_Section):
    """`[buffer]`: where and how readings wait for the database."""

    path: Path
    capacity: ByteSize = ByteSize(1 << 30)
    sync: Literal["commit", "interval", "none"] = "commit"
    sync_interval_ms: int = Field(default=1000, ge=10)
    # A group commit closes at this many readings or after this window, whichever comes first.
    commit_max_readings: int = Field(default=2000, ge=1)
    commit_window_ms: float = Field(default=5.0, gt=0, le=1000)
    # What happens at high_watermark x the readings budget (see gateway/admission.py):
    # "reject" leaves the broker, which keeps QoS 1 messages in the persistent session, until
    # the fill is below low_watermark; "drop_oldest" and "shed" drop buffered readings instead.
    policy: Literal["reject", "drop_oldest", "shed"] = "reject"
    high_watermark: float = Field(default=0.9, gt=0, le=1)
    low_watermark: float = Field(default=0.8, gt=0, lt=1)
    # The most of the readings budget one device may hold; 1 means no limit.
    device_share: float = Field(default=1.0, gt=0, le=1)
    # Devices (per device class) with buffered readings; readings of more are refused, so that
    # a firmware bug putting random ids in topics cannot fill the disk with keys.
    max_devices: int = Field(default=100_000, ge=1)

    @model_validator(mode="after")
    def _watermarks_are_ordered(self) -> BufferSettings:
        if self.low_watermark >= self.high_watermark:
            raise ValueError("need low_watermark < high_watermark")
        return self

    @field_validator("capacity")
    @classmethod
    def _capacity_is_usable(cls, capacity: ByteSize) -> ByteSize:
        if capacity < 1 << 20:
            raise ValueError("must be at least 1MiB")
        return capacity


class InfluxSettings(_Section):
    """`[influx]`: the database the buffer drains into."""

    url: str = "http://127.0.0.1:8086"
    api: Literal["v1", "v2"] = "v2"
    org: str | None = None
    bucket: str | None = None
    token_file: Path | None = None
    token: SecretStr | None = None
    database: str | None = None
    retention_policy: str | None = None
    username: str | None = None
    password_file: Path | None = None
    password: SecretStr | None = None
    timeout_s: float = Field(default=10.0, gt=0)
    # For an https:// url: the CA to trust (default: the system's) and a client certificate.
    tls: TlsSettings | None = None

    @field_validator("url")
    @classmethod
    def _url_is_http(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return url.rstrip("/")

    @model_validator(mode="after")
    def _api_has_its_target(self) -> InfluxSettings:
        if self.api == "v1":
            if not self.database:
                raise ValueError("api 'v1' needs database")
            stray = [k for k in ("org", "bucket") if getattr(self, k) is not None]
            if stray:
                raise ValueError(f"{', '.join(stray)} only apply to api 'v2'")
        else:
            if not self.bucket:
                raise ValueError("api 'v2' needs bucket")
            stray = [k for k in ("database", "retention_policy") if getattr(self, k) is not None]
            if stray:
                raise ValueError(f"{', '.join(stray)} only apply to api 'v1'")
        return self


class FlushSettings(_Section):
    """`[flush]`: how the buffer drains into the database."""

    batch_floor: int = Field(default=100, ge=1)
    batch_ceiling: int = Field(default=10_000, ge=1)
    batch_initial: int = Field(default=1000, ge=1)
    linger_s: float = Field(default=1.0, gt=0)
    target_latency_s: float = Field(default=0.5, gt=0)
    max_in_flight: int = Field(default=4, ge=1, le=64)
    retry_initial_s: float = Field(default=0.5, gt=0)
    retry_max_s: float = Field(default=30.0, gt=0)
    # On shutdown, how long to keep flushing before leaving the rest buffered for the next start.
    grace_s: float = Field(default=10.0, ge=0)

    @model_validator(mode="after")
    def _sizes_are_ordered(self) -> FlushSettings:
        if not self.batch_floor <= self.batch_initial <= self.batch_ceiling:
            raise ValueError("need batch_floor <= batch_initial <= batch_ceiling")
        return self


class MetricsSettings(_Section):
    """`[metrics]`: the Prometheus endpoint; loopback unless asked otherwise."""

    enabled: bool = True
    listen: str = "127.0.0.1:9108"
    # Serve HTTPS with this certificate and key (both or neither).
    tls_cert_file: FilePath | None = None
    tls_key_file: FilePath | None = None
    # Require `Authorization: Bearer <token>` on every path but /healthz; the token comes from
    # token_file or GATEWAY__METRICS__TOKEN.
    token_file: Path | None = None
    token: SecretStr | None = None

    @model_validator(mode="after")
    def _cert_has_key(self) -> MetricsSettings:
        _both_or_neither(self, "tls_cert_file", "tls_key_file")
        return self

    @field_validator("listen")
    @classmethod
    def _listen_is_host_port(cls, listen: str) -> str:
        host, sep, port = listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:  # noqa: PLR2004
            raise ValueError("must be HOST:PORT, such as 127.0.0.1:9108")
        return listen

    @property
    def host_port(self) -> tuple[str, int]:
        """The listen address split for a socket bind."""
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


class ApiSettings(_Section):
    """`[api]`: the read API on the metrics server (`/api/v1/...`)."""

    enabled: bool = True
    # The last-value table keeps this many series (least recently updated evicted).
    latest_series: int = Field(default=10_000, ge=1, le=1_000_000)
    # How a miss reads the database: "auto" is InfluxQL for api "v1" and Flux for api "v2";
    # "prometheus" is VictoriaMetrics' query API (which has no Flux).
    database_query: Literal["auto", "influxql", "flux", "prometheus"] = "auto"
    # How far back a miss looks for a device's last value.
    lookback_days: int = Field(default=365, ge=1)
    query_timeout_s: float = Field(default=5.0, gt=0)

    def query_language(self, api: str) -> str:
        """The query language a miss uses with the configured database API."""
        if self.database_query != "auto":
            return self.database_query
        return "influxql" if api == "v1" else "flux"


class LimitSettings(_Section):
    """`[limits]`: what a sensor may send; anything beyond is refused and counted as invalid."""

    max_payload_bytes: ByteSize = Field(default=ByteSize(256 << 10), ge=1)
    max_readings_per_message: int = Field(default=1000, ge=1)
    max_fields_per_reading: int = Field(default=100, ge=1)
    # Tags of a reading, the topic's and the payload's together.
    max_tags: int = Field(default=32, ge=1)
    max_identifier_len: int = Field(default=256, ge=1, le=65535)
    max_string_len: int = Field(default=4096, ge=0)
    # Readings stamped further ahead than this (a sensor clock gone wrong) are refused.
    max_future_s: float = Field(default=3600.0, ge=0)
    # Readings older than this are refused; 10 years by default (backfills are rarely older).
    max_age_s: float = Field(default=10 * 365 * 86400.0, gt=0)
    # A field named like one of the reading's tags (a JSON key "device"): InfluxDB would store
    # both, and queries on the tag would read the field. "rename" appends "_field" to its name.
    field_named_like_tag: Literal["refuse", "rename"] = "refuse"


class LogSettings(_Section):
    """`[log]`: log level and line format for journald."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"
    # A line with the counts since the previous one, the backlog and the lag; 0 turns it off.
    summary_interval_s: float = Field(default=300.0, ge=0)
    # The same message from the same place at most once per this many seconds; the next one
    # says how many were suppressed. 0 turns it off.
    repeat_window_s: float = Field(default=60.0, ge=0)


class Settings(_Section):
    """The whole configuration."""

    mqtt: MqttSettings
    buffer: BufferSettings
    influx: InfluxSettings
    flush: FlushSettings = FlushSettings()
    metrics: MetricsSettings = MetricsSettings()
    api: ApiSettings = ApiSettings()
    log: LogSettings = LogSettings()
    limits: LimitSettings = LimitSettings()

    def lanes(self) -> dict[str, Lane]:
        """The admission lane of each device class the subscriptions name."""
        return {
            sub.device_class: Lane(
                device_class=sub.device_class,
                policy=Policy(sub.policy or self.buffer.policy),
                priority=sub.priority,
                critical=sub.critical,
            )
            for sub in self.mqtt.subscriptions
        }

    def admission_rules(self, budget_bytes: int) -> Rules:
        """The admission rules for a buffer whose readings may take `budget_bytes`."""
        b = self.buffer
        return Rules(
            budget_bytes=budget_bytes,
            high=b.high_watermark,
            low=b.low_watermark,
            device_share=b.device_share,
            max_devices=b.max_devices,
            lanes=self.lanes(),
            default_lane=Lane(policy=Policy(b.policy)),
        )


def load(path: Path, environ: Mapping[str, str] | None = None) -> Settings:
    """Read, override and validate the configuration at `path`.

    Raises:
        ConfigError: naming every key path with its problem.
    """
    environ = os.environ if environ is None else environ
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text: {exc.reason}"]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from exc
    problems = [
        f"{'.'.join(key)}: secrets may not be written in the config file; use "
        f"{key[1]}_file or {ENV_PREFIX}{key[0].upper()}__{key[1].upper()}"
        for key in sorted(SECRET_KEYS)
        if key[1] in raw.get(key[0], {})
    ]
    problems += _apply_environment(raw, environ)
    problems += _read_secret_files(raw)
    if problems:
        raise ConfigError(problems)
    return validate(raw)


def validate(raw: dict[str, Any]) -> Settings:
    """Validate an already-parsed configuration mapping."""
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError([_describe(err) for err in exc.errors()]) from None


def _describe(err: Any) -> str:  # noqa: ANN401 - pydantic's ErrorDetails is a TypedDict
    where = ".".join(str(part) for part in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        return f"{where}: unknown key"
    if err["type"] == "missing":
        return f"{where}: required key is missing"
    message = str(err["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}"


def _apply_environment(raw: dict[str, Any], environ: Mapping[str, str]) -> list[str]:
    problems = []
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX):
            continue
        path = [part.lower() for part in name.removeprefix(ENV_PREFIX).split("__")]
        if not all(path):
            problems.append(f"{name}: malformed override name")
            continue
        try:
            _set_path(raw, path, _parse_env_value(environ[name]))
        except (KeyError, IndexError, TypeError):
            problems.append(f"{name}: {'.'.join(path)} cannot be set (no such list item)")
    return problems


def _parse_env_value(text: str) -> Any:  # noqa: ANN401 - any TOML value
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _set_path(raw: dict[str, Any], path: list[str], value: object) -> None:
    node: Any = raw
    for part in path[:-1]:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if isinstance(node, list):
        node[int(path[-1])] = value
    else:
        node[path[-1]] = value


def _read_secret_files(raw: dict[str, Any]) -> list[str]:
    problems = []
    for section, key in sorted(SECRET_KEYS):
        table = raw.get(section)
        if not isinstance(table, dict) or not table.get(f"{key}_file") or key in table:
            continue
        file = Path(str(table[f"{key}_file"]))
        try:
            table[key] = file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            problems.append(f"{section}.{key}_file: cannot read {file}: {exc.strerror}")
    return problems


def redacted(settings: Settings) -> dict[str, Any]:
    """The effective configuration as plain data, secrets masked, for `check-config`."""
    return settings.model_dump(mode="json")
