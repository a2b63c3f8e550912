"""The state of every edge node and device: metric definitions, online, bdSeq and seq.

Pure. A DATA message names its metrics by alias, and only its scope's last BIRTH says what
an alias means (name and data type), so the definitions of every BIRTH are kept here and, as
notes (`Change.notes`), committed in the same transaction as the readings of that BIRTH: after a
restart they are loaded back and a DATA message still reads, with no rebirth.

Sequence numbers (`seq`, 0-255, one counter per edge node over all its messages but NDEATH)
are kept in memory only, and forgotten with each broker connection: redelivered messages
repeat numbers, and nothing says which numbers the messages lost while the gateway was away
carried. A gap inside one connection means lost state (a BIRTH may be among the lost), so the
DATA message after it is refused and a rebirth requested, as for an alias no BIRTH defined.

A device is online from its DBIRTH until its DDEATH, its node's NDEATH, or its node's next
NBIRTH (which its own DBIRTH follows). An NDEATH counts only when its bdSeq is that of the
node's last NBIRTH. The specification has the node put its bdSeq into the will it registers
at CONNECT and the same number into the NBIRTH that follows, so an NDEATH with another bdSeq
is the will of a connection the node has since replaced (`ndeath_stale_bdseq`), and one with
none (or a bdSeq that holds no integer) is not the node's at all (`ndeath_without_bdseq`):
any client may publish on the topic.
Both are refused, counted in `refused` and logged; the node stays online. (A node whose NBIRTH
had no bdSeq breaks the specification and gives nothing to match: its NDEATH counts.)

A BIRTH defines its scope's metrics afresh, as the specification says, even while the scope is
online; one that gives a known alias another name or data type then is taken, but counted in
`alias_changes` and logged, since it is also how a rogue client re-labels a node's data.
Those log lines come at most once per edge node and kind per `NOTICE_INTERVAL_S`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from gateway.errors import DecodeError
from gateway.sparkplug.core.pacing import Pacer
from gateway.sparkplug.core.payload import BD_SEQ_METRIC, Metric

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway.sparkplug.core.payload import Message as Payload
    from gateway.sparkplug.core.topic import SparkplugTopic

logger = logging.getLogger(__name__)

NOTE_PREFIX = b"spB/"
SEQ_MODULUS = 256
# Metrics of the protocol itself, not of the process: not written.
CONTROL_PREFIXES = ("Node Control/", "Device Control/")
# Why an NDEATH is refused (the module docstring), the labels of its counter.
NDEATH_WITHOUT_BDSEQ = "ndeath_without_bdseq"
NDEATH_STALE_BDSEQ = "ndeath_stale_bdseq"
REFUSALS = (NDEATH_WITHOUT_BDSEQ, NDEATH_STALE_BDSEQ)
# A client spoofing a node can repeat a message at any rate: the counters count each, the log
# says it once per node and kind this often.
NOTICE_INTERVAL_S = 60.0


class Definition(NamedTuple):
    """What a BIRTH says of one metric."""

    name: str
    datatype: int


@dataclass(slots=True)
class Scope:
    """An edge node or one of its devices, as its last BIRTH and DEATH left it."""

    online: bool = False
    birth_ns: int = 0
    death_ns: int = 0
    by_alias: dict[int, Definition] = field(default_factory=dict)
    by_name: dict[str, int] = field(default_factory=dict)

    def define(self, definitions: list[tuple[int | None, Definition]]) -> None:
        """Replace the metric definitions with those of a BIRTH."""
        self.by_alias = {alias: d for alias, d in definitions if alias is not None}
        self.by_name = {d.name: d.datatype for _, d in definitions}

    @property
    def size(self) -> int:
        """Definitions held, for the memory bound."""
        return len(self.by_name)

    def to_note(self, extra: dict[str, Any] | None = None) -> bytes:
        """The durable form."""
        named = {name: [datatype, None] for name, datatype in self.by_name.items()}
        for alias, definition in self.by_alias.items():
            named[definition.name][1] = alias
        record = {
            "online": self.online,
            "birth_ns": self.birth_ns,
            "death_ns": self.death_ns,
            "metrics": [[name, datatype, alias] for name, (datatype, alias) in named.items()],
            **(extra or {}),
        }
        return orjson.dumps(record)

    def load(self, record: dict[str, Any]) -> None:
        """Take the durable form's state."""
        self.online = bool(record["online"])
        self.birth_ns = int(record["birth_ns"])
        self.death_ns = int(record["death_ns"])
        self.define(
            [(alias, Definition(str(name), int(dt))) for name, dt, alias in record["metrics"]]
        )


@dataclass(slots=True)
class Node(Scope):
    """An edge node: its own scope and its devices'."""

    bd_seq: int | None = None
    seq: int | None = None  # the last one seen in this broker connection
    devices: dict[str, Scope] = field(default_factory=dict)


class Resolved(NamedTuple):
    """A metric of a message and what it is: its name and data type."""

    metric: Metric
    name: str
    datatype: int


@dataclass(slots=True)
class Change:
    """What one message did: metrics to write, refusals, notes to commit, a rebirth to ask."""

    metrics: list[Resolved] = field(default_factory=list)
    errors: list[DecodeError] = field(default_factory=list)
    notes: dict[bytes, bytes] = field(default_factory=dict)
    rebirth: tuple[str, str] | None = None  # (group, edge node)


class Limits(NamedTuple):
    """Bounds on the state, from [sparkplug]."""

    max_aliases: int
    max_nodes: int
    rebirth_interval_s: float


class Sessions:
    """Every edge node's and device's state; see the module docstring."""

    def __init__(
        self,
        limits: Limits,
        on_online: Callable[[str, str, str | None, bool], None] | None = None,
    ) -> None:
        """No state yet; `load` takes what the buffer kept."""
        self._limits = limits
        self._on_online = on_online
        self.nodes: dict[tuple[str, str], Node] = {}
        # Which edge nodes may be asked for a rebirth, and told of in the log, again.
        self._rebirths = Pacer(limits.rebirth_interval_s, limits.max_nodes)
        self._notices = Pacer(NOTICE_INTERVAL_S, limits.max_nodes)
        self.definitions = 0
        self.scopes = 0
        # Counters for the metrics: NDEATHs refused by reason, and definitions a BIRTH changed.
        self.refused = dict.fromkeys(REFUSALS, 0)
        self.alias_changes = 0

    def load(self, notes: dict[bytes, bytes]) -> None:
        """Take the state stored as notes; a note that does not read is skipped and logged."""
        for key, value in sorted(notes.items(), key=lambda item: item[0].count(b"\0")):
            try:
                parts = key[len(NOTE_PREFIX) :].decode().split("\0")
                record = orjson.loads(value)
                node = self._node(parts[0], parts[1])
                if len(parts) == 2:  # noqa: PLR2004 - group, node
                    scope: Scope = node
                    node.bd_seq = record.get("bd_seq")
                else:
                    scope = node.devices.setdefault(parts[2], Scope())
                    self.scopes += 1
                self.definitions -= scope.size
                scope.load(record)
                self.definitions += scope.size
            except (ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError) as exc:
                logger.warning("skipped a stored Sparkplug state that does not read: %s", exc)
        for (group, name), node in self.nodes.items():
            self._announce(group, name, None, node.online)
            for device, scope in node.devices.items():
                self._announce(group, name, device, self._device_online(node, scope))

    def forget_sequences(self) -> None:
        """A new broker connection: numbers seen before say nothing about the next ones."""
        for node in self.nodes.values():
            node.seq = None

    def take(
        self, topic: SparkplugTopic, payload: Payload, received_ns: int, now_s: float, dup: bool
    ) -> Change:
        """Apply one message; what it yields and changes is in the result."""
        change = Change()
        kind = topic.kind
        if kind == "NDEATH":
            self._node_death(topic, payload, received_ns, now_s, change)
            return change
        node = self.nodes.get((topic.group, topic.node))
        if node is None:
            if kind not in {"NBIRTH", "DBIRTH"}:
                self._unborn(topic, payload, now_s, change)
                return change
            node = self._new_node(topic, change)
            if node is None:
                return change
        expected = self._follow_sequence(node, kind, payload, dup)
        if kind == "NBIRTH":
            self._birth(topic, node, node, payload, (received_ns, now_s), change)
        elif kind == "DBIRTH":
            self._device_birth(topic, node, payload, (received_ns, now_s), change)
        elif kind == "DDEATH":
            self._device_death(topic, node, received_ns, change)
        elif expected is not None:  # NDATA, DDATA after a lost message
            change.errors.extend(
                DecodeError(
                    "sparkplug_seq_gap",
                    f"edge node {topic.group}/{topic.node}: seq {payload.seq} where {expected} "
                    "was next; a message was lost",
                )
                for _ in payload.metrics
            )
        else:
            scope = node if topic.device is None else node.devices.get(topic.device)
            self._resolve(topic, scope, payload, change)
        if expected is not None or any(
            e.reason == "sparkplug_unknown_alias" for e in change.errors
        ):
            self._ask_rebirth(topic, now_s, change)
        return change

    def _device_birth(
        self,
        topic: SparkplugTopic,
        node: Node,
        payload: Payload,
        when: tuple[int, float],
        change: Change,
    ) -> None:
        device = self._device(topic, node, change)
        if device is not None:
            self._birth(topic, node, device, payload, when, change)

    def _unborn(
        self, topic: SparkplugTopic, payload: Payload, now_s: float, change: Change
    ) -> None:
        """A message of a node no BIRTH was kept of: no state is made for it.

        So messages on made-up node ids cannot fill the table. Metrics that carry their name
        and type are read; the others ask for a rebirth.
        """
        if topic.kind in {"NDATA", "DDATA"}:
            self._resolve(topic, None, payload, change)
            if change.errors:
                self._ask_rebirth(topic, now_s, change)

    @staticmethod
    def _follow_sequence(node: Node, kind: str, payload: Payload, dup: bool) -> int | None:
        """Take the message's seq; the seq that was due when messages were lost, else None."""
        if kind == "NBIRTH":
            node.seq = payload.seq if payload.HasField("seq") else None
            return None
        if not payload.HasField("seq"):
            return None
        expected = None if node.seq is None else (node.seq + 1) % SEQ_MODULUS
        node.seq = payload.seq
        if dup or expected is None or payload.seq == expected:
            return None
        return expected

    def _device_death(
        self, topic: SparkplugTopic, node: Node, received_ns: int, change: Change
    ) -> None:
        device = node.devices.get(topic.device or "")
        if device is not None and device.online:
            device.online, device.death_ns = False, received_ns
            change.notes[_key(topic.group, topic.node, topic.device)] = device.to_note()
            self._announce(topic.group, topic.node, topic.device, False)

    def _resolve(
        self, topic: SparkplugTopic, scope: Scope | None, payload: Payload, change: Change
    ) -> None:
        for metric in payload.metrics:
            definition = None
            name = _name_of(metric)
            if scope is not None:
                if metric.HasField("alias"):
                    definition = scope.by_alias.get(metric.alias)
                elif name in scope.by_name:
                    definition = Definition(name, scope.by_name[name])
            if definition is None and name and metric.datatype:
                definition = Definition(name, metric.datatype)
            if definition is None:
                what = f"alias {metric.alias}" if metric.HasField("alias") else repr(name)
                change.errors.append(
                    DecodeError(
                        "sparkplug_unknown_alias",
                        f"{_where(topic)}: no stored BIRTH defines metric {what}",
                    )
                )
            elif not definition.name.startswith(CONTROL_PREFIXES):
                change.metrics.append(Resolved(metric, definition.name, definition.datatype))

    def _birth(  # noqa: PLR0917 - one message's parts
        self,
        topic: SparkplugTopic,
        node: Node,
        scope: Scope,
        payload: Payload,
        when: tuple[int, float],
        change: Change,
    ) -> None:
        """Take a BIRTH's definitions; `when` is (received_ns, now_s)."""
        received_ns, now_s = when
        definitions: list[tuple[int | None, Definition]] = []
        bd_seq = None
        for metric in payload.metrics:
            name = _name_of(metric)
            if not name or not metric.datatype:
                change.errors.append(
                    DecodeError(
                        "sparkplug_bad_birth",
                        f"{_where(topic)}: a BIRTH metric needs a name (UTF-8) and a datatype",
                    )
                )
                continue
            if name == BD_SEQ_METRIC and topic.device is None:
                bd_seq = _bd_seq(metric)
                continue
            alias = metric.alias if metric.HasField("alias") else None
            definitions.append((alias, Definition(name, metric.datatype)))
            if not name.startswith(CONTROL_PREFIXES):
                change.metrics.append(Resolved(metric, name, metric.datatype))
        if self.definitions - scope.size + len(definitions) > self._limits.max_aliases:
            change.metrics.clear()
            change.errors.append(
                DecodeError(
                    "sparkplug_too_many_aliases",
                    f"{_where(topic)}: {len(definitions)} metrics would pass [sparkplug] "
                    f"max_aliases ({self._limits.max_aliases}); BIRTH refused",
                )
            )
            return
        online = node.online if scope is node else self._device_online(node, scope)
        if online:
            self._note_changes(topic, scope, definitions, now_s)
        self.definitions -= scope.size
        scope.define(definitions)
        self.definitions += scope.size
        scope.online, scope.birth_ns = True, received_ns
        extra = None
        if scope is node:
            node.bd_seq = bd_seq
            extra = {"bd_seq": bd_seq}
            for device in node.devices:
                self._announce(topic.group, topic.node, device, False)
        change.notes[_key(topic.group, topic.node, topic.device)] = scope.to_note(extra)
        self._announce(topic.group, topic.node, topic.device, True)

    def _note_changes(
        self,
        topic: SparkplugTopic,
        scope: Scope,
        definitions: list[tuple[int | None, Definition]],
        now_s: float,
    ) -> None:
        """Count (and log, paced) the definitions an online scope's new BIRTH changes."""
        changed = []
        for alias, new in definitions:
            if alias is not None:
                old = scope.by_alias.get(alias)
            else:
                datatype = scope.by_name.get(new.name)
                old = None if datatype is None else Definition(new.name, datatype)
            if old is not None and old != new:
                changed.append((alias, old, new))
        if not changed:
            return
        self.alias_changes += len(changed)
        if self._notices.allows((topic.group, topic.node, "alias"), now_s):
            alias, old, new = changed[0]
            what = f"alias {alias}" if alias is not None else repr(new.name)
            logger.warning(
                "Sparkplug %s %r: a BIRTH while online redefines %d metrics (%s: %r type %d -> "
                "%r type %d); taken, as the specification says, but a client other than the "
                "node may have sent it (see the broker's ACLs)",
                topic.kind,
                _where(topic),
                len(changed),
                what,
                old.name,
                old.datatype,
                new.name,
                new.datatype,
            )

    def _node_death(
        self,
        topic: SparkplugTopic,
        payload: Payload,
        received_ns: int,
        now_s: float,
        change: Change,
    ) -> None:
        node = self.nodes.get((topic.group, topic.node))
        if node is None:
            return
        bd_seq = next((_bd_seq(m) for m in payload.metrics if m.name == BD_SEQ_METRIC), None)
        if node.bd_seq is not None and bd_seq != node.bd_seq:
            self._refuse_death(topic, node, bd_seq, now_s)
            return
        node.online, node.death_ns, node.seq = False, received_ns, None
        change.notes[_key(topic.group, topic.node, None)] = node.to_note({"bd_seq": node.bd_seq})
        self._announce(topic.group, topic.node, None, False)
        for device in node.devices:
            self._announce(topic.group, topic.node, device, False)

    def _refuse_death(
        self, topic: SparkplugTopic, node: Node, bd_seq: int | None, now_s: float
    ) -> None:
        """An NDEATH that is not the will of the node's current connection: counted, logged."""
        reason = NDEATH_WITHOUT_BDSEQ if bd_seq is None else NDEATH_STALE_BDSEQ
        self.refused[reason] += 1
        if not self._notices.allows((topic.group, topic.node, reason), now_s):
            return
        said = "no bdSeq" if bd_seq is None else f"bdSeq {bd_seq}"
        logger.warning(
            "Sparkplug NDEATH of %r refused (%s): it has %s, the NBIRTH had bdSeq %d; the node "
            "stays %s",
            _where(topic),
            reason,
            said,
            node.bd_seq,
            "online" if node.online else "offline",
        )

    def _new_node(self, topic: SparkplugTopic, change: Change) -> Node | None:
        if not self._room_for(topic, change):
            return None
        return self._node(topic.group, topic.node)

    def _node(self, group: str, name: str) -> Node:
        node = self.nodes.get((group, name))
        if node is None:
            node = self.nodes[group, name] = Node()
            self.scopes += 1
        return node

    def _device(self, topic: SparkplugTopic, node: Node, change: Change) -> Scope | None:
        name = topic.device or ""
        device = node.devices.get(name)
        if device is None:
            if not self._room_for(topic, change):
                return None
            device = node.devices[name] = Scope()
            self.scopes += 1
        return device

    def _room_for(self, topic: SparkplugTopic, change: Change) -> bool:
        """Whether one more edge node or device may be kept; if not, the message is refused."""
        if self.scopes < self._limits.max_nodes:
            return True
        change.errors.append(
            DecodeError(
                "sparkplug_too_many_nodes",
                f"{_where(topic)}: [sparkplug] max_nodes ({self._limits.max_nodes}) edge "
                "nodes and devices are known already",
            )
        )
        return False

    def _ask_rebirth(self, topic: SparkplugTopic, now_s: float, change: Change) -> None:
        """Ask the node for its BIRTHs, unless it was asked less than the interval ago."""
        key = (topic.group, topic.node)
        if self._rebirths.allows(key, now_s):
            change.rebirth = key

    def _announce(self, group: str, node: str, device: str | None, online: bool) -> None:
        if self._on_online is not None:
            self._on_online(group, node, device, online)

    @staticmethod
    def _device_online(node: Node, device: Scope) -> bool:
        return node.online and device.online and device.birth_ns >= node.birth_ns

    def snapshot(self) -> list[dict[str, Any]]:
        """Every edge node and its devices, for the read API."""
        nodes = []
        for (group, name), node in sorted(self.nodes.items()):
            devices = [
                {
                    "device": device,
                    "online": self._device_online(node, scope),
                    "metrics": scope.size,
                    "birth_ns": scope.birth_ns or None,
                    "death_ns": scope.death_ns or None,
                }
                for device, scope in sorted(node.devices.items())
            ]
            nodes.append(
                {
                    "group": group,
                    "edge_node": name,
                    "online": node.online,
                    "bd_seq": node.bd_seq,
                    "metrics": node.size,
                    "birth_ns": node.birth_ns or None,
                    "death_ns": node.death_ns or None,
                    "devices": devices,
                }
            )
        return nodes


def _bd_seq(metric: Metric) -> int | None:
    """The integer a bdSeq metric holds, or None: one of another type or null holds none.

    Read as protobuf's default, such a metric was 0, the bdSeq of a node's first connection,
    so any client could take that node offline with a bdSeq of text.
    """
    which = metric.WhichOneof("value")
    if metric.is_null or which not in {"int_value", "long_value"}:
        return None
    value: int = getattr(metric, which)
    return value


def _key(group: str, node: str, device: str | None) -> bytes:
    # MQTT topics cannot hold U+0000, so it cannot occur in a group, node or device id.
    parts = [group, node] if device is None else [group, node, device]
    return NOTE_PREFIX + "\0".join(parts).encode()


def _name_of(metric: Metric) -> str:
    """The metric's name; "" when absent or not UTF-8 (protobuf then hands over bytes)."""
    name = metric.name
    return name if isinstance(name, str) else ""


def _where(topic: SparkplugTopic) -> str:
    where = f"{topic.group}/{topic.node}"
    return where if topic.device is None else f"{where}/{topic.device}"
