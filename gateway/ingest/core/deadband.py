"""Report by exception: which readings are within the deadband of their series, and so not stored.

Pure. A device class with a `deadband` (gateway/config/mqtt.py `Deadband`) keeps, per series
(device, measurement, tags), the last reading KEPT: not the last seen, so a slow drift cannot
creep past the band one small step at a time. A new reading is suppressed when all hold:

- a reading of its series is kept (a first reading, or one of a series forgotten, is kept);
- `0 <= ts - kept.ts < heartbeat`, in reading time (a timestamp going back is kept);
- it has the same field names and types;
- every string or boolean field is equal;
- every numeric field is equal or moved less than its band: the larger of the absolute band
  and the relative band times the magnitude of the kept value (a field a band table does not
  name has no band: any change keeps the reading).

Otherwise it is kept. A suppressed reading is acknowledged and counted (`suppressed`), never
stored: DESIGN invariant 1 holds because that is a deliberate refusal, counted.

A kept reading is a reference for later ones only once it is stored. `judge` stages the kept
readings of a message (later readings of the same batch are judged against them, since the
batch commits as a whole or its tail is taken again), and `settle` promotes the marks of the
committed messages, or none when admission refused readings of the batch (a refused reading
must not stand for the readings suppressed after it). The state is bounded: at most
`max_series` series per class, least recently used forgotten first; a forgotten series, like
every series after a restart, keeps its next reading.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from gateway.config.mqtt import Deadband, Subscription
    from gateway.points.model import FieldValue, Reading

NS_PER_S = 1_000_000_000

# (device, measurement, tags): a series of one class.
SeriesKey = tuple[str, str, tuple[tuple[str, str], ...]]


class Kept(NamedTuple):
    """The reading kept last for a series: what later readings are judged against."""

    ts_ns: int
    fields: dict[str, FieldValue]


class Mark(NamedTuple):
    """A kept reading, to become its series' reference once it is stored."""

    device_class: str
    key: SeriesKey
    kept: Kept


class Judgement(NamedTuple):
    """What the deadband does with one reading, and why (for a suppressed one, if asked)."""

    keep: bool
    mark: Mark | None
    why: str = ""


@dataclass(frozen=True, slots=True)
class Rule:
    """One class's deadband, in the form judging needs."""

    absolute: float
    relative: float
    # Per-field bands of a table; a field a table does not name has band 0 from it.
    absolute_by_field: Mapping[str, float] | None
    relative_by_field: Mapping[str, float] | None
    heartbeat_ns: int
    max_series: int

    @classmethod
    def of(cls, deadband: Deadband) -> Rule:
        """The rule a `deadband` table sets."""
        absolute, relative = deadband.absolute, deadband.relative
        return cls(
            absolute=absolute if isinstance(absolute, float | int) else 0.0,
            relative=relative if isinstance(relative, float | int) else 0.0,
            absolute_by_field=absolute if isinstance(absolute, dict) else None,
            relative_by_field=relative if isinstance(relative, dict) else None,
            heartbeat_ns=round(deadband.heartbeat_s * NS_PER_S),
            max_series=deadband.max_series,
        )

    def band(self, field: str, last: float) -> float:
        """How far `field` may move from the kept value `last` and still be suppressed."""
        absolute = self.absolute
        if self.absolute_by_field is not None:
            absolute = self.absolute_by_field.get(field, 0.0)
        relative = self.relative
        if self.relative_by_field is not None:
            relative = self.relative_by_field.get(field, 0.0)
        return max(absolute, relative * abs(last))


def compare(rule: Rule, kept: Kept | None, reading: Reading) -> str | None:
    """None when `reading` is within the deadband of `kept`, else why it is kept."""
    if kept is None:
        return "first reading of the series"
    elapsed = reading.ts_ns - kept.ts_ns
    if elapsed < 0:
        return "timestamp before the last kept reading's"
    if elapsed >= rule.heartbeat_ns:
        return f"heartbeat: {_s(elapsed)} s since the last kept"
    return _fields_moved(rule, kept.fields, reading.fields)


def _fields_moved(
    rule: Rule, last: dict[str, FieldValue], fields: tuple[tuple[str, FieldValue], ...]
) -> str | None:
    """None when every field is within its band of the kept one, else the first that is not."""
    if len(fields) != len(last):
        return "the field names changed"
    for name, value in fields:
        if name not in last:
            return "the field names changed"
        was = last[name]
        if type(value) is not type(was):
            return f"{name} changed type"
        if value == was:
            continue
        if isinstance(value, str | bool) or isinstance(was, str | bool):
            return f"{name} changed from {was!r} to {value!r}"
        band = rule.band(name, was)
        moved = abs(value - was)
        if not moved < band:
            return f"{name} moved {moved:g} >= band {band:g}"
    return None


def _s(ns: int) -> str:
    return f"{ns / NS_PER_S:g}"


class Deadbands:
    """The deadband state of every class that has one; see the module docstring."""

    def __init__(self, rules: Mapping[str, Rule]) -> None:
        """`rules` by device class; classes without one keep every reading."""
        self._rules = dict(rules)
        self._state: dict[str, OrderedDict[SeriesKey, Kept]] = {c: OrderedDict() for c in rules}
        self._staged: dict[tuple[str, SeriesKey], Kept] = {}

    @classmethod
    def of(cls, subscriptions: Iterable[Subscription]) -> Deadbands:
        """The deadbands the subscriptions set (one per class: the settings make them agree)."""
        return cls(
            {s.device_class: Rule.of(s.deadband) for s in subscriptions if s.deadband is not None}
        )

    def rule_for(self, device_class: str) -> Rule | None:
        """The class's rule; None: every reading of it is kept."""
        return self._rules.get(device_class)

    def series(self, device_class: str) -> int:
        """How many series of the class are remembered."""
        state = self._state.get(device_class)
        return len(state) if state is not None else 0

    def judge(
        self, device_class: str, readings: Sequence[Reading], *, explain: bool = False
    ) -> list[Judgement]:
        """Judge one message's readings in order, against the kept ones before them.

        Those are the message's own, then the staged ones of its batch, then the stored ones.
        Nothing is staged: `stage` the marks once the message is taken whole.
        """
        rule = self._rules.get(device_class)
        if rule is None:
            return [Judgement(keep=True, mark=None) for _ in readings]
        state = self._state[device_class]
        staged = self._staged
        mine: dict[SeriesKey, Kept] = {}
        out: list[Judgement] = []
        for reading in readings:
            key = (reading.device, reading.measurement, reading.tags)
            kept = mine.get(key) or staged.get((device_class, key))
            if kept is None:
                kept = state.get(key)
                if kept is not None:
                    state.move_to_end(key)
            why = compare(rule, kept, reading)
            if why is None:
                if explain:
                    assert kept is not None  # noqa: S101 - compare keeps a first reading
                    why = (
                        f"all fields within band, {_s(reading.ts_ns - kept.ts_ns)} s since the "
                        f"last kept (heartbeat {_s(rule.heartbeat_ns)} s)"
                    )
                out.append(Judgement(keep=False, mark=None, why=why or ""))
                continue
            mine[key] = new = Kept(reading.ts_ns, dict(reading.fields))
            out.append(Judgement(keep=True, mark=Mark(device_class, key, new), why=why))
        return out

    def stage(self, marks: Iterable[Mark]) -> None:
        """Kept readings of a message taken: references for the rest of its batch."""
        for device_class, key, kept in marks:
            self._staged[device_class, key] = kept

    def settle(self, marks: Iterable[Mark], *, clean: bool) -> None:
        """After a commit: `marks` of the committed messages become references if `clean`.

        Always clears what was staged: the marks of messages not committed are gone with them.
        """
        self._staged.clear()
        if not clean:
            return
        for device_class, key, kept in marks:
            state = self._state.get(device_class)
            if state is None:
                continue  # the class lost its rule since (reconfigure)
            state[key] = kept
            state.move_to_end(key)
            if len(state) > self._rules[device_class].max_series:
                state.popitem(last=False)

    def reconfigure(self, rules: Mapping[str, Rule]) -> None:
        """New rules: a class whose rule changed starts afresh, the others keep their state."""
        old_rules, old_state = self._rules, self._state
        self._rules = dict(rules)
        self._state = {
            c: old_state[c] if old_rules.get(c) == rule else OrderedDict()
            for c, rule in rules.items()
        }
        self._staged.clear()
