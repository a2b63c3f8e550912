"""`[[sinks]]`: one spelling of the databases, names fit for labels, each sink's pace resolved."""

from __future__ import annotations

import tomllib
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import loader as config
from gateway.config.sections import FlushSettings, InfluxSettings
from gateway.config.sinks import FLUSH_OVERRIDES, INFLUX_SINK_NAME
from gateway.errors import ConfigError
from tests.unit.config.test_config import MINIMAL, problems, write

if TYPE_CHECKING:
    from pathlib import Path

    from gateway.config.settings import Settings

# The minimal configuration without its [influx] table.
NO_DATABASE = MINIMAL.split("[influx]")[0] + "[metrics]" + MINIMAL.split("[metrics]")[1]
NEAR = """[[sinks]]
name = "near"
url = "http://127.0.0.1:8086"
api = "v1"
database = "telemetry"
"""
FAR = """[[sinks]]
name = "far"
url = "https://influx.example.com"
api = "v2"
org = "o"
bucket = "b"
"""


def with_sinks(*tables: str, flush: str = "") -> str:
    """The minimal configuration with these [[sinks]] tables in place of [influx]."""
    return NO_DATABASE + (f"\n[flush]\n{flush}\n" if flush else "") + "\n" + "\n".join(tables)


def load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Settings:
    return config.load(write(tmp_path, text), environ or {})


def test_influx_is_one_sink_named_influx(tmp_path: Path) -> None:
    """The [influx] spelling resolves to one sink named "influx" with [flush] as it is."""
    settings = load(tmp_path, MINIMAL)
    (sink,) = settings.resolved_sinks()
    assert sink.name == INFLUX_SINK_NAME == "influx"
    assert sink.influx == settings.influx
    assert sink.flush == settings.flush
    assert sink.flush.live_first is True
    assert (sink.max_lag_s, sink.max_share) == (None, None)
    assert settings.primary_influx == settings.influx
    assert settings.sinks == []


def test_several_sinks_resolve_in_order_with_their_own_pace(tmp_path: Path) -> None:
    """Each sink takes its own [flush] keys and [flush]'s for the rest; live_first is off."""
    text = with_sinks(
        NEAR + "batch_initial = 200\n",
        FAR + "linger_s = 10.0\ngzip = false\nmax_bytes_per_s = 20000\nmax_lag_s = 86400\n"
        "max_share = 0.5\n",
        flush="linger_s = 2.0\nbatch_floor = 50",
    )
    settings = load(tmp_path, text)
    near, far = settings.resolved_sinks()
    assert (near.name, far.name) == ("near", "far")
    assert (near.flush.batch_initial, near.flush.linger_s, near.flush.batch_floor) == (200, 2.0, 50)
    assert (far.flush.batch_initial, far.flush.linger_s, far.flush.batch_floor) == (1000, 10.0, 50)
    assert (near.flush.gzip, far.flush.gzip) == (True, False)
    assert (near.flush.max_bytes_per_s, far.flush.max_bytes_per_s) == (None, 20000)
    assert not near.flush.live_first
    assert not far.flush.live_first
    assert settings.flush.live_first, "[flush] itself is as written"
    assert (near.max_lag_s, near.max_share, far.max_lag_s, far.max_share) == (
        None,
        None,
        86400,
        0.5,
    )
    assert settings.influx is None


def test_a_resolved_sink_holds_only_the_influx_keys(tmp_path: Path) -> None:
    """Its `influx` is a plain InfluxSettings of the sink's database, secrets and all."""
    settings = load(tmp_path, with_sinks(NEAR, FAR), {"GATEWAY__SINKS__1__TOKEN": "far-t0ken-x"})
    near, far = settings.resolved_sinks()
    assert type(far.influx) is InfluxSettings
    assert set(far.influx.model_dump()) == set(InfluxSettings.model_fields)
    assert (far.influx.url, far.influx.api, far.influx.bucket) == (
        "https://influx.example.com",
        "v2",
        "b",
    )
    assert far.influx.token is not None
    assert far.influx.token.get_secret_value() == "far-t0ken-x"
    assert near.influx.token is None
    assert settings.primary_influx == near.influx
    assert settings.primary_influx.database == "telemetry"


def test_one_sink_keeps_live_first_and_its_overrides(tmp_path: Path) -> None:
    """A single [[sinks]] table is one database: live_first as in [flush], its keys its own."""
    settings = load(tmp_path, with_sinks(NEAR + "max_in_flight = 8\n", flush="live_first = true"))
    (near,) = settings.resolved_sinks()
    assert near.flush.live_first
    assert near.flush.max_in_flight == 8
    assert settings.flush.max_in_flight == 4


def test_both_spellings_are_refused(tmp_path: Path) -> None:
    """[influx] and [[sinks]] together: one problem naming sinks, saying how to move."""
    (found,) = problems(tmp_path, MINIMAL + "\n" + NEAR)
    assert found == (
        "sinks: give the databases as [influx] (one database) or as [[sinks]] (one or more), "
        "not both: to add a database, move [influx] into a [[sinks]] table with a name"
    )


@pytest.mark.parametrize("extra", ["", "sinks = []\n"])
def test_no_database_is_refused(tmp_path: Path, extra: str) -> None:
    """Neither [influx] nor a [[sinks]] table: one problem naming both ways."""
    text = extra + NO_DATABASE
    assert problems(tmp_path, text) == [
        "influx: no database: give [influx] for one, or a [[sinks]] table for each of them"
    ]


def test_a_duplicate_name_names_the_later_table(tmp_path: Path) -> None:
    """Names label metrics and buffer keys: the second table of a name is the error."""
    text = with_sinks(NEAR, FAR, NEAR.replace('"telemetry"', '"other"'))
    assert problems(tmp_path, text) == [
        "sinks.2.name: 'near' is already the name of sinks.0: each sink needs a name of its own"
    ]


@pytest.mark.parametrize(
    "name", ["Near", "_near", "-near", "near.far", "near far", "n/f", "nëar", "", "a" * 33]
)
def test_a_name_unfit_for_a_label_is_refused(tmp_path: Path, name: str) -> None:
    """Upper case, a leading '_' or '-', separators, non-ASCII, empty or 33 long: refused."""
    (found,) = problems(tmp_path, with_sinks(NEAR, FAR.replace('"far"', f'"{name}"')))
    assert found.startswith(f"sinks.1.name: '{name[:32]}")
    assert "1 to 32 characters of a-z, 0-9, '_' and '-', starting with a letter or digit" in found


@pytest.mark.parametrize("name", ["a", "0", "far_1-b", "9" * 32])
def test_a_name_fit_for_a_label_is_taken(tmp_path: Path, name: str) -> None:
    """One to 32 of a-z, 0-9, '_' and '-', first a letter or digit: taken as written."""
    settings = load(tmp_path, with_sinks(NEAR, FAR.replace('"far"', f'"{name}"')))
    assert [sink.name for sink in settings.resolved_sinks()] == ["near", name]


def test_a_sink_without_a_name_is_named(tmp_path: Path) -> None:
    """A [[sinks]] table must have a name."""
    assert problems(tmp_path, with_sinks(NEAR, FAR.replace('name = "far"\n', ""))) == [
        "sinks.1.name: required key is missing"
    ]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("batch_floor", "0"),
        ("batch_ceiling", "-1"),
        ("batch_initial", "0"),
        ("linger_s", "0"),
        ("target_latency_s", "-0.5"),
        ("max_in_flight", "65"),
        ("max_in_flight", "0"),
        ("retry_initial_s", "0"),
        ("retry_max_s", "0"),
        ("probe_interval_s", "61"),
        ("gzip", '"often"'),
        ("max_bytes_per_s", "0"),
        ("linger_s", '"soon"'),
    ],
)
def test_an_override_out_of_bounds_says_what_flush_says(
    tmp_path: Path, key: str, value: str
) -> None:
    """The sink's key is checked by [flush]'s own rule, and the problem names `sinks.N.key`."""
    (in_flush,) = problems(tmp_path, MINIMAL + f"\n[flush]\n{key} = {value}\n")
    (in_sink,) = problems(tmp_path, with_sinks(NEAR, FAR + f"{key} = {value}\n"))
    assert in_flush.startswith(f"flush.{key}: ")
    assert in_sink == in_flush.replace(f"flush.{key}: ", f"sinks.1.{key}: ")


def test_overrides_keep_flushs_order_of_batch_sizes(tmp_path: Path) -> None:
    """batch_floor <= batch_initial <= batch_ceiling across the sink's keys and [flush]'s."""
    (found,) = problems(tmp_path, with_sinks(NEAR, FAR + "batch_floor = 2000\n"))
    assert found == (
        "sinks.1: need batch_floor <= batch_initial <= batch_ceiling (here: batch_floor = 2000, "
        "batch_initial = 1000 from [flush], batch_ceiling = 10000 from [flush])"
    )
    fixed = load(tmp_path, with_sinks(NEAR, FAR + "batch_floor = 2000\nbatch_initial = 3000\n"))
    assert fixed.resolved_sinks()[1].flush.batch_floor == 2000
    text = with_sinks(NEAR + "batch_ceiling = 500\n", FAR, flush="batch_floor = 600")
    (found,) = problems(tmp_path, text)
    assert found == (
        "sinks.0: need batch_floor <= batch_initial <= batch_ceiling (here: batch_floor = 600 "
        "from [flush], batch_initial = 1000 from [flush], batch_ceiling = 500)"
    )
    text = with_sinks(NEAR + "batch_ceiling = 500\n", FAR, flush="batch_floor = 2000")
    (found,) = problems(tmp_path, text)
    assert found.startswith("flush: need batch_floor <= batch_initial"), "[flush]'s own first"


def test_live_first_set_true_with_several_sinks_is_refused(tmp_path: Path) -> None:
    """An explicit live_first = true with two sinks, from the file or the environment."""
    (found,) = problems(tmp_path, with_sinks(NEAR, FAR, flush="live_first = true"))
    assert found.startswith("flush.live_first: works with one sink only, and there are 2: ")
    (from_env,) = problems(tmp_path, with_sinks(NEAR, FAR), {"GATEWAY__FLUSH__LIVE_FIRST": "true"})
    assert from_env.startswith("flush.live_first: works with one sink only")
    assert from_env.endswith("(from GATEWAY__FLUSH__LIVE_FIRST)")


def test_live_first_unset_or_false_with_several_sinks_is_off(tmp_path: Path) -> None:
    """Not set, or set false: every sink resolves with live_first off."""
    for flush in ("", "live_first = false"):
        settings = load(tmp_path, with_sinks(NEAR, FAR, flush=flush))
        assert [sink.flush.live_first for sink in settings.resolved_sinks()] == [False, False]


@pytest.mark.parametrize("key", ["max_lag_s", "max_share"])
def test_a_limit_on_the_only_sink_is_refused(tmp_path: Path, key: str) -> None:
    """With nothing to keep pace with, a limit would only lose readings: say so."""
    (found,) = problems(tmp_path, with_sinks(NEAR + f"{key} = 0.5\n"))
    assert found == (
        f"sinks.0.{key}: applies with two sinks or more: the only sink has none to keep pace "
        "with, and this would only release its readings undelivered; remove it"
    )
    far = load(tmp_path, with_sinks(NEAR, FAR + f"{key} = 0.5\n")).resolved_sinks()[1]
    assert getattr(far, key) == 0.5, "with two sinks it applies"
    assert problems(tmp_path, MINIMAL.replace("[influx]\n", f"[influx]\n{key} = 0.5\n")) == [
        f"influx.{key}: unknown key"
    ]


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("max_lag_s", "0", "Input should be greater than 0"),
        ("max_lag_s", "inf", "Input should be a finite number"),
        ("max_lag_s", "nan", "Input should be a finite number"),
        ("max_share", "0", "Input should be greater than 0"),
        ("max_share", "1.5", "Input should be less than or equal to 1"),
    ],
)
def test_limits_out_of_bounds_are_named(
    tmp_path: Path, key: str, value: str, expected: str
) -> None:
    """max_lag_s > 0 and finite, max_share in (0, 1]: otherwise named by key."""
    assert problems(tmp_path, with_sinks(NEAR, FAR + f"{key} = {value}\n")) == [
        f"sinks.1.{key}: {expected}"
    ]


def test_the_database_keys_of_a_sink_are_checked_as_influxs(tmp_path: Path) -> None:
    """The [influx] rules hold in a sink, named by its path; a typo gets the nearest key."""
    assert problems(tmp_path, with_sinks(NEAR, FAR.replace('bucket = "b"\n', ""))) == [
        "sinks.1: api 'v2' needs bucket"
    ]
    assert problems(tmp_path, with_sinks(NEAR, FAR.replace("name =", "nmae ="))) == [
        "sinks.1.name: required key is missing",
        "sinks.1.nmae: unknown key; did you mean 'name'?",
    ]
    (found,) = problems(tmp_path, with_sinks(NEAR, FAR), {"GATEWAY__SINKS__1__URL": "ftp://x"})
    assert found == "sinks.1.url: must start with http:// or https:// (from GATEWAY__SINKS__1__URL)"


def test_every_problem_of_every_sink_is_named_at_once(tmp_path: Path) -> None:
    """Two sinks with bad keys: both named in one run of check-config."""
    text = with_sinks(NEAR + "linger_s = 0\n", FAR + "max_in_flight = 99\n")
    found = problems(tmp_path, text)
    assert [p.split(":")[0] for p in found] == ["sinks.0.linger_s", "sinks.1.max_in_flight"]


BOUNDED = {
    "batch_floor": st.integers(1, 5000),
    "batch_ceiling": st.integers(1, 20000),
    "batch_initial": st.integers(1, 10000),
    "linger_s": st.floats(0.01, 100),
    "target_latency_s": st.floats(0.01, 10),
    "max_in_flight": st.integers(1, 64),
    "retry_initial_s": st.floats(0.01, 10),
    "retry_max_s": st.floats(0.01, 300),
    "probe_interval_s": st.floats(0.01, 60),
    "gzip": st.booleans(),
    "max_bytes_per_s": st.floats(1, 1e9),
}
RAW: dict[str, Any] = tomllib.loads(NO_DATABASE)


def raw_with(flush: dict[str, Any], *sinks: dict[str, Any]) -> dict[str, Any]:
    return {**RAW, "flush": flush, "sinks": list(sinks)}


@given(
    sizes=st.lists(st.integers(1, 10000), min_size=3, max_size=3).map(sorted),
    live_first=st.none() | st.booleans(),
    overrides=st.fixed_dictionaries({}, optional=BOUNDED),
)
def test_a_sink_takes_its_keys_and_flushs_for_the_rest(
    sizes: list[int], live_first: bool | None, overrides: dict[str, Any]
) -> None:
    """Each resolved key is the sink's where set, else [flush]'s; a bad order is its one error."""
    assert set(BOUNDED) == set(FLUSH_OVERRIDES)
    flush: dict[str, Any] = dict(
        zip(("batch_floor", "batch_initial", "batch_ceiling"), sizes, strict=True)
    )
    if live_first is not None:
        flush["live_first"] = live_first
    near = {"name": "near", "api": "v1", "database": "t", **overrides}
    far = {"name": "far", "api": "v1", "database": "t"}
    merged = FlushSettings.model_validate(flush).model_dump() | overrides
    in_order = merged["batch_floor"] <= merged["batch_initial"] <= merged["batch_ceiling"]
    raw = raw_with(flush, near, far)
    if live_first:
        with pytest.raises(ConfigError) as refused:
            config.validate(raw)
        assert refused.value.problems[0].startswith("flush.live_first: works with one sink only")
        return
    if not in_order:
        with pytest.raises(ConfigError) as refused:
            config.validate(raw)
        (problem,) = refused.value.problems
        assert problem.startswith("sinks.0: need batch_floor <= batch_initial <= batch_ceiling")
        return
    resolved_near, resolved_far = config.validate(raw).resolved_sinks()
    assert resolved_near.flush.model_dump() == merged | {"live_first": False}
    assert resolved_far.flush.model_dump() == FlushSettings.model_validate(flush).model_dump() | {
        "live_first": False
    }
