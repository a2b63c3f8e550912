"""The base of every configuration section: unknown keys are errors, values are frozen."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A `[section]` of the configuration file."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def both_or_neither(section: BaseModel, first: str, second: str) -> None:
    """A certificate without its key (or the reverse) is a mistake worth naming.

    Raises:
        ValueError: naming both keys.
    """
    if (getattr(section, first) is None) != (getattr(section, second) is None):
        raise ValueError(f"{first} and {second} go together")
