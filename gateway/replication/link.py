"""Each box's own connection to the broker for replication, beside the sensors' session.

Its client id is the pair's session id with the box's node name, so the two boxes never take
each other's connection and neither touches the sensors' session until a takeover. A clean
session: what a standby misses while away it asks for again (gateway/replication/protocol.py),
the broker need not keep it. Its will marks the box's role offline, retained, so the other box
learns of a death from the broker as soon as the connection drops (or after 1.5 keepalives).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import aiomqtt

from gateway.ingest.mqtt import make_client
from gateway.replication.protocol import Role, State, Topics

if TYPE_CHECKING:
    from gateway.config.settings import Settings

# Snapshot parts and journal records of a catch-up are sent this many bytes at a time at most.
PART_BYTES = 256 << 10
# Reconnecting after a lost connection waits this long, doubled up to the most.
RECONNECT_INITIAL_S = 0.2
RECONNECT_MAX_S = 5.0


def topics_of(settings: Settings) -> Topics:
    """The pair's topics."""
    return Topics.of(settings.replication.topic_prefix, settings.mqtt.client_id)


def connect(settings: Settings, role: Role, offline: State | None = None) -> aiomqtt.Client:
    """This box's replication client, its will saying its `role` is offline (as `offline`)."""
    r = settings.replication
    s = settings.mqtt.model_copy(
        update={
            "client_id": f"{settings.mqtt.client_id}.{r.node}.replication",
            "persistent_session": False,
            "keepalive_s": r.keepalive_s,
        }
    )
    said = (offline or State(r.node, online=False)).encode()
    will = aiomqtt.Will(topics_of(settings).state(role), said, qos=1, retain=True)
    client = make_client(s, will)
    # Publishes are queued in order without limit; a catch-up awaits each of its own.
    client._client.max_inflight_messages_set(1000)  # noqa: SLF001
    return client
