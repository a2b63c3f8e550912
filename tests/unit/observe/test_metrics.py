"""The accounting's metrics come from one snapshot: summaries by step, raw readings apart."""

from __future__ import annotations

from collections import Counter

from prometheus_client import CollectorRegistry

from gateway.buffer.core.ledger import Compacted
from gateway.observe.accounting import SUMMARY_OUTCOMES, Accounting
from gateway.observe.metrics import Metrics


def _metrics() -> tuple[Metrics, CollectorRegistry]:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.summary_steps_s = (60, 600, 3600)
    metrics.accounting = Accounting(recovered=50, summaries_recovered={1: 3})
    return metrics, registry


def test_summaries_are_exported_by_step_and_outcome() -> None:
    """Compacted, delivered and damaged summaries show per step and per outcome."""
    metrics, registry = _metrics()
    acc = metrics.accounting
    acc.committed(accepted=200, invalid=0, suppressed={"telemetry": 7})
    acc.compacted(
        Compacted(
            summarised=Counter(telemetry=120, default=30),
            made=Counter({1: 12, 2: 2}),
            resummarised=Counter({1: 5}),
            appended=14,
        )
    )
    acc.removed(40, 0, summaries_delivered={1: 4})
    metrics.buffer_damaged(1, {("damaged", "default"): 10}, {2: 1})

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("gateway_readings_total", outcome="summarised") == 150
    assert value("gateway_readings_total", outcome="suppressed") == 7
    assert value("gateway_readings_summarised_total", device_class="telemetry") == 120
    assert value("gateway_readings_summarised_total", device_class="default") == 30
    assert value("gateway_readings_suppressed_total", device_class="telemetry") == 7
    # Raw readings only: 50 + 200 - 150 summarised - 40 delivered - 10 damaged.
    assert value("gateway_buffer_readings") == 50
    assert value("gateway_summaries_total", step="60s") == 12
    assert value("gateway_summaries_total", step="600s") == 2
    assert value("gateway_summaries_total", step="3600s") == 0
    assert value("gateway_buffer_summaries", step="60s") == 3 + 12 - 5 - 4
    assert value("gateway_buffer_summaries", step="600s") == 1
    assert value("gateway_buffer_summaries", step="3600s") == 0
    points = {
        outcome: value("gateway_summary_points_total", outcome=outcome)
        for outcome in SUMMARY_OUTCOMES
    }
    assert points == {
        "made": 14,
        "recovered": 3,
        "delivered": 4,
        "dead_lettered": 0,
        "resummarised": 5,
        "dropped": 1,
    }
    buffered = sum(
        value("gateway_buffer_summaries", step=step) or 0 for step in ("60s", "600s", "3600s")
    )
    assert points["made"] + points["recovered"] == (
        points["delivered"]
        + points["dead_lettered"]
        + points["resummarised"]
        + points["dropped"]
        + buffered
    )


def test_a_level_past_the_configured_steps_keeps_its_number() -> None:
    """Summaries of a level the shortened ladder no longer names are still shown."""
    metrics, registry = _metrics()
    metrics.summary_steps_s = (60,)
    assert registry.get_sample_value("gateway_buffer_summaries", {"step": "level 2"}) is None
    metrics.accounting.compacted(Compacted(made=Counter({2: 4})))
    assert registry.get_sample_value("gateway_buffer_summaries", {"step": "level 2"}) == 4
    assert registry.get_sample_value("gateway_summaries_total", {"step": "60s"}) == 0
