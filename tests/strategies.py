"""Hypothesis strategies shared by the tests of the encoded forms of a reading."""

from __future__ import annotations

from hypothesis import strategies as st

# Mostly representable readings: control characters (refused, see test_lineproto) made
# Hypothesis discard so many examples that its health check failed now and then.
_CONTROL = "".join(map(chr, [*range(0x20), 0x7F]))
names = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters=_CONTROL),
    min_size=1,
    max_size=20,
)
values = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\r\n"), max_size=30),
)
readings = {
    "measurement": names,
    "tags": st.dictionaries(names, names, max_size=4),
    "fields": st.dictionaries(names, values, min_size=1, max_size=4),
    "ts": st.integers(-(2**63), 2**63 - 1),
}
