"""A primary and a standby gateway of one pair, as the replication tests start and read them."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from gateway.tools import servers, simulate
from tests.gatewayproc import simulated_plan, wait_for

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.gatewayproc import GatewayProcess

FLUSH = "linger_s = 0.2\nretry_initial_s = 0.2\nretry_max_s = 1\nprobe_interval_s = 0.5\n"


def sink(vm: servers.Server) -> str:
    """The [influx] body of a VictoriaMetrics."""
    return f'url = "{vm.url}"\napi = "v2"\norg = "o"\nbucket = "b"\n'


def replication(node: str, role: str, extra: str = "") -> str:
    """A [replication] section."""
    return f'[replication]\nrole = "{role}"\nnode = "{node}"\n{extra}'


def stored(url: str, run_id: str) -> int:
    """Readings of the run in VictoriaMetrics: distinct points, each series' timestamps.

    Both boxes of a pair may write a reading (the old primary delivered it, the replica still
    held it): the same point twice, which VictoriaMetrics keeps as two samples unless it
    deduplicates (`-dedup.minScrapeInterval`); its queries read one.
    """
    return sum(
        len(set(s["timestamps"]))
        for s in servers.victoria_export(url, f'telemetry_temp{{run="{run_id}"}}')
    )


def role(gw: GatewayProcess) -> str | None:
    """The role the gateway's metrics say it holds."""
    m = gw.metrics()
    for name in ("primary", "standby", "deposed"):
        if m.get(f"gateway_replication_role{{role={name}}}") == 1:
            return name
    return None


def durability(gw: GatewayProcess) -> str | None:
    """What the primary's acks mean now: sync, degraded or async."""
    m = gw.metrics()
    for name in ("sync", "degraded", "async"):
        if m.get(f"gateway_replication_durability{{state={name}}}") == 1:
            return name
    return None


def start(
    gateway: Callable[..., GatewayProcess], vm: servers.Server, node: str, how: str, extra: str = ""
) -> GatewayProcess:
    """A gateway of the pair: "primary" (waits until connected) or "standby"."""
    text = replication(node, how, extra)
    if how == "primary":
        return gateway(sink(vm), flush=FLUSH, extra=text)
    gw = gateway(sink(vm), flush=FLUSH, extra=text, wait_connected=False)
    wait_for(lambda: role(gw) == "standby", 30, f"{node} following as the standby")
    return gw


def start_pair(
    gateway: Callable[..., GatewayProcess], vm: servers.Server, extra: str = ""
) -> tuple[GatewayProcess, GatewayProcess]:
    """Node "a" the primary, "b" its standby, the primary's acks waiting for it."""
    primary = start(gateway, vm, "a", "primary", extra)
    standby = start(gateway, vm, "b", "standby", extra)
    wanted = "async" if 'mode = "async"' in extra else "sync"
    wait_for(lambda: durability(primary) == wanted, 30, f"the primary {wanted}")
    return primary, standby


def publish(port: int, run_id: str, count: int, devices: int, *, after: int = 0) -> None:
    """Publish `count` readings of the run's sequence from reading `after` on; all acked."""
    plan = dataclasses.replace(simulated_plan(port, run_id, after + count, devices), skip=after)
    assert simulate.run(plan).published == count
