"""`[[sinks]]`: several databases fed from the one buffer, each at its own pace.

A sink is an `[influx]` table with a name, a pace of its own (`[flush]` keys it overrides) and
two limits past which its oldest readings are released for it alone. `[influx]` stays the
spelling of one sink, named "influx". Both spellings resolve to the same thing, a `ResolvedSink`
per database in the order configured, which is all the rest of the gateway reads.

The per-sink `[flush]` keys are checked by `FlushSettings` itself, never by a copy of its
bounds, and its errors are moved under the sink's key path (`sinks.1.batch_floor`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from gateway.config.sections import FlushSettings, InfluxSettings

if TYPE_CHECKING:
    from collections.abc import Sequence

# The name of the sink that `[influx]` spells.
INFLUX_SINK_NAME = "influx"
# A name becomes a Prometheus label value and part of an LMDB key: short, lower case, no
# separator of either (no "/", ":", "." or space), and never starting with a punctuation mark.
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,31}$"
NAME_MAX_CHARS = 32
# The [flush] keys a sink may set for itself; the others ([flush] grace_s, live_first) are the
# gateway's, not a sink's.
FLUSH_OVERRIDES = (
    "batch_floor",
    "batch_ceiling",
    "batch_initial",
    "linger_s",
    "target_latency_s",
    "max_in_flight",
    "retry_initial_s",
    "retry_max_s",
    "probe_interval_s",
    "gzip",
    "max_bytes_per_s",
)

Loc = tuple[str | int, ...]


class SinkSettings(InfluxSettings):
    """`[[sinks]]`: one database the buffer drains into, at its own pace."""

    name: str = Field(pattern=NAME_PATTERN)
    # Past this lag, this sink's oldest readings are released for it alone (counted as skipped
    # for it): a slow far database does not hold the buffer for the near one.
    max_lag_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    # The share of the buffer's capacity this sink's backlog may hold before its oldest
    # readings are released for it alone.
    max_share: float | None = Field(default=None, gt=0, le=1)
    # Unset: as in [flush]. Their bounds are FlushSettings' (checked in `_overrides_in_bounds`).
    batch_floor: int | None = None
    batch_ceiling: int | None = None
    batch_initial: int | None = None
    linger_s: float | None = None
    target_latency_s: float | None = None
    max_in_flight: int | None = None
    retry_initial_s: float | None = None
    retry_max_s: float | None = None
    probe_interval_s: float | None = None
    gzip: bool | None = None
    max_bytes_per_s: float | None = None

    @field_validator("name", mode="before")
    @classmethod
    def _name_is_a_label(cls, name: object) -> object:
        # Before the pattern, whose own message would only repeat the regular expression.
        if isinstance(name, str) and not re.fullmatch(NAME_PATTERN, name):
            shown = name if len(name) <= NAME_MAX_CHARS else name[:NAME_MAX_CHARS] + "..."
            raise ValueError(
                f"{shown!r} is not a sink name: 1 to {NAME_MAX_CHARS} characters of a-z, 0-9, "
                "'_' and '-', starting with a letter or digit (it labels the sink's metrics "
                "and keys its place in the buffer)"
            )
        return name

    @model_validator(mode="after")
    def _overrides_in_bounds(self) -> SinkSettings:
        # Each key alone; their order against [flush]'s (batch_floor <= batch_initial) is
        # checked by `resolve`, which knows [flush].
        try:
            FlushSettings.model_validate(self.flush_overrides())
        except ValidationError as exc:
            own = [err for err in exc.errors() if err["loc"]]
            if own:
                raise relocated(own, ()) from None
        return self

    def flush_overrides(self) -> dict[str, Any]:
        """The `[flush]` keys this sink sets, with their values."""
        return {
            key: getattr(self, key) for key in FLUSH_OVERRIDES if getattr(self, key) is not None
        }


@dataclass(frozen=True, slots=True)
class ResolvedSink:
    """One database as the gateway runs it: where it is, its pace, and its limits."""

    name: str
    influx: InfluxSettings
    flush: FlushSettings
    max_lag_s: float | None = None
    max_share: float | None = None
    # The [flush] keys the sink sets itself, to apply again over a reloaded [flush].
    overrides: tuple[tuple[str, Any], ...] = ()

    @property
    def is_limited(self) -> bool:
        """Whether the sink gives up readings past a lag or a share of the buffer."""
        return self.max_lag_s is not None or self.max_share is not None

    def with_flush(self, flush: FlushSettings) -> FlushSettings:
        """`flush` (a reloaded `[flush]`) under this sink's own keys, as `resolve` made it."""
        if not self.overrides and flush.live_first == self.flush.live_first:
            return flush
        values = {**flush.model_dump(exclude_unset=True), **dict(self.overrides)}
        values["live_first"] = self.flush.live_first
        return FlushSettings.model_validate(values)


def influx_of(sink: SinkSettings) -> InfluxSettings:
    """The `[influx]` part of a sink, without its name, pace and limits."""
    # Values already validated: checked again, the TLS files would be looked for on disk.
    values = {key: getattr(sink, key) for key in InfluxSettings.model_fields}
    return InfluxSettings.model_construct(
        _fields_set=sink.model_fields_set & values.keys(), **values
    )


def resolve(
    influx: InfluxSettings | None, sinks: Sequence[SinkSettings], flush: FlushSettings
) -> list[ResolvedSink]:
    """Every sink as configured, in order, with `[flush]` under its own keys.

    With more than one sink `live_first` is off: each sink reads from its own position in
    every FIFO, and the live readings of one are the backlog of another.

    Raises:
        ValidationError: a sink's keys against `[flush]`'s, located as `sinks.N[.key]`.
    """
    if influx is not None:
        return [ResolvedSink(INFLUX_SINK_NAME, influx, flush)]
    live_first = flush.live_first and len(sinks) == 1
    found: list[ResolvedSink] = []
    problems: list[InitErrorDetails] = []
    for index, sink in enumerate(sinks):
        overrides = sink.flush_overrides()
        if flush.live_first and not live_first:
            overrides["live_first"] = False
        try:
            resolved = FlushSettings.model_validate(
                {**flush.model_dump(exclude_unset=True), **overrides}
            )
        except ValidationError as exc:
            problems += _details(exc.errors(), ("sinks", index), flush, overrides)
            continue
        found.append(
            ResolvedSink(
                sink.name,
                influx_of(sink),
                resolved,
                sink.max_lag_s,
                sink.max_share,
                tuple(sink.flush_overrides().items()),
            )
        )
    if problems:
        raise ValidationError.from_exception_data("Settings", problems)
    return found


def sink_problems(
    influx: InfluxSettings | None, sinks: Sequence[SinkSettings], flush: FlushSettings
) -> list[tuple[Loc, str]]:
    """What is wrong in how the databases are given, each with its key path.

    One spelling ([influx] or [[sinks]]), names of their own, limits only where there is another
    sink to keep pace with, and `live_first` not asked for where it cannot work.
    """
    if influx is not None and sinks:
        return [
            (
                ("sinks",),
                (
                    "give the databases as [influx] (one database) or as [[sinks]] (one or "
                    "more), not both: to add a database, move [influx] into a [[sinks]] table "
                    "with a name"
                ),
            )
        ]
    if influx is None and not sinks:
        return [
            (
                ("influx",),
                "no database: give [influx] for one, or a [[sinks]] table for each of them",
            )
        ]
    problems: list[tuple[Loc, str]] = []
    first_of: dict[str, int] = {}
    for index, sink in enumerate(sinks):
        if sink.name in first_of:
            problems.append(
                (
                    ("sinks", index, "name"),
                    (
                        f"{sink.name!r} is already the name of sinks.{first_of[sink.name]}: "
                        "each sink needs a name of its own"
                    ),
                )
            )
        first_of.setdefault(sink.name, index)
    if len(sinks) == 1:
        only = sinks[0]
        problems += [
            (
                ("sinks", 0, key),
                (
                    "applies with two sinks or more: the only sink has none to keep pace "
                    "with, and this would only release its readings undelivered; remove it"
                ),
            )
            for key in ("max_lag_s", "max_share")
            if getattr(only, key) is not None
        ]
    elif len(sinks) > 1 and flush.live_first and "live_first" in flush.model_fields_set:
        problems.append(
            (
                ("flush", "live_first"),
                (
                    f"works with one sink only, and there are {len(sinks)}: each sink keeps its "
                    "own place in every device's FIFO, so one sink's live readings are "
                    "another's backlog; remove it (with several sinks it is off)"
                ),
            )
        )
    return problems


def located(problems: Sequence[tuple[Loc, str]]) -> ValidationError:
    """One validation error holding each problem at its own key path."""
    return ValidationError.from_exception_data(
        "Settings",
        [
            InitErrorDetails(
                type=PydanticCustomError("sinks", "{message}", {"message": message}),
                loc=loc,
                input=None,
            )
            for loc, message in problems
        ],
    )


def relocated(errors: Sequence[Any], prefix: Loc) -> ValidationError:
    """`errors` (pydantic's error dicts) again, each under `prefix`."""
    return ValidationError.from_exception_data("Settings", _details(errors, prefix))


def _details(
    errors: Sequence[Any],
    prefix: Loc,
    flush: FlushSettings | None = None,
    overrides: dict[str, Any] | None = None,
) -> list[InitErrorDetails]:
    details = []
    for err in errors:
        message = str(err["msg"]).removeprefix("Value error, ")
        if not err["loc"] and flush is not None:
            # A rule between keys: say what each was here, and which came from [flush].
            message += _sources(message, flush, overrides or {})
        details.append(
            InitErrorDetails(
                type=PydanticCustomError(err["type"], "{message}", {"message": message}),
                loc=(*prefix, *err["loc"]),
                input=err.get("input"),
            )
        )
    return details


def _sources(message: str, flush: FlushSettings, overrides: dict[str, Any]) -> str:
    """` (here: key = value, ...)` for each key `message` names, saying which are [flush]'s."""
    spots = {key: re.search(rf"\b{key}\b", message) for key in FLUSH_OVERRIDES}
    named = sorted((key for key, spot in spots.items() if spot), key=message.index)
    if not named:
        return ""
    values = ", ".join(
        f"{key} = {overrides[key]}"
        if key in overrides
        else f"{key} = {getattr(flush, key)} from [flush]"
        for key in named
    )
    return f" (here: {values})"
