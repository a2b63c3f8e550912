"""The buffer's state as plain data: totals, capacity use and per-device backlog.

What `gateway status`, the read API's `/api/v1/status` and a parent of workers show; one
function makes it, so all three say the same. Readings are raw readings; the summaries the
compact policy made of older ones are counted apart, by step ("60s"), and a device's summaries
(kept in FIFOs beside its raw one) are shown on its row.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from gateway.buffer.core.ledger import fifo_class, fifo_device, fifo_level, raw_fifo
from gateway.observe.accounting import step_label

if TYPE_CHECKING:
    from collections.abc import Sequence

    from gateway.buffer.core.ledger import DeviceState
    from gateway.buffer.store import Buffer


def snapshot(
    buffer: Buffer, now_ns: int, top: int | None = None, steps_s: Sequence[int] = ()
) -> dict[str, Any]:
    """Totals, capacity use and per-device backlog (the `top` largest), as plain data.

    `steps_s`: the compact policy's steps, which name the summary levels.
    """
    totals = buffer.totals()
    levels: Counter[int] = Counter()
    rows: dict[str, dict[str, Any]] = {}
    for name, state in buffer.devices().items():
        if not state.readings:
            continue
        level = fifo_level(name)
        levels[level] += state.readings
        raw = raw_fifo(name)
        row = rows.setdefault(raw, _row(raw))
        row["readings" if level == 0 else "summaries"] += state.readings
        row["bytes"] += state.nbytes
        if state.oldest_ts_ns < row["oldest_ts_ns"]:
            row.update(oldest_ts_ns=state.oldest_ts_ns, oldest_age_s=oldest_age_s(state, now_ns))
    devices = sorted(rows.values(), key=_largest_first)
    return {
        "path": str(buffer.path),
        "readings": levels[0],
        "summaries": {
            step_label(level, steps_s): levels[level] for level in sorted(levels) if level
        },
        "bytes": totals.nbytes,
        "capacity_bytes": buffer.capacity_bytes,
        "budget_bytes": buffer.budget_bytes,
        "fill_ratio": totals.nbytes / buffer.budget_bytes,
        "file_bytes": buffer.file_bytes(),
        "devices_with_backlog": totals.devices,
        "dead_letters": buffer.dead_letter_count(),
        "devices": devices[:top],
    }


def _row(fifo: str) -> dict[str, Any]:
    """A device's row before its FIFOs are added to it."""
    return {
        "device": fifo_device(fifo),
        "device_class": fifo_class(fifo),
        "readings": 0,
        "summaries": 0,
        "bytes": 0,
        "oldest_ts_ns": 2**63 - 1,
        "oldest_age_s": 0.0,
    }


def _largest_first(row: dict[str, Any]) -> tuple[int, str]:
    return -(row["readings"] + row["summaries"]), row["device"]


def oldest_age_s(state: DeviceState, now_ns: int) -> float:
    """How old a FIFO's oldest buffered reading is, by its own timestamp."""
    return max(0.0, (now_ns - state.oldest_ts_ns) / 1e9)


def combine(path: str, views: list[dict[str, Any]]) -> dict[str, Any]:
    """One view of several environments: totals added, each device's backlog added up."""
    summed = ("readings", "bytes", "capacity_bytes", "budget_bytes", "file_bytes", "dead_letters")
    totals = {key: sum(v[key] for v in views) for key in summed}
    summaries: Counter[str] = Counter()
    for view in views:
        summaries.update(view.get("summaries", {}))
    devices: dict[tuple[str, str], dict[str, Any]] = {}
    for device in (d for v in views for d in v["devices"]):
        key = (device["device"], device["device_class"])
        seen = devices.setdefault(key, {**device, "readings": 0, "summaries": 0, "bytes": 0})
        seen["readings"] += device["readings"]
        seen["summaries"] += device.get("summaries", 0)
        seen["bytes"] += device["bytes"]
        if device["oldest_ts_ns"] < seen["oldest_ts_ns"]:
            seen.update(oldest_ts_ns=device["oldest_ts_ns"], oldest_age_s=device["oldest_age_s"])
    return {
        "path": path,
        **totals,
        "summaries": dict(summaries),
        # The fullest environment: each worker admits against its own share of the budget.
        "fill_ratio": max(v["fill_ratio"] for v in views),
        "devices_with_backlog": len(devices),
        "environments": [{k: v for k, v in view.items() if k != "devices"} for view in views],
        "devices": sorted(devices.values(), key=_largest_first),
    }
