"""The negative cache of read-API misses: remembered for its TTL, bounded, oldest out."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.api.core.misses import NegativeCache


def test_a_miss_is_remembered_until_its_ttl_has_passed() -> None:
    """Missing within the TTL, not at or after it; the expired name is dropped."""
    cache = NegativeCache(ttl_s=30.0, max_entries=10)
    cache.remember("ghost", now=100.0)
    assert cache.is_missing("ghost", now=129.9)
    assert not cache.is_missing("ghost", now=130.0)
    assert len(cache) == 0
    assert not cache.is_missing("other", now=100.0)


def test_the_oldest_name_goes_first_when_the_bound_is_reached() -> None:
    """At the bound the least recently remembered name is dropped; a re-noted one moves last."""
    cache = NegativeCache(ttl_s=30.0, max_entries=2)
    cache.remember("a", now=1.0)
    cache.remember("b", now=2.0)
    cache.remember("a", now=3.0)
    cache.remember("c", now=4.0)
    assert [cache.is_missing(n, now=5.0) for n in ("a", "b", "c")] == [True, False, True]


def test_a_zero_ttl_or_size_remembers_nothing() -> None:
    """Turned off by either setting."""
    for cache in (NegativeCache(0.0, 10), NegativeCache(30.0, 0)):
        cache.remember("a", now=1.0)
        assert not cache.is_missing("a", now=1.0)


@given(st.lists(st.tuples(st.integers(0, 50), st.floats(0, 5)), max_size=300))
def test_never_more_than_the_bound_and_never_past_a_deadline(
    steps: list[tuple[int, float]],
) -> None:
    """Any sequence of misses in time: the size stays bounded; a name is missing only within
    the TTL of when it was last remembered."""
    cache = NegativeCache(ttl_s=3.0, max_entries=8)
    now = 0.0
    last: dict[str, float] = {}
    for name, step in steps:
        now += step
        cache.remember(str(name), now)
        last[str(name)] = now
        assert len(cache) <= 8
    for name, at in last.items():
        if cache.is_missing(name, now):
            assert now < at + 3.0
