"""Pages of `GET /api/v1/devices`: devices in name order, `limit` at a time, after a cursor.

The cursor is the last name of the previous page (`after`), so a page does not shift when
devices come or go before it, and an answer costs its own length rather than the fleet's:
30,000 devices were one answer of megabytes that held the event loop for hundreds of ms.
"""

from __future__ import annotations

from typing import Any

DEFAULT_PAGE, MAX_PAGE = 100, 1000


def start_after(after: str) -> str:
    """The smallest string that sorts after `after`: pages start there, inclusive."""
    return after + "\x00" if after else ""


def merge_pages(pages: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    """One page from the workers' pages of one request (each worker holds part of a device).

    A worker with more devices may hold one just after its last row and before others' later
    rows, so the merged page ends at the earliest last row of a worker that has more; a device
    several workers hold is counted once by each in `total`.
    """
    rows: dict[str, dict[str, Any]] = {}
    ends = [page["devices"][-1]["device"] for page in pages if page.get("next")]
    end = min(ends) if ends else None
    for page in pages:
        for row in page["devices"]:
            if end is not None and row["device"] > end:
                continue
            seen = rows.get(row["device"])
            if seen is None:
                rows[row["device"]] = dict(row)
                continue
            seen["buffered_readings"] += row["buffered_readings"]
            for key in ("oldest_buffered_age_s", "last_seen"):
                # ISO 8601 UTC times and ages both compare in their natural order.
                values = [v for v in (seen[key], row[key]) if v is not None]
                seen[key] = max(values) if values else None
    names = sorted(rows)
    more = end is not None or len(names) > limit
    kept = names[:limit]
    return {
        "devices": [rows[name] for name in kept],
        "next": kept[-1] if more and kept else None,
        "total": sum(page.get("total", 0) for page in pages),
    }
