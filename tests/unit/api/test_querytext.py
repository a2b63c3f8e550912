r"""The query text of a cache miss: any device name stays one value and never changes the query.

The Flux reader here follows the string-literal rules of the Flux specification (escapes `\\`,
`\"`, `\${`, `\n`, `\r`, `\t`, `\xHH`; an unescaped `${` opens an interpolation), so a literal
that reads back as the device and ends where the query expects it has no room for an expression.
"""

from __future__ import annotations

import json

from hypothesis import example, given
from hypothesis import strategies as st

from gateway.api.core import querytext

ANY_TEXT = st.text(st.characters(exclude_categories=("Cs",)))
_FLUX_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", '"': '"', "$": "$"}


class InterpolationError(AssertionError):
    """The literal holds an `${...}` that Flux would evaluate."""


def read_flux_string(text: str, start: int) -> tuple[str, int]:
    """The value of the Flux string literal at `text[start]` and the index just past it."""
    assert text[start] == '"'
    out, i = [], start + 1
    while text[i] != '"':
        if text[i] == "\\":
            if text[i + 1] == "x":
                out.append(chr(int(text[i + 2 : i + 4], 16)))
                i += 4
                continue
            assert text[i + 1] in _FLUX_ESCAPES, f"unknown escape at {i}"
            if text[i + 1] == "$":
                assert text[i + 2] == "{", "\\$ is an escape only before {"
            out.append(_FLUX_ESCAPES[text[i + 1]])
            i += 2
        elif text.startswith("${", i):
            raise InterpolationError(text[i:])
        else:
            out.append(text[i])
            i += 1
    return "".join(out), i + 1


@given(ANY_TEXT)
@example("${r._value}")
@example('"} |> drop() //')
@example("\\${x}")
@example("$$${")
@example("\\")
def test_any_text_round_trips_as_a_flux_string_literal(device: str) -> None:
    """The literal reads back as exactly the text, ends where it should, interpolates nothing."""
    literal = querytext.flux_string(device)
    assert read_flux_string(literal, 0) == (device, len(literal))


@given(ANY_TEXT, ANY_TEXT, st.integers(1, 10_000))
@example("b", '") |> yield() from(bucket: "other', 7)
def test_the_flux_query_keeps_its_structure_whatever_the_names(
    bucket: str, device: str, days: int
) -> None:
    """Outside the two literals the query is the fixed text; inside them, the names."""
    query = querytext.flux_query(bucket, device, days)
    head = "from(bucket: "
    assert query.startswith(head)
    read_bucket, at = read_flux_string(query, len(head))
    middle = f") |> range(start: -{days}d) |> filter(fn: (r) => r.device == "
    assert query[at : at + len(middle)] == middle
    read_device, end = read_flux_string(query, at + len(middle))
    assert (read_bucket, read_device) == (bucket, device)
    assert query[end:] == ")" + " |> last()"


@given(ANY_TEXT)
@example("x' OR 1=1 --")
def test_influxql_binds_the_device_instead_of_quoting_it(device: str) -> None:
    """The InfluxQL text names no device, only `$device`; the name travels in `params`."""
    assert "= $device AND" in querytext.influxql_query(30)
    assert "'" not in querytext.influxql_query(30)
    assert json.loads(querytext.influxql_params(device)) == {"device": device}


@given(ANY_TEXT)
@example('a"} or vector(1) #')
@example("line\nbreak")
def test_the_promql_label_value_reads_back_as_the_device(device: str) -> None:
    """The label value is a Go-compatible quoted string that ends just before `}`."""
    selector = querytext.promql_selector(device, 3)
    head = "{device="
    assert selector.startswith(head)
    assert selector.endswith("}[3d]")
    quoted = selector[len(head) : -len("}[3d]")]
    # JSON's escapes are a subset of Go's; a raw newline (which Go refuses) never appears.
    assert "\n" not in quoted
    assert json.loads(quoted) == device
