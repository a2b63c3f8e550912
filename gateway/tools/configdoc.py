"""`python -m gateway.tools.configdoc`: docs/configuration.md, made from the configuration's models.

The models in `gateway/config/` hold every key, its type, its default and its bounds; the words
come from `config/reference.toml`, the commented example an operator copies from, so that a key
is explained in one place only (a field's pydantic `description`, where one is set, wins). Each
key's comment is the text after its value, the indented comment lines under it, and the comment
block just above it; a key commented out in the example (`# token_file = ...`) counts as well.
Secret keys show how they are supplied, never a value. `tests/unit/test_docs.py` renders the page
again and fails while the file differs, so the page cannot drift from the models.
"""

from __future__ import annotations

import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import annotated_types
from pydantic import BaseModel, ByteSize, SecretStr
from pydantic_core import PydanticUndefined

from gateway.config.loader import ENV_PREFIX, SECRET_KEYS
from gateway.config.sections import FlushSettings
from gateway.config.settings import Settings
from gateway.config.sinks import FLUSH_OVERRIDES, SinkSettings

if typing.TYPE_CHECKING:
    from pydantic.fields import FieldInfo

ROOT = Path(__file__).parents[2]
REFERENCE = ROOT / "config" / "reference.toml"
OUTPUT = ROOT / "docs" / "configuration.md"
COMMAND = "python -m gateway.tools.configdoc"

# `[section]`, `[[section.list]]`, or one of them commented out, with an optional comment after.
TABLE = re.compile(r"^(?:#\s*)?\[\[?\s*([A-Za-z0-9_.]+)\s*\]\]?\s*(?:#\s?(.*))?$")
# A comment of its own line that continues the key above: indented under that key's comment.
CONTINUED = re.compile(r"^\s+#\s?(.*)$")
# "(unset: none)" in a [flush] key's words, which a sink's key of the same name does not mean.
UNSET_NOTE = re.compile(r"\s*\(unset: [^)]*\)")
BOUNDS = {
    annotated_types.Ge: ("ge", ">="),
    annotated_types.Gt: ("gt", ">"),
    annotated_types.Le: ("le", "<="),
    annotated_types.Lt: ("lt", "<"),
}


@dataclass
class Notes:
    """The comments of config/reference.toml: per table path, its own and each key's."""

    tables: dict[str, list[str]] = field(default_factory=dict)
    keys: dict[tuple[str, str], list[str]] = field(default_factory=dict)


def _key_line(text: str) -> tuple[str, str] | None:
    """`(key, comment)` of a `key = value  # comment` line, or None for anything else."""
    # The comment starts at the first "#" before which the line parses: a "#" inside a string
    # value ("spBv1.0/#") does not end the value.
    cuts = [i for i, char in enumerate(text) if char == "#"] + [len(text)]
    for cut in cuts:
        try:
            parsed = tomllib.loads(text[:cut])
        except tomllib.TOMLDecodeError:
            continue
        if len(parsed) != 1:
            return None
        (key,) = parsed
        return key, text[cut + 1 :].strip()
    return None


def read_notes(text: str) -> Notes:
    """Every table's and key's comment in the reference file, in their words."""
    notes = Notes()
    table = ""
    pending: list[str] = []
    last: list[str] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            pending, last = [], None
            continue
        continued = CONTINUED.match(line)
        if continued and last is not None:
            last.append(continued.group(1).strip())
            continue
        header = TABLE.match(stripped)
        if header:
            table = header.group(1)
            own = notes.tables.setdefault(table, [])
            if not own:
                own += pending + ([header.group(2).strip()] if header.group(2) else [])
            pending, last = [], None
            continue
        found = _key_line(stripped.removeprefix("#").strip() if stripped.startswith("#") else line)
        if found is None or (stripped.startswith("#") and table == ""):
            pending.append(stripped.removeprefix("#").strip())
            last = None
            continue
        key, comment = found
        words = notes.keys.setdefault((table, key), [])
        last = words
        if not words:
            words += pending + ([comment] if comment else [])
        else:
            last = []  # a second example of a key adds nothing to the first one's words
        pending = []
    return notes


def _text(lines: list[str]) -> str:
    return " ".join(part for part in lines if part)


def _toml(value: object) -> str:
    """A default as it would be written in the file."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, ByteSize):
        return f'"{value.human_readable()}"'.replace(".0", "")
    if isinstance(value, (str, Path)):
        return f'"{value}"'
    if isinstance(value, dict):
        return "{}" if not value else repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def _unwrap(annotation: object) -> tuple[object, bool]:
    """The annotation without `| None`, and whether None was allowed."""
    if typing.get_origin(annotation) in {typing.Union, types.UnionType}:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def _type(annotation: object) -> str:
    """The type of a key in the file's words."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:  # pydantic's FilePath: a Path that must name an existing file
        return "path of an existing file"
    if origin is Literal:
        return " or ".join(_toml(a) for a in typing.get_args(annotation))
    if origin is dict:
        return "table of strings"
    if origin is list:
        (item,) = typing.get_args(annotation)
        return f"list of {_type(item)}s"
    names: dict[object, str] = {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        Path: "path",
        ByteSize: 'size (bytes, or "64MiB", "1GiB" ...)',
    }
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _bounds(info: FieldInfo) -> str:
    parts = []
    for item in info.metadata:
        for kind, (attribute, sign) in BOUNDS.items():
            if isinstance(item, kind):
                parts.append(f"{sign} {_toml(getattr(item, attribute))}")
        if isinstance(item, annotated_types.MinLen):
            parts.append("not empty" if item.min_length == 1 else f">= {item.min_length} long")
        if isinstance(item, annotated_types.MaxLen):
            parts.append(f"<= {item.max_length} long")
        pattern = getattr(item, "pattern", None)
        if pattern:
            parts.append(f"matches `{pattern}`")
    return ", ".join(parts)


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    value = info.default_factory() if info.default_factory else info.default  # type: ignore[call-arg]
    if value is PydanticUndefined:
        return "required"
    return "not set" if value is None else f"`{_toml(value)}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _env(path: str, key: str, lists: set[str]) -> str:
    """The variable that sets `key` of the table at `path`; an item of a list is `<N>`."""
    parts = []
    walked = ""
    for part in path.split("."):
        walked = f"{walked}.{part}" if walked else part
        parts += [part.upper(), "<N>"] if walked in lists else [part.upper()]
    return ENV_PREFIX + "__".join([*parts, key.upper()])


def _twin(model: type[BaseModel], name: str) -> FieldInfo | None:
    """The `[flush]` key a sink's key of the same name stands for, if it is one."""
    if issubclass(model, SinkSettings) and name in FLUSH_OVERRIDES:
        return FlushSettings.model_fields[name]
    return None


def _sections(model: type[BaseModel], path: str) -> list[tuple[str, type[BaseModel], bool]]:
    """`(path, model, is_list)` of every table under `model`, depth first in field order."""
    found: list[tuple[str, type[BaseModel], bool]] = []
    for name, info in model.model_fields.items():
        inner, _ = _unwrap(info.annotation)
        is_list = typing.get_origin(inner) is list
        if is_list:
            (inner,) = typing.get_args(inner)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            sub = f"{path}.{name}" if path else name
            found += [(sub, inner, is_list), *_sections(inner, sub)]
    return found


def _is_table(info: FieldInfo) -> bool:
    inner, _ = _unwrap(info.annotation)
    if typing.get_origin(inner) is list:
        (inner,) = typing.get_args(inner)
    return isinstance(inner, type) and issubclass(inner, BaseModel)


def _rows(
    path: str,
    model: type[BaseModel],
    notes: Notes,
    *,
    also: list[str],
    missing: list[str],
    lists: set[str],
) -> list[str]:
    rows = ["| key | type | default | allowed | what it does |", "|---|---|---|---|---|"]
    section = path.split(".", maxsplit=1)[0]
    for name, info in model.model_fields.items():
        if _is_table(info):
            continue
        inner, _ = _unwrap(info.annotation)
        if inner is SecretStr or (section, name) in SECRET_KEYS:
            rows.append(
                f"| `{name}` | secret | not set | - | never in the file (refused there): "
                f"`{name}_file` names a file holding it, or `{_env(path, name, lists)}` holds it; "
                "masked in `check-config` and never logged |"
            )
            continue
        # A table used twice ([mqtt.tls], [influx.tls]) is explained where the file explains it.
        said = [_text(notes.keys.get((where, name), [])) for where in (path, *also)]
        words = info.description or next((text for text in said if text), "")
        twin = _twin(model, name)
        if twin is not None:
            # Bounds and words of [flush], whose model checks them (gateway/config/sinks.py);
            # what [flush] does when unset is not what the sink does.
            said_in_flush = _text(notes.keys.get(("flush", name), []))
            what = UNSET_NOTE.sub("", said_in_flush)
            words = f"`[flush] {name}` for this sink alone (unset: as in `[flush]`): {what}"
        if not words:
            missing.append(f"{path}.{name}")
        rows.append(
            f"| `{name}` | {_cell(_type(inner))} | {_cell(_default(info))} "
            f"| {_cell(_bounds(twin or info)) or '-'} | {_cell(words)} |"
        )
    return rows


def render(reference: str) -> str:
    """The whole page, from the models and the reference file's text.

    Raises:
        ValueError: naming the keys that neither a model nor the reference file explains.
    """
    notes = read_notes(reference)
    missing: list[str] = []
    out = [
        "# Configuration reference",
        "",
        f"<!-- Generated by `{COMMAND}` from gateway/config/ and config/reference.toml;",
        "     do not edit: change those and run the command again. -->",
        "",
        "Every key of `gateway.toml`, by table: its type, its default, the values it takes and",
        "what it does. A key left out takes its default; an unknown key is an error. Any key can",
        f"also be set from the environment as `{ENV_PREFIX}<TABLE>__<KEY>` (levels joined by a",
        f"double underscore, list items by index: `{ENV_PREFIX}MQTT__SUBSCRIPTIONS__0__QOS=0`),",
        "read as TOML when it parses as TOML. `gateway check-config PATH` prints the effective",
        "configuration, or every problem as `key.path: message` (exit 2).",
        "[`config/reference.toml`](../config/reference.toml) is the same in the form of a file.",
        "",
    ]
    every = _sections(Settings, "")
    lists = {path for path, _, is_list in every if is_list}
    for path, section, is_list in every:
        heading = f"[[{path}]]" if is_list else f"[{path}]"
        out += [f"## `{heading}`", ""]
        doc = (section.__doc__ or "").strip().splitlines()[0].removeprefix(f"`{heading}`: ")
        out += [doc[:1].upper() + doc[1:], ""]
        own = _text(notes.tables.get(path, []))
        if own:
            out += [own, ""]
        # A table used twice, or one that extends another ([[sinks]] is [influx] and more),
        # takes the words of its twin for the keys its own example leaves out.
        also = [
            other
            for other, model, _ in every
            if other != path and (model is section or issubclass(section, model))
        ]
        out += [*_rows(path, section, notes, also=also, missing=missing, lists=lists), ""]
    if missing:
        raise ValueError(
            "no words for " + ", ".join(missing) + ": give each a comment in config/reference.toml"
        )
    return "\n".join(out)


def main() -> None:
    """Write docs/configuration.md."""
    OUTPUT.parent.mkdir(exist_ok=True)
    OUTPUT.write_text(render(REFERENCE.read_text(encoding="utf-8")), encoding="utf-8")


if __name__ == "__main__":
    main()
