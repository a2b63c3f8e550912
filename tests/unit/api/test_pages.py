"""Pages of the device list merged from the workers' pages: nothing skipped, nothing twice."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from gateway.api.core.pages import merge_pages, start_after

NAMES = st.text("ab!~", min_size=1, max_size=4)


def worker_page(held: dict[str, int], after: str, limit: int) -> dict[str, Any]:
    """What one worker answers: its devices after `after`, `limit` of them, and a cursor."""
    names = sorted(n for n in held if n >= start_after(after))
    chosen = names[:limit]
    return {
        "devices": [
            {"device": n, "buffered_readings": held[n], "oldest_buffered_age_s": None,
             "last_seen": None}
            for n in chosen
        ],
        "next": chosen[-1] if len(names) > limit else None,
        "total": len(held),
    }  # fmt: skip


@given(st.lists(st.dictionaries(NAMES, st.integers(0, 9)), min_size=1, max_size=3),
       st.integers(1, 4))  # fmt: skip
def test_paging_the_merged_list_visits_every_device_once_with_its_whole_backlog(
    workers: list[dict[str, int]], limit: int
) -> None:
    """Following `next` through merged pages lists every device of any worker once, in name
    order, with the backlogs of all workers added."""
    expected: dict[str, int] = {}
    for held in workers:
        for name, n in held.items():
            expected[name] = expected.get(name, 0) + n
    seen: list[tuple[str, int]] = []
    after = ""
    for _ in range(len(expected) + 1):
        page = merge_pages([worker_page(h, after, limit) for h in workers], limit)
        assert len(page["devices"]) <= limit
        seen += [(r["device"], r["buffered_readings"]) for r in page["devices"]]
        if page["next"] is None:
            break
        after = page["next"]
    assert seen == sorted(expected.items())


@given(st.text(), st.text(min_size=1))
def test_a_page_after_a_cursor_starts_at_the_first_name_past_it(after: str, name: str) -> None:
    """A name is at or past the start exactly when it sorts after the cursor."""
    assert (name >= start_after(after)) == (name > after)
