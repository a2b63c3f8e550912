"""Names of summary FIFOs: a level beside the raw FIFO, seen through by device and class."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.buffer.core.ledger import (
    fifo_class,
    fifo_device,
    fifo_level,
    fifo_name,
    level_fifo,
    raw_fifo,
)
from gateway.config.mqtt import DEFAULT_DEVICE_CLASS
from tests.strategies import names

classes = st.one_of(
    st.just(DEFAULT_DEVICE_CLASS), st.from_regex(r"[A-Za-z0-9_.-]{1,32}", fullmatch=True)
)


@given(names, classes, st.integers(0, 7))
def test_a_level_fifo_names_its_level_device_and_class(
    device: str, device_class: str, level: int
) -> None:
    """Every level of any device and class reads back its level, raw FIFO, device and class."""
    raw = fifo_name(device, device_class)
    fifo = level_fifo(raw, level)
    assert fifo_level(fifo) == level
    assert raw_fifo(fifo) == raw
    assert fifo_device(fifo) == device
    assert fifo_class(fifo) == device_class
    assert (fifo == raw) == (level == 0)


@given(names, classes, st.integers(0, 7), st.integers(0, 7))
def test_a_level_is_taken_from_the_raw_fifo(
    device: str, device_class: str, level: int, other: int
) -> None:
    """The level FIFO of a level FIFO is the raw FIFO's, never a suffix upon a suffix."""
    raw = fifo_name(device, device_class)
    assert level_fifo(level_fifo(raw, other), level) == level_fifo(raw, level)


def test_levels_of_one_device_are_distinct_fifos() -> None:
    """A device's raw FIFO and its seven summary levels are eight different names."""
    raw = fifo_name("pump-1", "slow")
    fifos = [level_fifo(raw, level) for level in range(8)]
    assert len(set(fifos)) == 8
    assert [fifo_level(f) for f in fifos] == list(range(8))
