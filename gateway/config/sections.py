"""The sections besides `[mqtt]`: buffer, database, flusher, metrics, read API, limits, logs."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import (
    ByteSize,
    Field,
    FilePath,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gateway.config.mqtt import TlsSettings
from gateway.config.section import Section, both_or_neither

# How durable a commit is before readings are acknowledged (docs/operator-guide.md).
SyncMode = Literal["commit", "interval", "none"]
# systemd/gateway.service's WatchdogSec: a loop that does not turn this long is killed.
WATCHDOG_S = 30.0
# The bearer token is the only thing between the network and the API, and a guess costs one
# request (no lockout): 16 characters of `openssl rand -hex 16` are 64 bits, out of reach of
# guessing; a shorter token is most likely a word typed by hand.
MIN_TOKEN_CHARS = 16
# The buffer's memory bounds, when not set, are a fraction of `capacity` between a floor that
# keeps them useful and a ceiling that was their fixed value before they were settings: a 1 GiB
# buffer (the default) holds what it always did, a small box's buffer less.
# Decompressed chunks kept between reads (gateway/buffer/fiforead.py): a flush reads a batch,
# deletes it and finds the next head in the same chunks. The floor holds a few group commits'
# journal records (2,000 readings of 300 B are 600 KB): each serves every device of its commit,
# and a cache holding less decoded it again for each device a drop or a read met. A full 4 MiB
# buffer of 100 devices spent 80 % of each commit there, 45 ms a commit at a 256 KiB floor.
DECODED_CACHE_FRACTION = 1 / 64
DECODED_CACHE_FLOOR_BYTES = 4 << 20
DECODED_CACHE_CEILING_BYTES = 16 << 20
# Readings a seal holds before writing them as sealed chunks (gateway/buffer/sealing.py); less
# means shorter chunks when many devices interleave. At capacity/128 a 16 MiB buffer of 100
# devices sealed chunks of about 30 readings (320 B): they compress poorly and sit in the map's
# leaf pages, which the page guard counts twice (a checkpoint's deletes rewrite them), so the
# pages met the guard at half the readings budget and `compact` could commit no step.
SEAL_PENDING_FRACTION = 1 / 4
SEAL_PENDING_FLOOR_BYTES = 128 << 10
SEAL_PENDING_CEILING_BYTES = 8 << 20
# An explicit bound: at least a chunk of small readings, at most a gibibyte.
MEMORY_BOUND_MIN_BYTES = 64 << 10
MEMORY_BOUND_MAX_BYTES = 1 << 30
# Summary levels: a summary's timestamp keeps its level in its three low bits, 0 being raw.
MAX_COMPACT_LEVELS = 7
MIN_LADDER_STEP = 2
MAX_LADDER_STEP = 1000
MAX_COMPACT_STEP_S = 7 * 86_400


def sized_from_capacity(capacity_bytes: int, fraction: float, floor: int, ceiling: int) -> int:
    """`fraction` of the capacity, no less than `floor` and no more than `ceiling`."""
    return max(floor, min(ceiling, int(capacity_bytes * fraction)))


class BufferSettings(Section):
    """`[buffer]`: where and how readings wait for the database."""

    path: Path
    capacity: ByteSize = ByteSize(1 << 30)
    sync: SyncMode = "commit"
    sync_interval_ms: int = Field(default=1000, ge=10)
    # A group commit closes once `commit_target_readings` messages are queued or
    # `commit_window_ms` after its first message, whichever comes first, and holds at most
    # `commit_max_readings`. Each commit costs the disk about 25 KB whatever it holds, so at
    # 5,000 readings/s the defaults make commits of about 200 readings (134 bytes written per
    # reading at 100 devices) with a receipt-to-PUBACK p99 within 50 ms; a 20 ms window gave
    # 30 ms and 206 bytes (gateway/buffer/store.py).
    commit_max_readings: int = Field(default=2000, ge=1)
    commit_target_readings: int = Field(default=256, ge=1)
    commit_window_ms: float = Field(default=30.0, gt=0, le=1000)
    # What happens at high_watermark x the readings budget (see gateway/buffer/core/admission.py):
    # "reject" leaves the broker, which keeps QoS 1 messages in the persistent session, until
    # the fill is below low_watermark; "drop_oldest" and "shed" drop buffered readings instead;
    # "compact" replaces the oldest readings by per-series summaries (gateway/buffer/compaction.py).
    policy: Literal["reject", "drop_oldest", "shed", "compact"] = "reject"
    # The compact policy's first summary step, and the multipliers of each coarser step after it:
    # 60 s, then 600 s, then 3600 s. A summary's timestamp carries its level in its three low
    # bits (gateway/buffer/core/summary.py), so there are at most 7 levels.
    compact_interval_s: int = Field(default=60, ge=1, le=3600)
    compact_ladder: tuple[int, ...] = (10, 6)
    # The most of a device's buffered bytes one summary level holds before its oldest summaries
    # are summarised again at the next step.
    compact_level_share: float = Field(default=0.25, gt=0, le=0.5)
    high_watermark: float = Field(default=0.9, gt=0, le=1)
    low_watermark: float = Field(default=0.8, gt=0, lt=1)
    # The most of the readings budget one device may hold; 1 means no limit.
    device_share: float = Field(default=1.0, gt=0, le=1)
    # Devices (per device class) with buffered readings; readings of more are refused, so that
    # a firmware bug putting random ids in topics cannot fill the disk with keys.
    max_devices: int = Field(default=100_000, ge=1)
    # The card's rated endurance in terabytes written, and what it had taken when installed:
    # with them, gateway_disk_projected_life_days (gateway/observe/diskwear.py).
    # Bounded and finite: the figures go out as JSON, which has no infinity (a million TB is
    # far past any card's rating).
    endurance_tbw: float | None = Field(default=None, gt=0, le=1e6, allow_inf_nan=False)
    endurance_used_tb: float = Field(default=0.0, ge=0, le=1e6, allow_inf_nan=False)
    # Memory the buffer may hold whatever the backlog; unset, sized from `capacity` (see
    # `decoded_cache_max_bytes` and `seal_pending_max_bytes`).
    decoded_cache_bytes: ByteSize | None = Field(
        default=None, ge=MEMORY_BOUND_MIN_BYTES, le=MEMORY_BOUND_MAX_BYTES
    )
    seal_pending_bytes: ByteSize | None = Field(
        default=None, ge=MEMORY_BOUND_MIN_BYTES, le=MEMORY_BOUND_MAX_BYTES
    )

    @property
    def decoded_cache_max_bytes(self) -> int:
        """The decoded-chunk cache's bound: as set, or capacity/64 within 4 MiB to 16 MiB."""
        return self._bound(
            self.decoded_cache_bytes,
            DECODED_CACHE_FRACTION,
            DECODED_CACHE_FLOOR_BYTES,
            DECODED_CACHE_CEILING_BYTES,
        )

    @property
    def seal_pending_max_bytes(self) -> int:
        """The readings a seal holds: as set, or capacity/4 within 128 KiB to 8 MiB."""
        return self._bound(
            self.seal_pending_bytes,
            SEAL_PENDING_FRACTION,
            SEAL_PENDING_FLOOR_BYTES,
            SEAL_PENDING_CEILING_BYTES,
        )

    def _bound(self, explicit: ByteSize | None, fraction: float, floor: int, ceiling: int) -> int:
        if explicit is not None:
            return int(explicit)
        return sized_from_capacity(self.capacity, fraction, floor, ceiling)

    @model_validator(mode="after")
    def _watermarks_are_ordered(self) -> BufferSettings:
        if self.low_watermark >= self.high_watermark:
            raise ValueError("need low_watermark < high_watermark")
        return self

    @property
    def compact_steps_s(self) -> tuple[int, ...]:
        """The compact policy's summary steps in seconds, finest first."""
        steps = [self.compact_interval_s]
        for multiplier in self.compact_ladder:
            steps.append(steps[-1] * multiplier)
        return tuple(steps)

    @field_validator("compact_ladder")
    @classmethod
    def _ladder_fits(cls, ladder: tuple[int, ...]) -> tuple[int, ...]:
        if len(ladder) > MAX_COMPACT_LEVELS - 1:
            raise ValueError(f"at most {MAX_COMPACT_LEVELS - 1} multipliers (7 summary levels)")
        bad = [m for m in ladder if not MIN_LADDER_STEP <= m <= MAX_LADDER_STEP]
        if bad:
            raise ValueError(
                f"each multiplier is a whole number from {MIN_LADDER_STEP} to "
                f"{MAX_LADDER_STEP}, got {bad[0]}"
            )
        return ladder

    @model_validator(mode="after")
    def _coarsest_step_is_bounded(self) -> BufferSettings:
        coarsest = self.compact_steps_s[-1]
        if coarsest > MAX_COMPACT_STEP_S:
            raise ValueError(
                f"compact_interval_s x compact_ladder gives a coarsest step of {coarsest} s; "
                f"at most {MAX_COMPACT_STEP_S} s (7 days)"
            )
        return self

    @model_validator(mode="after")
    def _used_needs_a_rating(self) -> BufferSettings:
        # Otherwise taken silently and never used: no projected life, and nothing says why.
        if self.endurance_used_tb and self.endurance_tbw is None:
            raise ValueError("endurance_used_tb needs endurance_tbw, the card's rating")
        return self

    @field_validator("capacity")
    @classmethod
    def _capacity_is_usable(cls, capacity: ByteSize) -> ByteSize:
        if capacity < 1 << 20:
            raise ValueError("must be at least 1MiB")
        return capacity


class InfluxSettings(Section):
    """`[influx]`: the database the buffer drains into."""

    url: str = "http://127.0.0.1:8086"
    api: Literal["v1", "v2", "v3"] = "v2"
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
    # api v3: the database answers before its write-ahead log is on disk (faster, and a crash
    # of the database loses what it had acknowledged).
    no_sync: bool = False
    # For an https:// url: the CA to trust (default: the system's) and a client certificate.
    tls: TlsSettings | None = None

    @field_validator("url")
    @classmethod
    def _url_is_http(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        # "@" anywhere, not only in the parsed authority: a password holding "/", "?" or "#"
        # ends the authority early ("http://user:pa/ss@host" parses as host "user", path
        # "/ss@host"), so the password would pass as a path and be printed. A path that needs
        # "@" can write it as %40.
        if "@" in url:
            # Never echoed: the part before "@" may be a password, and this message is printed.
            raise ValueError(
                "holds a user name or password (user:password@host); give them as "
                "username and password_file (api v1) or token_file (api v2, v3) instead "
                '(an "@" in the path is written %40)'
            )
        # None of these echo the URL either: its path or query may still hold a secret.
        if any(c.isspace() for c in url):
            raise ValueError("holds white space")
        parts = urlsplit(url)
        if not parts.hostname:
            raise ValueError("names no host")
        try:
            _ = parts.port
        except ValueError:
            raise ValueError("the port is not a number from 0 to 65535") from None
        if parts.query or parts.fragment:
            # A query may carry InfluxDB 1.x credentials (`?u=...&p=...`).
            raise ValueError("a query or fragment has no place in the database's URL")
        return url.rstrip("/")

    @model_validator(mode="after")
    def _api_has_its_target(self) -> InfluxSettings:
        target = "bucket" if self.api == "v2" else "database"
        if not getattr(self, target):
            raise ValueError(f"api {self.api!r} needs {target}")
        stray = [
            key
            for key, apis in _API_KEYS.items()
            if self.api not in apis and getattr(self, key) not in (None, False)
        ]
        if stray:
            each = "; ".join(
                f"{key} only to api {' and '.join(map(repr, _API_KEYS[key]))}" for key in stray
            )
            raise ValueError(f"with api {self.api!r}, these do not apply: {each}")
        return self


# The keys of [influx] that only some APIs use; the rest apply to all.
_API_KEYS = {
    "org": ("v2",),
    "bucket": ("v2",),
    "database": ("v1", "v3"),
    "retention_policy": ("v1",),
    "username": ("v1", "v2"),
    "password": ("v1", "v2"),
    "password_file": ("v1", "v2"),
    "no_sync": ("v3",),
}


class FlushSettings(Section):
    """`[flush]`: how the buffer drains into the database."""

    batch_floor: int = Field(default=100, ge=1)
    batch_ceiling: int = Field(default=10_000, ge=1)
    batch_initial: int = Field(default=1000, ge=1)
    linger_s: float = Field(default=1.0, gt=0)
    target_latency_s: float = Field(default=0.5, gt=0)
    max_in_flight: int = Field(default=4, ge=1, le=64)
    retry_initial_s: float = Field(default=0.5, gt=0)
    retry_max_s: float = Field(default=30.0, gt=0)
    # While the database cannot be reached, ping it this often and write as soon as it answers.
    probe_interval_s: float = Field(default=1.0, gt=0, le=60)
    # After an outage (and at start), send what arrives ahead of what was buffered before;
    # each keeps its own order. False: strict acceptance order per device.
    live_first: bool = True
    # Send writes gzip-compressed (Content-Encoding: gzip): about a tenth of the bytes.
    gzip: bool = True
    # An average cap on the bytes sent to the database, for metered links; the rest waits on
    # disk. Unset: no cap.
    max_bytes_per_s: float | None = Field(default=None, gt=0)
    # On shutdown, how long to keep flushing before leaving the rest buffered for the next start.
    grace_s: float = Field(default=10.0, ge=0)

    @model_validator(mode="after")
    def _sizes_are_ordered(self) -> FlushSettings:
        if not self.batch_floor <= self.batch_initial <= self.batch_ceiling:
            raise ValueError("need batch_floor <= batch_initial <= batch_ceiling")
        return self


class MetricsSettings(Section):
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
    # /healthz fails for a minute after the event loop lagged more than this (a stall holds every
    # PUBACK); `gateway_event_loop_lag_seconds` is sampled every `loop_lag_interval_s`, and a
    # stall is measured to within one interval.
    max_loop_lag_s: float = 5.0
    loop_lag_interval_s: float = Field(default=0.25, ge=0.01, le=1.0)
    # Open connections at most; at the cap the oldest one that has not sent a whole request is
    # closed for the newcomer, so that silent connections never lock out /healthz.
    max_connections: int = Field(default=128, ge=2, le=65_536)
    # A connection whose request headers (and TLS handshake) are not in by then is closed; an
    # idle keep-alive connection after `keepalive_timeout_s`.
    header_timeout_s: float = Field(default=10.0, gt=0, le=300)
    keepalive_timeout_s: float = Field(default=15.0, gt=0, le=300)
    # Host header names answered besides IP literals, localhost and the name in `listen`
    # (DNS rebinding needs a name); e.g. the service's name in a container network.
    allowed_hosts: list[str] = Field(default_factory=list)

    @field_validator("max_loop_lag_s")
    @classmethod
    def _lag_before_the_watchdog(cls, limit_s: float) -> float:
        if not 0 < limit_s < WATCHDOG_S:
            raise ValueError(
                f"must be more than 0 and less than {WATCHDOG_S:g} s (the systemd watchdog's "
                "interval), so that /healthz reports a stall before the watchdog kills the gateway"
            )
        return limit_s

    @field_validator("token")
    @classmethod
    def _token_is_long_enough(
        cls, token: SecretStr | None, info: ValidationInfo
    ) -> SecretStr | None:
        if token is not None and len(token.get_secret_value().strip()) < MIN_TOKEN_CHARS:
            file = info.data.get("token_file")
            source = f" (read from {file})" if file is not None else ""
            raise ValueError(
                f"shorter than {MIN_TOKEN_CHARS} characters{source}: a short token can be "
                "guessed; make one with `openssl rand -hex 16`"
            )
        return token

    @model_validator(mode="after")
    def _cert_has_key(self) -> MetricsSettings:
        both_or_neither(self, "tls_cert_file", "tls_key_file")
        return self

    @field_validator("listen")
    @classmethod
    def _listen_is_host_port(cls, listen: str) -> str:
        host, sep, port = listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:  # noqa: PLR2004
            raise ValueError("must be HOST:PORT, such as 127.0.0.1:9108")
        return listen

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts_are_names(cls, hosts: list[str]) -> list[str]:
        names = []
        for host in hosts:
            if not host or any(c in host for c in ":/[]@ *"):
                raise ValueError(f"{host!r} is not a host name (no port, scheme or wildcard)")
            # A browser sends an internationalised name in its ASCII (punycode) form.
            try:
                names.append(host.rstrip(".").encode("idna").decode("ascii").lower())
            except UnicodeError as exc:
                raise ValueError(f"{host!r} is not a host name: {exc}") from exc
        return names

    @property
    def host_port(self) -> tuple[str, int]:
        """The listen address split for a socket bind."""
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


class ApiSettings(Section):
    """`[api]`: the read API on the metrics server (`/api/v1/...`)."""

    enabled: bool = True
    # The last-value table keeps this many series (least recently updated evicted).
    latest_series: int = Field(default=10_000, ge=1, le=1_000_000)
    # How a miss reads the database: "auto" is Flux for api "v2", InfluxQL (`/query`) for "v1"
    # and "v3";
    # "prometheus" is VictoriaMetrics' query API (which has no Flux).
    database_query: Literal["auto", "influxql", "flux", "prometheus"] = "auto"
    # How far back a miss looks for a device's last value.
    lookback_days: int = Field(default=365, ge=1)
    query_timeout_s: float = Field(default=5.0, gt=0)
    # A device the database did not know is answered 404 from memory for this long (0: off),
    # so that random names cost no query each; at most this many such names are kept.
    miss_cache_s: float = Field(default=30.0, ge=0)
    miss_cache_entries: int = Field(default=10_000, ge=0, le=1_000_000)
    # Misses read the database at most this many at once; beyond, a 503 with Retry-After.
    max_database_reads: int = Field(default=4, ge=1, le=256)

    def query_language(self, api: str) -> str:
        """The query language a miss uses with the configured database API."""
        if self.database_query != "auto":
            return self.database_query
        return "flux" if api == "v2" else "influxql"


class LimitSettings(Section):
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


class LogSettings(Section):
    """`[log]`: log level and line format for journald."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"
    # A line with the counts since the previous one, the backlog and the lag; 0 turns it off.
    summary_interval_s: float = Field(default=300.0, ge=0)
    # The same message from the same place at most once per this many seconds; the next one
    # says how many were suppressed. 0 turns it off.
    repeat_window_s: float = Field(default=60.0, ge=0)
