"""The metrics of a replicated pair (gateway/replication): role, peer, lag, what went across."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

ROLES = ("primary", "standby", "deposed")
DURABILITIES = ("sync", "degraded", "async")


class ReplicationMetrics:
    """The `gateway_replication_*` families."""

    def __init__(self, registry: CollectorRegistry) -> None:
        """Register the families on `registry`."""
        r = registry
        self.role = Gauge(
            "gateway_replication_role",
            "1 for the role this gateway holds in its pair (none without replication)",
            ["role"],
            registry=r,
        )
        self.peer_up = Gauge(
            "gateway_replication_peer_up",
            "1 while the other box of the pair says it is up (its retained state)",
            registry=r,
        )
        self.durability = Gauge(
            "gateway_replication_durability",
            "1 for what an acknowledgement means now: sync (on both boxes), degraded (a sync "
            "primary whose standby is away: local only), async",
            ["state"],
            registry=r,
        )
        self.lag_records = Gauge(
            "gateway_replication_lag_records",
            "Journal records committed here that the standby has not confirmed",
            registry=r,
        )
        self.lag_seconds = Gauge(
            "gateway_replication_lag_seconds",
            "How long the standby has had records to confirm without confirming them",
            registry=r,
        )
        self.held_acks = Gauge(
            "gateway_replication_held_acks",
            "Group commits whose MQTT acks wait for the standby's confirmation",
            registry=r,
        )
        self.shipped = Counter(
            "gateway_replication_records_shipped",
            "Journal records the primary sent its standby",
            registry=r,
        )
        self.applied = Counter(
            "gateway_replication_records_applied",
            "Journal records the standby applied to its replica and committed",
            registry=r,
        )
        self.snapshots = Counter(
            "gateway_replication_snapshots",
            "Whole-buffer snapshots sent (primary) or installed (standby)",
            registry=r,
        )
        self.unconfirmed_acks = Counter(
            "gateway_replication_unconfirmed_acks",
            "Group commits acknowledged without the standby's confirmation in sync mode",
            registry=r,
        )
        self.confirmed = Gauge(
            "gateway_replication_confirmed_record",
            "The newest journal record the standby confirmed (primary) or applied (standby)",
            registry=r,
        )
        self.takeovers = Counter(
            "gateway_replication_takeovers",
            "Times this gateway took over as primary",
            registry=r,
        )

    def set_role(self, role: str) -> None:
        """Mark `role` as the one held."""
        for name in ROLES:
            self.role.labels(name).set(int(name == role))

    def set_durability(self, state: str) -> None:
        """Mark what an acknowledgement means now."""
        for name in DURABILITIES:
            self.durability.labels(name).set(int(name == state))
