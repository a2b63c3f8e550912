r"""Which names and values line protocol can carry exactly (DESIGN invariant 7): the checks.

Identifiers (measurement, tag keys and values, field keys) must be non-empty, within the
configured length, free of control characters, and free of a backslash that the database would
read as an escape (before a delimiter, another backslash, or at the end): InfluxDB 1.x does not
unescape `\\` in identifiers, so such names cannot be stored exactly and are refused instead of
altered. Every name and string value must have a UTF-8 form. Encoding is gateway/points/
lineproto.py, which assumes these checks passed.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

from gateway.errors import DecodeError

if TYPE_CHECKING:
    from gateway.points.model import FieldValue, Reading

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Names the databases reserve: InfluxDB 1.x refuses a "time" key, 2.x the underscore names of Flux.
RESERVED_KEYS = frozenset({"time", "_measurement", "_field", "_value", "_time", "_start", "_stop"})
# Names repeat in every reading (field keys, tag values such as device ids), so those found valid
# are remembered; bounded, because hostile input can invent names without end.
VALID_NAME_CACHE_SIZE = 50_000

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_AMBIGUOUS_BACKSLASH = re.compile(r"\\(?=[\\, =\"]|$)")


class Names:
    """The name rules under one `[limits] max_identifier_len`, with the names found valid."""

    def __init__(self, max_len: int) -> None:
        """`max_len`: the longest identifier accepted."""
        self.max_len = max_len
        self._valid: set[str] = set()

    def check(self, kind: str, name: str) -> None:
        """Refuse a name that cannot be written exactly.

        Raises:
            DecodeError: naming what is wrong with it.
        """
        if name in self._valid:
            return
        if not name:
            raise DecodeError("empty_name", f"{kind} is empty")
        if len(name) > self.max_len:
            raise DecodeError("name_too_long", f"{kind} is longer than {self.max_len}")
        if _CONTROL.search(name):
            raise DecodeError("control_character", f"{kind} {name!r} holds a control character")
        check_text(kind, name)
        if _AMBIGUOUS_BACKSLASH.search(name):
            raise DecodeError(
                "ambiguous_backslash",
                f"{kind} {name!r} holds a backslash the database would read as an escape",
            )
        if len(self._valid) >= VALID_NAME_CACHE_SIZE:
            self._valid.clear()
        self._valid.add(name)

    def check_series(self, measurement: str, tags: tuple[tuple[str, str], ...]) -> None:
        """Refuse a measurement and tag set that cannot be written exactly.

        Raises:
            DecodeError: naming the offending part.
        """
        self.check("measurement", measurement)
        if measurement.startswith("#"):
            raise DecodeError("comment_measurement", "a measurement starting with '#' is a comment")
        self.check_tags(tags)

    def check_tags(self, tags: tuple[tuple[str, str], ...]) -> None:
        """Refuse tag keys and values that cannot be written exactly.

        Raises:
            DecodeError: naming the offending tag.
        """
        for key, value in tags:
            self.check("tag key", key)
            if key in RESERVED_KEYS:
                raise DecodeError("reserved_name", f"tag key {key!r} is reserved by the database")
            self.check(f"tag {key!r} value", value)

    def check_fields(
        self,
        reading: Reading,
        tag_keys: frozenset[str] | None = None,
        max_string_len: int | None = None,
    ) -> None:
        """Refuse fields that cannot be written exactly (the series is `check_series`'s).

        `tag_keys` are the reading's tag keys, when the caller knows them already; strings
        longer than `max_string_len` are refused (in this loop: it runs for every reading).
        Repeated field keys are refused where they can arise, in line parsing and in renaming:
        JSON objects cannot repeat a key, and a set per reading here would cost every format.

        Raises:
            DecodeError: naming the offending field.
        """
        valid = self._valid
        if not reading.fields:
            raise DecodeError("no_fields", "the reading has no field")
        if tag_keys is None:
            tag_keys = frozenset(key for key, _ in reading.tags)
        for key, field_value in reading.fields:
            if key not in valid:
                self.check("field key", key)
            if key in RESERVED_KEYS:
                raise DecodeError("reserved_name", f"field key {key!r} is reserved by the database")
            if key in tag_keys:
                raise DecodeError("field_is_tag", f"field {key!r} has the name of a tag")
            # A finite float (most values) is fine as it is: x - x is 0.0 only when x is finite.
            if type(field_value) is not float or field_value - field_value != 0.0:
                check_field_value(key, field_value)
                if (
                    max_string_len is not None
                    and type(field_value) is str
                    and len(field_value) > max_string_len
                ):
                    raise DecodeError(
                        "string_too_long", f"field {key!r} is longer than {max_string_len}"
                    )
        if not INT64_MIN <= reading.ts_ns <= INT64_MAX:
            raise DecodeError("timestamp_out_of_range", "timestamp does not fit in 64-bit ns")


def check_text(kind: str, text: str) -> None:
    r"""Refuse text that has no UTF-8 form: a lone surrogate, which a JSON `\ud800` escape makes.

    Python's `str` holds such code points, but a write body is UTF-8 bytes: unchecked, one
    would fail the encoding at the buffer, after the message was taken.

    Raises:
        DecodeError: naming where the text came from.
    """
    if text.isascii():
        return
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        raise DecodeError(
            "not_unicode", f"{kind} holds U+{ord(text[exc.start]):04X}, which UTF-8 cannot carry"
        ) from None


def check_field_value(key: str, value: FieldValue) -> None:
    """Refuse a value the database cannot store.

    Raises:
        DecodeError: naming the field.
    """
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise DecodeError("integer_out_of_range", f"field {key!r} does not fit in 64 bits")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise DecodeError("not_finite", f"field {key!r} is NaN or infinite")
    elif isinstance(value, str):
        if "\n" in value or "\r" in value:
            raise DecodeError("control_character", f"field {key!r} holds a line break")
        check_text(f"field {key!r}", value)
    else:
        raise DecodeError("bad_value_type", f"field {key!r} is a {type(value).__name__}")
