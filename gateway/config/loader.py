"""Loading the configuration: TOML file plus environment overrides, validated by pydantic.

Every default lives in these models. Unknown keys are errors, and every error names the key path.

Environment overrides: `GATEWAY__<SECTION>__<KEY>=value` sets `[section] key`; levels are
joined by a double underscore, list items by their index (`GATEWAY__MQTT__SUBSCRIPTIONS__0__QOS=0`).
The value is read as TOML when it parses as such (`1883`, `true`, `"text"`), else as a string.

Secrets (the MQTT password, the InfluxDB token and password) are never written in the file: they
come from a `*_file` key naming a file that holds them, or from the environment
(`GATEWAY__MQTT__PASSWORD`, `GATEWAY__INFLUX__TOKEN`, `GATEWAY__INFLUX__PASSWORD`; for a
`[[sinks]]` table, `GATEWAY__SINKS__<N>__TOKEN` where N counts the tables from 0).
An empty secret (a file or variable holding nothing but white space) is refused, naming the
key and the file or variable: read as "no secret", it would turn authentication off unseen.

Under systemd with credentials (`LoadCredential=`), `$CREDENTIALS_DIRECTORY` is set and every
relative `*_file` path (secrets, TLS keys and certificates) is read from that directory, so a
service with `DynamicUser=yes` reaches files only root and the service can read.
"""

from __future__ import annotations

import difflib
import os
import tomllib
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from gateway.config.settings import Settings
from gateway.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping

ENV_PREFIX = "GATEWAY__"
# Set by systemd for a unit with LoadCredential=: where the service's credentials are.
CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"
# Keys that hold a secret; they may come from the environment or a *_file key, never the TOML file.
SECRET_KEYS = {
    ("mqtt", "password"),
    ("influx", "token"),
    ("influx", "password"),
    ("metrics", "token"),
}
# The same in each table of a list of tables: `[[sinks]]` token and password.
LIST_SECRET_KEYS = {
    ("sinks", "token"),
    ("sinks", "password"),
}


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
        f"{'.'.join((*where, key))}: secrets may not be written in the config file; use "
        f"{key}_file or {env_name((*where, key))}"
        for where, key, table in _secret_places(raw)
        if key in table
    ]
    overrides: dict[tuple[str, ...], str] = {}
    problems += _apply_environment(raw, environ, overrides)
    credentials = environ.get(CREDENTIALS_ENV)
    if credentials:
        _rebase_files(raw, Path(credentials))
    problems += _read_secret_files(raw)
    problems += _empty_secrets(raw, overrides)
    if problems:
        raise ConfigError(problems)
    return validate(raw, overrides)


def validate(
    raw: dict[str, Any], overrides: Mapping[tuple[str, ...], str] | None = None
) -> Settings:
    """Validate an already-parsed configuration mapping.

    `overrides`: key path -> the environment variable that set it, named in its errors.
    """
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError([_describe(err, overrides or {}) for err in exc.errors()]) from None


def _describe(err: Any, overrides: Mapping[tuple[str, ...], str]) -> str:  # noqa: ANN401 - pydantic's ErrorDetails
    loc = tuple(str(part) for part in err["loc"])
    where = ".".join(loc) or "(top level)"
    source = next(
        (f" (from {name})" for path, name in overrides.items() if loc[: len(path)] == path), ""
    )
    if err["type"] == "extra_forbidden":
        near = difflib.get_close_matches(loc[-1], _keys_beside(loc), n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        return f"{where}: unknown key{source}{hint}"
    if err["type"] == "missing":
        return f"{where}: required key is missing"
    message = str(err["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}{source}"


def _keys_beside(loc: tuple[str, ...]) -> list[str]:
    """The keys the section holding `loc`'s last key has (none where it cannot be told)."""
    model: Any = Settings
    for part in loc[:-1]:
        if part.isdigit():
            continue  # a list item: the list's own model is already `model`
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = _model_in(field.annotation)
        if model is None:
            return []
    return list(getattr(model, "model_fields", {}))


def _model_in(annotation: Any) -> type[BaseModel] | None:  # noqa: ANN401 - any annotation
    """The pydantic model an annotation holds (`X`, `X | None`, `list[X]`), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _apply_environment(
    raw: dict[str, Any], environ: Mapping[str, str], overrides: dict[tuple[str, ...], str]
) -> list[str]:
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
            overrides[tuple(path)] = name
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


def _rebase_files(node: object, directory: Path) -> None:
    """Point every relative `*_file` path in `node` into `directory`."""
    if isinstance(node, list):
        for item in node:
            _rebase_files(item, directory)
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if isinstance(value, dict | list):
            _rebase_files(value, directory)
        elif key.endswith("_file") and isinstance(value, str) and _is_relative(value):
            node[key] = str(directory / value)


def _is_relative(path: str) -> bool:
    return bool(path) and not Path(path).is_absolute()


def env_name(path: tuple[str, ...]) -> str:
    """The environment variable that sets the key at `path` (`GATEWAY__SINKS__0__TOKEN`)."""
    return ENV_PREFIX + "__".join(part.upper() for part in path)


def _secret_places(raw: dict[str, Any]) -> list[tuple[tuple[str, ...], str, dict[str, Any]]]:
    """`(table path, key, table)` of every place a secret may be, in a stable order."""
    places: list[tuple[tuple[str, ...], str, dict[str, Any]]] = [
        ((section,), key, table)
        for section, key in SECRET_KEYS
        if isinstance(table := raw.get(section), dict)
    ]
    for section, key in LIST_SECRET_KEYS:
        items = raw.get(section)
        if isinstance(items, list):
            places += [
                ((section, str(index)), key, item)
                for index, item in enumerate(items)
                if isinstance(item, dict)
            ]
    return sorted(places, key=lambda place: (place[0], place[1]))


def _read_secret_files(raw: dict[str, Any]) -> list[str]:
    problems = []
    for where, key, table in _secret_places(raw):
        if not table.get(f"{key}_file") or key in table:
            continue
        name = ".".join((*where, key))
        file = Path(str(table[f"{key}_file"]))
        try:
            secret = file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            problems.append(f"{name}_file: cannot read {file}: {exc.strerror}")
            continue
        if not secret:
            # Taken as "no secret", an empty file would turn authentication off unseen.
            problems.append(
                f"{name}_file: {file} is empty or holds only white space; "
                f"an empty {name} is refused"
            )
            continue
        table[key] = secret
    return problems


def _empty_secrets(raw: dict[str, Any], overrides: Mapping[tuple[str, ...], str]) -> list[str]:
    """An empty secret set by the environment: refused, as an empty `*_file` is."""
    problems = []
    for where, key, table in _secret_places(raw):
        value = table.get(key)
        if isinstance(value, str) and not value.strip():
            source = overrides.get((*where, key), "the environment")
            problems.append(
                f"{'.'.join((*where, key))}: {source} is empty or holds only white space; "
                "an empty secret is refused"
            )
    return problems


def redacted(settings: Settings) -> dict[str, Any]:
    """The effective configuration as plain data, secrets masked, for `check-config`."""
    return settings.model_dump(mode="json")
