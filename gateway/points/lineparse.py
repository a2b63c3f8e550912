"""Reading InfluxDB line protocol sent by sensors (payload format `line`).

Only the syntax is checked here; gateway/points/names.py then applies the same rules as to every
other reading, so a line cannot smuggle in what a JSON payload could not.
"""

from __future__ import annotations

import re

from gateway.errors import DecodeError
from gateway.points.model import FieldValue

_INT = re.compile(r"[+-]?\d+[iu]")
# Unambiguous, so a long run of digits cannot make the match backtrack quadratically.
# Over these characters `float` reads exactly the line protocol's decimal numbers (no `inf`,
# `nan`, underscores or spaces), faster than a pattern would check them first.
_FLOAT_CHARS = "0123456789+-.eE"
# Significant digits of the longest 64-bit integer; `int` itself raises beyond 4,300.
INT64_DIGITS = 19
_TRUE = frozenset({"t", "T", "true", "True", "TRUE"})
_FALSE = frozenset({"f", "F", "false", "False", "FALSE"})

ParsedLine = tuple[str, list[tuple[str, str]], list[tuple[str, FieldValue]], int | None]


def parse_lines(text: str) -> list[ParsedLine]:
    """Parse every non-blank, non-comment line into (measurement, tags, fields, timestamp).

    Raises:
        DecodeError: for the first malformed line, naming its number.
    """
    parsed = []
    for number, line in enumerate(text.split("\n"), start=1):
        stripped = line.strip(" \t\r")
        if not stripped or stripped.startswith("#"):
            continue
        try:
            parsed.append(_parse_line(stripped))
        except DecodeError as exc:
            raise DecodeError(exc.reason, f"line {number}: {exc.detail}") from None
    return parsed


def _parse_line(line: str) -> ParsedLine:
    measurement, pos = _scan_name(line, 0, ", ")
    if not measurement:
        raise DecodeError("bad_line", "no measurement")
    tags: list[tuple[str, str]] = []
    while pos < len(line) and line[pos] == ",":
        key, pos = _scan_name(line, pos + 1, ",= ")
        pos = _expect(line, pos, "=", "tag")
        value, pos = _scan_name(line, pos, ",= ")
        tags.append((key, value))
    fields, pos = _scan_fields(line, _expect(line, pos, " ", "fields"))
    if len(fields) > 1 and len({key for key, _ in fields}) < len(fields):
        # The database would keep one of them: refused rather than silently collapsed.
        raise DecodeError("duplicate_field", "a field key appears twice in the line")
    if pos >= len(line):
        return measurement, tags, fields, None
    stamp = line[_expect(line, pos, " ", "timestamp") :]
    if not re.fullmatch(r"-?\d+", stamp):
        raise DecodeError("bad_line", f"timestamp {stamp[:40]!r} is not an integer")
    return measurement, tags, fields, int(stamp)


def parse_fields(text: str) -> list[tuple[str, FieldValue]]:
    """The typed fields of a line's field part (`key=value,...`), as the line parser reads them.

    Raises:
        DecodeError: for a malformed field part.
    """
    if "\\" in text or '"' in text or " " in text:
        fields, pos = _scan_fields(text, 0)
        if pos < len(text):
            raise DecodeError("bad_line", f"unexpected {text[pos]!r} at column {pos + 1}")
        return fields
    # Nothing escaped or quoted (the common case of stored numeric readings): the same fields
    # as the scanner finds, without walking the text one character at a time.
    fields = []
    for item in text.split(","):
        key, equals, token = item.partition("=")
        if not equals:
            raise DecodeError("bad_line", f"expected '=' after the field {key[:40]!r}")
        fields.append((key, _typed(token)))
    return fields


def _scan_fields(line: str, pos: int) -> tuple[list[tuple[str, FieldValue]], int]:
    fields: list[tuple[str, FieldValue]] = []
    while True:
        field_key, pos = _scan_name(line, pos, ",= ")
        pos = _expect(line, pos, "=", "field")
        field_value, pos = _scan_value(line, pos)
        fields.append((field_key, field_value))
        if pos >= len(line) or line[pos] != ",":
            return fields, pos
        pos += 1


def bounded_int(token: str) -> int:
    """The integer of a token of digits with an optional sign, if it can fit in 64 bits.

    Raises:
        DecodeError: `integer_out_of_range`, before `int` spends time on a digit bomb.
    """
    if len(token.lstrip("+-").lstrip("0")) > INT64_DIGITS:
        raise DecodeError("integer_out_of_range", f"{token[:40]!r}... does not fit in 64 bits")
    return int(token)


def _expect(line: str, pos: int, char: str, what: str) -> int:
    if pos >= len(line) or line[pos] != char:
        raise DecodeError("bad_line", f"expected {char!r} before the {what} at column {pos + 1}")
    return pos + 1


def _scan_name(line: str, pos: int, stops: str) -> tuple[str, int]:
    out = []
    while pos < len(line) and line[pos] not in stops:
        if line[pos] == "\\" and pos + 1 < len(line) and line[pos + 1] in stops + "\\":
            pos += 1
        out.append(line[pos])
        pos += 1
    return "".join(out), pos


def _scan_value(line: str, pos: int) -> tuple[FieldValue, int]:
    if pos < len(line) and line[pos] == '"':
        return _scan_string(line, pos + 1)
    end = pos
    while end < len(line) and line[end] not in ", ":
        end += 1
    return _typed(line[pos:end]), end


def _scan_string(line: str, pos: int) -> tuple[str, int]:
    """A quoted string value from just after its opening quote: (value, position after it).

    By runs between backslashes and quotes, not one character at a time: a string of hundreds
    of KiB is read in a few milliseconds (a compaction step parses stored readings in the event
    loop). A backslash escapes a quote or a backslash; before anything else it stands for itself.
    """
    out = []
    quote = -1
    while True:
        if quote < pos:
            quote = line.find('"', pos)
            if quote < 0:
                raise DecodeError("bad_line", "unterminated string value")
        slash = line.find("\\", pos, quote)
        if slash < 0:
            out.append(line[pos:quote])
            return "".join(out), quote + 1
        out.append(line[pos:slash])
        if line[slash + 1] in '"\\':
            out.append(line[slash + 1])
            pos = slash + 2
        else:
            out.append("\\")
            pos = slash + 1


def _typed(token: str) -> FieldValue:
    value: FieldValue
    if token and not token.strip(_FLOAT_CHARS):
        try:
            return float(token)
        except ValueError:
            pass
    if _INT.fullmatch(token):
        value = bounded_int(token[:-1])
    elif token in _TRUE:
        value = True
    elif token in _FALSE:
        value = False
    else:
        raise DecodeError(
            "bad_line", f"field value {token[:40]!r} is not a number, boolean or quoted string"
        )
    return value
