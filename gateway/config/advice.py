"""Warnings about a valid configuration that an operator would want to hear of.

Not errors: the gateway runs as configured. `gateway check-config` prints them, and the service
logs them once at start.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.config.settings import Settings

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def warnings(settings: Settings) -> list[str]:
    """What is risky in `settings`, one sentence each naming the key."""
    found = []
    metrics = settings.metrics
    host, _ = metrics.host_port
    # The value, not its presence: an empty token is no token (the loader refuses one too).
    has_token = metrics.token is not None and bool(metrics.token.get_secret_value().strip())
    if metrics.enabled and not has_token and not is_loopback(host):
        found.append(
            f"metrics.listen: {metrics.listen} can be reached from other hosts and [metrics] "
            "has no token: anyone who reaches it reads the metrics, the status and the read API "
            "(set [metrics] token_file, or listen on 127.0.0.1)"
        )
    return found


def is_loopback(host: str) -> bool:
    """Whether a listen host is reachable from this machine only (an empty host is every one)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything
