"""Progress lines: none for short work, then at most one a second."""

from __future__ import annotations

import io

from gateway.service.progress import Ticker, scan_progress


def test_a_line_a_second_and_none_in_the_first_second() -> None:
    now = [100.0]
    out = io.StringIO()
    ticker = Ticker("verify-buffer", out=out, clock=lambda: now[0])
    tell = scan_progress(ticker)
    for step in range(1, 13):
        now[0] += 0.25  # 12 FIFOs scanned over 3 s
        tell(step, 12, step * 1000)
    lines = out.getvalue().splitlines()
    assert lines == [
        "verify-buffer: 4 of 12 devices scanned, 4,000 readings",
        "verify-buffer: 8 of 12 devices scanned, 8,000 readings",
        "verify-buffer: 12 of 12 devices scanned, 12,000 readings",
    ]
    quick = io.StringIO()
    short = Ticker("x", out=quick, clock=lambda: now[0])
    short.tell("done already")
    assert quick.getvalue() == ""
