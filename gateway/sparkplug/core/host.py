"""The gateway as a Sparkplug B host application: its STATE messages (Sparkplug 3.0).

Pure. Edge nodes configured with a primary host application publish only while that host's
retained STATE message says it is online. The host publishes `{"online": true, "timestamp": T}`
after connecting and registers `{"online": false, "timestamp": T}` as its MQTT will, with the
same T, so the broker publishes it when the connection is lost; a clean stop publishes it
itself, since a clean DISCONNECT discards the will. Both retained, QoS 1. The host also
subscribes to its own STATE: an offline message arriving while it is connected (the late will
of a connection it has replaced, or another client's) is answered with the online one again,
so the retained message says what is true.
"""

from __future__ import annotations

from typing import NamedTuple

import orjson


def state_topic(host_id: str) -> str:
    """Where host application `host_id` publishes its STATE."""
    return f"spBv1.0/STATE/{host_id}"


def says_offline(payload: bytes) -> bool:
    """Whether a STATE message says its host is offline; what does not parse says nothing."""
    try:
        state = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return False
    return isinstance(state, dict) and state.get("online") is False


class HostState(NamedTuple):
    """One connection's STATE: where, and the timestamp both of its messages carry."""

    topic: str
    timestamp_ms: int

    @classmethod
    def of(cls, host_id: str, timestamp_ms: int) -> HostState:
        """The STATE of host `host_id` for a connection made at `timestamp_ms`."""
        return cls(state_topic(host_id), timestamp_ms)

    def payload(self, *, online: bool) -> bytes:
        """The JSON body of the online or offline message."""
        return orjson.dumps({"online": online, "timestamp": self.timestamp_ms})
