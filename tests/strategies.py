"""Hypothesis strategies shared by the tests of the encoded forms of a reading."""

from __future__ import annotations

from hypothesis import strategies as st

names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=20)
values = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
)
readings = {
    "measurement": names,
    "tags": st.dictionaries(names, names, max_size=4),
    "fields": st.dictionaries(names, values, min_size=1, max_size=4),
    "ts": st.integers(-(2**63), 2**63 - 1),
}
