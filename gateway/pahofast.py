"""A faster paho `Properties` for incoming MQTT 5 packets.

paho 2.x builds its lookup tables (27 property names, with `list.index` calls) anew in every
`Properties.__init__`, and `decode_publish` makes one per PUBLISH: under load that was a third of
the gateway's CPU. `_TemplateProperties` copies tables built once per packet type (paho only reads
them), and skips parsing when a packet has no properties, which is the usual case for sensors.
Behaviour is unchanged; tests/unit/test_pahofast.py decodes packets both ways and compares.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from paho.mqtt import _packet
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


def install() -> bool:
    """Make paho's packet decoder use the template properties; False if paho has changed."""
    current = getattr(_packet, "Properties", None)
    if current is _TemplateProperties:
        return True
    if current is not Properties:
        logger.debug("paho's packet module changed; keeping its own Properties")
        return False
    setattr(_packet, "Properties", _TemplateProperties)  # noqa: B010 - not a public attribute
    return True
