"""Topic templates: `sensors/{device}/{measurement}` -> the MQTT filter and the level values.

A level that is exactly `{name}` is a placeholder: it subscribes as `+` and its value becomes the
device (`{device}`, required), the measurement (`{measurement}`) or a tag (any other name).
A final `#` accepts any deeper levels, which are ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

from gateway.errors import DecodeError

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True, slots=True)
class TopicTemplate:
    """A parsed topic template; build it with `TopicTemplate.parse`."""

    levels: tuple[str | None, ...]  # literal text, or None for a placeholder
    names: tuple[str | None, ...]  # the placeholder's name at that level, else None
    multi_level: bool

    @staticmethod
    @cache
    def parse(template: str) -> TopicTemplate:
        """Parse and check a template.

        Raises:
            ValueError: with a message that says what is wrong with it.
        """
        if not template:
            raise ValueError("topic template is empty")
        parts = template.split("/")
        multi_level = parts[-1] == "#"
        if multi_level:
            parts = parts[:-1]
        levels: list[str | None] = []
        names: list[str | None] = []
        for part in parts:
            match = _PLACEHOLDER.fullmatch(part)
            if match:
                levels.append(None)
                names.append(match.group(1))
            elif "{" in part or "}" in part:
                raise ValueError(
                    f"level {part!r}: a placeholder must fill a whole level, like {{device}}"
                )
            elif part in {"+", "#"} or "+" in part or "#" in part:
                raise ValueError(
                    f"level {part!r}: use a named placeholder instead of a "
                    "wildcard ('#' is allowed only as the last level)"
                )
            else:
                levels.append(part)
                names.append(None)
        placeholders = [n for n in names if n is not None]
        if "device" not in placeholders:
            raise ValueError("topic template needs a {device} level")
        if len(set(placeholders)) != len(placeholders):
            raise ValueError("a placeholder name appears twice")
        return TopicTemplate(tuple(levels), tuple(names), multi_level)

    @property
    def placeholders(self) -> tuple[str, ...]:
        """Names of the placeholders, in level order."""
        return tuple(n for n in self.names if n is not None)

    @property
    def mqtt_filter(self) -> str:
        """The subscription filter, placeholders as `+`."""
        text = "/".join("+" if lit is None else lit for lit in self.levels)
        return f"{text}/#" if self.multi_level else text

    def match(self, topic: str) -> dict[str, str] | None:
        """Values of the placeholders when `topic` fits the template, else None.

        Raises:
            DecodeError: when it fits but a placeholder level is empty.
        """
        parts = topic.split("/")
        n = len(self.levels)
        if len(parts) < n or (len(parts) > n and not self.multi_level):
            return None
        values: dict[str, str] = {}
        for literal, name, part in zip(self.levels, self.names, parts, strict=False):
            if name is None:
                if part != literal:
                    return None
            elif not part:
                raise DecodeError("empty_topic_level", f"{{{name}}} is empty in {topic!r}")
            else:
                values[name] = part
        return values
