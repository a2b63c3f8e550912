r"""The text of the queries a cache miss sends, with a device name that stays a value.

A device name comes from the URL of `/api/v1/devices/{device}/latest`: anyone who reaches the
API chooses it, so it must never change the structure of a query.
- InfluxQL (InfluxDB 1.x): the name is a bound parameter (`$device`, sent in `params`), not
  query text at all.
- Flux: InfluxDB 2 OSS does not take bound parameters (`params` in `/api/v2/query` is InfluxDB
  Cloud's; the OSS API schema dropped it, influxdata/docs-v2#5325), so the name is a string
  literal escaped by the Flux rules: `\\`, `\"`, and `\${`, because Flux interpolates `${...}`
  inside a string literal and would evaluate an expression hidden in a device name.
- PromQL/MetricsQL (VictoriaMetrics): a double-quoted label value with Go's escapes; JSON's
  string escapes are a subset of Go's, so control characters and quotes cannot end it early.
"""

from __future__ import annotations

import json

DEVICE_TAG = "device"
# The bound parameter's name in the InfluxQL query.
DEVICE_PARAM = "device"


def flux_string(text: str) -> str:
    """`text` as a Flux string literal (quotes included) that evaluates to exactly `text`."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${")
    return f'"{escaped}"'


def flux_query(bucket: str, device: str, lookback_days: int) -> str:
    """The newest point of each series of `device` in `bucket`, in Flux."""
    return (
        f"from(bucket: {flux_string(bucket)})"
        f" |> range(start: -{int(lookback_days)}d)"
        f" |> filter(fn: (r) => r.{DEVICE_TAG} == {flux_string(device)})"
        " |> last()"
    )


def influxql_query(lookback_days: int) -> str:
    """The newest point of each series of the device bound to `$device`, in InfluxQL."""
    # Constants only: the device is bound, never formatted in.
    return (
        f'SELECT * FROM /.*/ WHERE "{DEVICE_TAG}" = ${DEVICE_PARAM} '  # noqa: S608
        f"AND time > now() - {int(lookback_days)}d GROUP BY * ORDER BY time DESC LIMIT 1"
    )


def influxql_params(device: str) -> str:
    """The `params` form value that binds `$device` (a JSON object)."""
    return json.dumps({DEVICE_PARAM: device})


def promql_selector(device: str, lookback_days: int) -> str:
    """The range selector of every series of `device`, for `last_over_time` and the like."""
    # ensure_ascii=False: Go refuses the \\u escape of a lone UTF-16 surrogate that JSON would
    # write for a character beyond the BMP; UTF-8 text passes through a Go string as it is.
    return f"{{{DEVICE_TAG}={json.dumps(device, ensure_ascii=False)}}}[{int(lookback_days)}d]"
