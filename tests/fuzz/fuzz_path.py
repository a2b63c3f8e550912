"""Coverage-guided fuzzing of the whole ingest path with atheris: `python tests/fuzz/fuzz_path.py`.

Each input is a raw MQTT message (tests/wholepath.py `split_message`), run from its topic and
payload bytes through decoding, the buffer's stored form, coalescing and the write body to a
parse of that body. Any exception other than the contract's assertions is a finding. Extra
arguments go to libFuzzer; pass a copy of tests/fuzz/corpus/ as the corpus (libFuzzer adds to it).
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).parents[2]))

with atheris.instrument_imports():
    from gateway.ingest.core.decode import Decoder
    from tests.wholepath import LIMITS, SUBSCRIPTIONS, check_message, split_message

DECODER = Decoder(SUBSCRIPTIONS, LIMITS)


def test_one_input(data: bytes) -> None:
    check_message(DECODER, *split_message(data))


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
