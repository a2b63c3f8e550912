"""`[replication]`: a standby gateway on another box holding a replica of this one's buffer."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from gateway.config.section import Section

Role = Literal["off", "primary", "standby"]
Mode = Literal["sync", "async"]
StandbyAway = Literal["local", "hold"]


class ReplicationSettings(Section):
    """`[replication]`: off unless `role` says which of the pair this gateway starts as."""

    # "primary" takes readings from the broker and ships its journal to the standby; "standby"
    # applies what the primary ships and takes over the primary's MQTT session when it is
    # gone. A standby that took over is a primary until it is restarted as a standby.
    role: Role = "off"
    # This box's name within the pair: its replication connection's client id and what the
    # pair's state says. Two boxes of one pair need different names.
    node: str = Field(default="", pattern=r"^[A-Za-z0-9._-]*$", max_length=64)
    # "sync": a message is acknowledged to the broker only once the standby confirmed the
    # group commit holding it (a reading acknowledged is on two disks). "async": acknowledged
    # after the local commit; the standby's lag is a metric.
    mode: Mode = "sync"
    # The pair's topics; both boxes must use the same prefix, and no sensor may publish under it.
    topic_prefix: str = Field(default="gateway/replication", min_length=1, pattern=r"^[^+#]+$")
    # A sync primary waits this long for the standby's confirmation before it counts the
    # standby as away.
    confirm_timeout_s: float = Field(default=2.0, gt=0, le=300)
    # With the standby away in sync mode: "local" acknowledges after the local commit (local
    # durability, visibly degraded); "hold" acknowledges nothing, so the broker keeps the
    # messages until the standby is back.
    standby_away: StandbyAway = "local"
    # The standby takes over this long after the primary's state said offline (its MQTT will).
    takeover_after_s: float = Field(default=1.0, ge=0, le=300)
    # Keepalive of the replication connection: how long a box that vanished without closing
    # its connection (power loss) takes to be noticed, times 1.5.
    keepalive_s: int = Field(default=5, ge=2, le=3600)

    @model_validator(mode="after")
    def _node_named(self) -> ReplicationSettings:
        if self.role != "off" and not self.node:
            msg = "node: name this box within the pair (letters, digits, '.', '_', '-')"
            raise ValueError(msg)
        return self
