"""Two per-message costs of paho 2.x removed, for incoming MQTT packets.

- paho builds its lookup tables (27 property names, with `list.index` calls) anew in every
  `Properties.__init__`, and `decode_publish` makes one per PUBLISH: under load that was a third
  of the gateway's CPU. `_TemplateProperties` copies tables built once per packet type (paho only
  reads them), and skips parsing when a packet has no properties, the usual case for sensors.
- Every `MQTTMessage` makes an `MQTTMessageInfo` with a `threading.Condition`, which only
  outgoing messages use (to wait for their publication); a profile put 7 % of the gateway's time
  in it. `_LazyInfoMessage` makes it on first use instead.
Behaviour is unchanged; tests/unit/test_pahofast.py checks both against paho's own.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from paho.mqtt import _packet
from paho.mqtt import client as paho_client
from paho.mqtt.properties import Properties

logger = logging.getLogger(__name__)
# Private attributes paho's Properties keeps besides the property values themselves.
_TABLES = ("packetType", "types", "names", "properties")
_NO_PROPERTIES = b"\x00"


class _TemplateProperties(Properties):
    _templates: ClassVar[dict[int, dict[str, Any]]] = {}

    def __init__(self, packetType: int) -> None:  # noqa: N803 - paho's parameter name
        template = self._templates.get(packetType)
        if template is None:
            built = Properties(packetType)  # type: ignore[no-untyped-call]
            template = self._templates[packetType] = {k: built.__dict__[k] for k in _TABLES}
        # Straight into __dict__: paho's __setattr__ only admits these four names anyway.
        self.__dict__.update(template)

    def unpack(self, buffer: bytes) -> tuple[Properties, int]:
        if buffer[:1] == _NO_PROPERTIES:
            return self, 1
        result: tuple[Properties, int] = super().unpack(buffer)  # type: ignore[no-untyped-call]
        return result


# The slot's descriptor, which the property below shadows and stores through.
_INFO_SLOT: Any = vars(paho_client.MQTTMessage)["info"]
_MESSAGE_SLOTS = frozenset(paho_client.MQTTMessage.__slots__)


class _LazyInfoMessage(paho_client.MQTTMessage):
    __slots__ = ()

    def __init__(self, mid: int = 0, topic: bytes = b"") -> None:
        self.timestamp = 0.0
        self.state = paho_client.mqtt_ms_invalid
        self.dup = False
        self.mid = mid
        self._topic = topic
        self.payload = b""
        self.qos = 0
        self.retain = False
        self.properties = None

    @property
    def info(self) -> paho_client.MQTTMessageInfo:
        try:
            info: paho_client.MQTTMessageInfo = _INFO_SLOT.__get__(self)
        except AttributeError:
            info = paho_client.MQTTMessageInfo(self.mid)
            _INFO_SLOT.__set__(self, info)
        return info

    @info.setter
    def info(self, value: paho_client.MQTTMessageInfo) -> None:
        _INFO_SLOT.__set__(self, value)


def install() -> bool:
    """Put both in place; False where paho has changed and its own classes stay."""
    installed = True
    current = getattr(_packet, "Properties", None)
    if current is not _TemplateProperties:
        if current is Properties:
            setattr(_packet, "Properties", _TemplateProperties)  # noqa: B010 - not public
        else:
            logger.debug("paho's packet module changed; keeping its own Properties")
            installed = False
    message = paho_client.MQTTMessage
    if message is not _LazyInfoMessage:
        # The copy of __init__ above must set every slot paho's sets but `info`.
        if {*_LAZY_SETS, "info"} == _MESSAGE_SLOTS:
            paho_client.MQTTMessage = _LazyInfoMessage  # type: ignore[misc]
        else:
            logger.debug("paho's MQTTMessage changed; keeping it")
            installed = False
    return installed


_LAZY_SETS = frozenset(
    {"timestamp", "state", "dup", "mid", "_topic", "payload", "qos", "retain", "properties"}
)
