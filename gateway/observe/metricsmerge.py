"""One /metrics page from the pages of several workers, each series labelled by its worker.

Labelled rather than summed: a worker that restarts starts its counters from zero, and
Prometheus sees that as a reset of that worker's series only (a sum would drop, and `rate()`
would count the other workers' totals again). The accounting identities hold per worker, and
`sum without (worker) (...)` gives the gateway's totals.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

LABEL = "worker"


def merge(pages: Sequence[tuple[str, str]]) -> bytes:
    """The Prometheus text of `(worker, page)` pairs, one family per name, in first-seen order."""
    families: dict[str, Metric] = {}
    for worker, page in pages:
        for family in text_string_to_metric_families(page):
            merged = families.setdefault(
                family.name, Metric(family.name, family.documentation, family.type)
            )
            for sample in family.samples:
                merged.add_sample(sample.name, {**sample.labels, LABEL: worker}, sample.value)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(list(families.values())))
    return generate_latest(registry)


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families
