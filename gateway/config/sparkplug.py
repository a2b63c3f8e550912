"""`[sparkplug]`: how Sparkplug B metrics become readings, and the gateway as a host application."""

from __future__ import annotations

from pydantic import Field

from gateway.config.section import Section


class SparkplugSettings(Section):
    """`[sparkplug]`: read by subscriptions with format = "sparkplug_b"."""

    # Metric name -> measurement. A metric not named here is written to the measurement of its
    # own name ("Sensors/Temperature"); a key ending in "/*" maps every metric under that
    # folder. The metric's value is the field below either way.
    measurements: dict[str, str] = Field(default_factory=dict)
    field: str = Field(default="value", min_length=1)
    # A DATA message the gateway cannot read (an alias no stored BIRTH defines, a sequence gap)
    # asks its edge node for a rebirth (NCMD "Node Control/Rebirth"), at most once per this
    # many seconds per node, so a node that cannot answer is not flooded.
    rebirth_interval_s: float = Field(default=30.0, gt=0)
    # Metric definitions kept from BIRTH messages, over all nodes and devices: bounds memory
    # against a node announcing millions of metrics. A BIRTH that would pass it is refused.
    max_aliases: int = Field(default=200_000, ge=1)
    # Edge nodes and devices whose state is kept (online, bdSeq, their metrics).
    max_nodes: int = Field(default=10_000, ge=1)
    # Set to act as a Sparkplug host application: the gateway publishes a retained
    # spBv1.0/STATE/<host_id> message ({"online": true}) when it connects, and the broker
    # publishes {"online": false} when it goes, so edge nodes that wait for their primary host
    # send to it only while it is up. Off by default.
    host_id: str | None = Field(default=None, min_length=1, pattern=r"^[^/+#]+$")
