"""The buffer's state as plain data: totals, capacity use and per-device backlog.

What `gateway status`, the read API's `/api/v1/status` and a parent of workers show; one
function makes it, so all three say the same.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.buffer.core.ledger import fifo_class, fifo_device

if TYPE_CHECKING:
    from gateway.buffer.core.ledger import DeviceState
    from gateway.buffer.store import Buffer


def snapshot(buffer: Buffer, now_ns: int, top: int | None = None) -> dict[str, Any]:
    """Totals, capacity use and per-device backlog (the `top` largest), as plain data."""
    totals = buffer.totals()
    devices = sorted(
        ((name, state) for name, state in buffer.devices().items() if state.readings),
        key=lambda item: (-item[1].readings, item[0]),
    )
    return {
        "path": str(buffer.path),
        "readings": totals.readings,
        "bytes": totals.nbytes,
        "capacity_bytes": buffer.capacity_bytes,
        "budget_bytes": buffer.budget_bytes,
        "fill_ratio": totals.nbytes / buffer.budget_bytes,
        "file_bytes": buffer.file_bytes(),
        "devices_with_backlog": totals.devices,
        "dead_letters": buffer.dead_letter_count(),
        "devices": [
            {
                "device": fifo_device(name),
                "device_class": fifo_class(name),
                "readings": state.readings,
                "bytes": state.nbytes,
                "oldest_ts_ns": state.oldest_ts_ns,
                "oldest_age_s": oldest_age_s(state, now_ns),
            }
            for name, state in devices[:top]
        ],
    }


def oldest_age_s(state: DeviceState, now_ns: int) -> float:
    """How old a FIFO's oldest buffered reading is, by its own timestamp."""
    return max(0.0, (now_ns - state.oldest_ts_ns) / 1e9)


def combine(path: str, views: list[dict[str, Any]]) -> dict[str, Any]:
    """One view of several environments: totals added, each device's backlog added up."""
    summed = ("readings", "bytes", "capacity_bytes", "budget_bytes", "file_bytes", "dead_letters")
    totals = {key: sum(v[key] for v in views) for key in summed}
    devices: dict[tuple[str, str], dict[str, Any]] = {}
    for device in (d for v in views for d in v["devices"]):
        key = (device["device"], device["device_class"])
        seen = devices.setdefault(key, {**device, "readings": 0, "bytes": 0})
        seen["readings"] += device["readings"]
        seen["bytes"] += device["bytes"]
        if device["oldest_ts_ns"] < seen["oldest_ts_ns"]:
            seen.update(oldest_ts_ns=device["oldest_ts_ns"], oldest_age_s=device["oldest_age_s"])
    return {
        "path": path,
        **totals,
        # The fullest environment: each worker admits against its own share of the budget.
        "fill_ratio": max(v["fill_ratio"] for v in views),
        "devices_with_backlog": len(devices),
        "environments": [{k: v for k, v in view.items() if k != "devices"} for view in views],
        "devices": sorted(devices.values(), key=lambda d: (-d["readings"], d["device"])),
    }
