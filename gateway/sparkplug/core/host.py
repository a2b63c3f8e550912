"""The gateway as a Sparkplug B host application: its STATE messages (Sparkplug 3.0).

Pure. Edge nodes configured with a primary host application publish only while that host's
retained STATE message says it is online. The host publishes `{"online": true, "timestamp": T}`
after connecting and registers `{"online": false, "timestamp": T}` as its MQTT will, with the
same T, so the broker publishes it when the connection is lost; a clean stop publishes it
itself, since a clean DISCONNECT discards the will. Both retained, QoS 1.
"""

from __future__ import annotations

from typing import NamedTuple

import orjson


class HostState(NamedTuple):
    """One connection's STATE: where, and the timestamp both of its messages carry."""

    topic: str
    timestamp_ms: int

    @classmethod
    def of(cls, host_id: str, timestamp_ms: int) -> HostState:
        """The STATE of host `host_id` for a connection made at `timestamp_ms`."""
        return cls(f"spBv1.0/STATE/{host_id}", timestamp_ms)

    def payload(self, *, online: bool) -> bytes:
        """The JSON body of the online or offline message."""
        return orjson.dumps({"online": online, "timestamp": self.timestamp_ms})
