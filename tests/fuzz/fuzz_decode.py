"""Coverage-guided fuzzing of the decoders with atheris: `python tests/fuzz/fuzz_decode.py`.

Any exception other than an assertion about the contract is a finding; the contract is the one
tests/unit/test_hostile_input.py states. Extra arguments go to libFuzzer (`-runs=100000`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).parents[2]))

with atheris.instrument_imports():
    from gateway.decode import Decoder
    from gateway.lineparse import parse_lines
    from gateway.lineproto import encode_point
    from tests.unit.test_hostile_input import NOW_NS, SUBSCRIPTIONS

DECODER = Decoder(SUBSCRIPTIONS)
PREFIXES = ("j/", "l/", "v/", "")


def test_one_input(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    topic = PREFIXES[provider.ConsumeIntInRange(0, 3)] + provider.ConsumeUnicodeNoSurrogates(40)
    payload = provider.ConsumeBytes(provider.remaining_bytes())
    result = DECODER.decode(topic, payload, NOW_NS)
    assert result.readings or result.errors
    for reading in result.readings:
        ((measurement, tags, fields, ts),) = parse_lines(encode_point(reading))
        assert (measurement, tuple(tags), tuple(fields), ts) == reading[1:]


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
