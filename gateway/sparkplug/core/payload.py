"""Sparkplug B payloads: protobuf in, typed metric values out, and the payloads the gateway sends.

Why the `protobuf` package and a `.proto` of our own (sparkplug_b.proto, compiled by protoc):
the specification defines the payload as that schema, protobuf's C parser (upb) checks
wire types and nesting depth for us, and the Python Sparkplug packages on PyPI either pin
paho-mqtt 1.x, which the gateway's own client cannot share a process with, or ship no schema.

Values follow the specification's data types. Encoders disagree on signed integers narrower
than 64 bits: some send Int8 -1 as 255 (two's complement in the type's width), others as
4294967295 (in the 32-bit field's width); both read as -1 here.
"""

from __future__ import annotations

import math
import zlib
from typing import TYPE_CHECKING, Any, TypeAlias

from google.protobuf.message import DecodeError as ProtobufDecodeError

from gateway.errors import DecodeError
from gateway.sparkplug.core.sparkplug_b_pb2 import (  # type: ignore[attr-defined,unused-ignore]
    DataType,
    Payload,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

    from gateway.points.model import FieldValue

__all__ = ["DataType", "Payload", "compress", "encode", "parse", "rebirth_request", "value_of"]
# protobuf's generated classes carry no type hints: a payload and a metric, as annotations.
Message: TypeAlias = Any
Metric: TypeAlias = Any

SIGNED_BITS: dict[int, int] = {
    DataType.Int8: 8,
    DataType.Int16: 16,
    DataType.Int32: 32,
    DataType.Int64: 64,
}
UNSIGNED_BITS: dict[int, int] = {
    DataType.UInt8: 8,
    DataType.UInt16: 16,
    DataType.UInt32: 32,
    DataType.UInt64: 64,
}
FLOATS = frozenset({int(DataType.Float), int(DataType.Double)})
TEXTS = frozenset({int(DataType.String), int(DataType.Text), int(DataType.UUID)})
# What becomes a field: the scalar types. DataSet, Template, Bytes, File, the property sets and
# the arrays are counted as unsupported.
SUPPORTED = frozenset(
    {*SIGNED_BITS, *UNSIGNED_BITS, *FLOATS, *TEXTS, DataType.Boolean, DataType.DateTime}
)
# Plain ints: an attribute of protobuf's enum wrapper costs a call every time it is read.
BOOLEAN: int = DataType.Boolean
FLOAT: int = DataType.Float
# Carried in `long_value`; the other integers in `int_value`.
LONG_TYPES = frozenset({int(DataType.Int64), int(DataType.UInt64), int(DataType.DateTime)})
# InfluxDB's integers are signed 64-bit.
INT64_MAX = (1 << 63) - 1
# A compressed payload (Sparkplug 3.0): this uuid, the compressed payload in `body`, and the
# algorithm in a metric "algorithm" (DEFLATE when absent, or GZIP).
COMPRESSED_UUID = "SPBV1.0_COMPRESSED"
# zlib's window bits that take a zlib or a gzip stream, whichever the header says.
ZLIB_OR_GZIP = zlib.MAX_WBITS | 32
REBIRTH_METRIC = "Node Control/Rebirth"
BD_SEQ_METRIC = "bdSeq"


def parse(payload: bytes, max_bytes: int) -> Message:
    """The payload's message; a compressed one is inflated to at most `max_bytes`.

    Raises:
        DecodeError: not a Sparkplug B payload (protobuf's parser refuses it, or nests
            deeper than its recursion limit), a compression this gateway does not read, or an
            inflated payload over `max_bytes` (a compression bomb).
    """
    message = _parse(payload)
    if message.uuid == COMPRESSED_UUID:
        message = _parse(_inflate(message, max_bytes))
        if message.uuid == COMPRESSED_UUID:
            raise DecodeError("sparkplug_bad_compression", "a compressed payload inside another")
    return message


def _parse(payload: bytes) -> Message:
    message = Payload()
    try:
        message.ParseFromString(payload)
    except (ProtobufDecodeError, RecursionError, ValueError) as exc:
        raise DecodeError("sparkplug_bad_protobuf", f"not a Sparkplug B payload: {exc}") from None
    return message


def _inflate(message: Message, max_bytes: int) -> bytes:
    algorithm = next((m.string_value for m in message.metrics if m.name == "algorithm"), "DEFLATE")
    if not isinstance(algorithm, str) or algorithm.upper() not in {"DEFLATE", "GZIP"}:
        raise DecodeError(
            "sparkplug_bad_compression", f"compression {str(algorithm)[:40]!r} is not read"
        )
    inflater = zlib.decompressobj(ZLIB_OR_GZIP)
    try:
        inflated = inflater.decompress(message.body, max_bytes + 1)
    except zlib.error as exc:
        raise DecodeError("sparkplug_bad_compression", f"body does not inflate: {exc}") from None
    if len(inflated) > max_bytes:
        raise DecodeError(
            "payload_too_large", f"inflates to more than {max_bytes} bytes ([limits])"
        )
    return inflated


def _raw_number(metric: Metric) -> int | float | bool | str | None:
    which = metric.WhichOneof("value")
    return None if which is None else getattr(metric, which)


def value_of(metric: Metric, datatype: int) -> FieldValue:
    """The field value of a metric of `datatype`.

    Raises:
        DecodeError: a null value, a type this gateway does not write, or a value that does
            not fit its type.
    """
    if metric.is_null:
        raise DecodeError("sparkplug_null_value", f"metric {metric.name!r} is null")
    if datatype not in SUPPORTED:
        name = DataType.Name(datatype) if datatype in DataType.values() else str(datatype)
        raise DecodeError(
            "sparkplug_unsupported_type", f"metric {metric.name!r} of type {name} is not written"
        )
    raw = _raw_number(metric)
    if raw is None:
        raise DecodeError("sparkplug_bad_value", f"metric {metric.name!r} carries no value")
    value = _typed(raw, datatype)
    if value is None:
        raise DecodeError(
            "sparkplug_bad_value",
            f"metric {metric.name!r}: {raw!r} is not a {DataType.Name(datatype)}",
        )
    return value


def _typed(raw: float | bool | str, datatype: int) -> FieldValue | None:  # noqa: PLR0911
    if datatype in TEXTS:
        return raw if isinstance(raw, str) else None
    if datatype == BOOLEAN:
        return raw if isinstance(raw, bool) else None
    if datatype in FLOATS:
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            return None
        number = float(raw)
        return number if math.isfinite(number) else None
    if isinstance(raw, bool) or not isinstance(raw, int):
        return None
    if datatype in SIGNED_BITS:
        return _signed(raw, SIGNED_BITS[datatype])
    bits = UNSIGNED_BITS.get(datatype, 64)
    return raw if raw < (1 << bits) and raw <= INT64_MAX else None  # DateTime: 64 bits


def _signed(raw: int, bits: int) -> int | None:
    half = 1 << (bits - 1)
    if raw >= 1 << 63:  # two's complement in 64 bits
        raw -= 1 << 64
    elif bits < 32 and raw >= 1 << 31:  # noqa: PLR2004 - in the 32-bit field's width
        raw -= 1 << 32
    elif half <= raw < 2 * half:  # in the type's own width
        raw -= 2 * half
    return raw if -half <= raw < half else None


def compress(payload: bytes, algorithm: str | None = None) -> bytes:
    """`payload` as a compressed Sparkplug B payload, as edge nodes that compress send it."""
    gzip = algorithm == "GZIP"
    compressor = zlib.compressobj(wbits=16 + zlib.MAX_WBITS if gzip else zlib.MAX_WBITS)
    message = Payload(uuid=COMPRESSED_UUID, body=compressor.compress(payload) + compressor.flush())
    if algorithm is not None:
        message.metrics.add(name="algorithm", datatype=DataType.String, string_value=algorithm)
    encoded: bytes = message.SerializeToString()
    return encoded


def rebirth_request(now_ms: int) -> bytes:
    """An NCMD payload asking an edge node to publish its BIRTH messages again."""
    return encode(now_ms, [(REBIRTH_METRIC, None, DataType.Boolean, True, None)])


def encode(
    timestamp_ms: int,
    metrics: Iterable[tuple[str | None, int | None, int | None, FieldValue, int | None]],
    seq: int | None = None,
) -> bytes:
    """A payload of (name, alias, datatype, value, timestamp ms) metrics; None leaves one out.

    What edge nodes send, for the gateway's rebirth requests, its benchmark and its tests.
    """
    message = Payload(timestamp=timestamp_ms)
    if seq is not None:
        message.seq = seq
    for name, alias, datatype, value, ts in metrics:
        metric = message.metrics.add()
        if name is not None:
            metric.name = name
        if alias is not None:
            metric.alias = alias
        if datatype is not None:
            metric.datatype = datatype
        if ts is not None:
            metric.timestamp = ts
        _set_value(metric, datatype, value)
    encoded: bytes = message.SerializeToString()
    return encoded


def _set_value(metric: Metric, datatype: int | None, value: FieldValue) -> None:
    if isinstance(value, bool):
        metric.boolean_value = value
    elif isinstance(value, str):
        metric.string_value = value
    elif isinstance(value, float):
        if datatype == FLOAT:
            metric.float_value = value
        else:
            metric.double_value = value
    elif datatype in LONG_TYPES:
        metric.long_value = value % (1 << 64)
    else:
        metric.int_value = value % (1 << 32)
