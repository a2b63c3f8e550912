"""InfluxDB 3's native write, `POST /api/v3/write_lp`, with partial writes reconciled by line.

With `accept_partial=true` the database stores every line it can and answers 400 (422 past a
schema limit) with the lines it refused, each with its number in the body (from 1) and its reason:

    {"error": "partial write of line protocol occurred",
     "data": [{"original_line": "...", "line_number": 2, "error_message": "..."}]}

It lists at most `PARTIAL_LINES_LISTED` of them. `partial_lines` reads that answer into a
`SinkPartial`; the flusher (gateway/flush/refusals.py) moves the listed lines to the dead
letters and writes again whatever a full list may have left unlisted. Any other answer is
classified as for the other APIs (`classify`): 413 splits the batch, 503 honours Retry-After.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from gateway.errors import SinkError, SinkPartial
from gateway.flush.sink import V1Sink, classify

if TYPE_CHECKING:
    from collections.abc import Mapping

    from gateway.config.sections import InfluxSettings

PARTIAL_ERROR = "partial write of line protocol occurred"
# The most refused lines one answer lists (InfluxDB 3 Core's documented bound).
PARTIAL_LINES_LISTED = 100
# 400 for lines it could not parse or store; 422 when a line would pass a schema limit (more
# tables or columns than the server allows), with the same list.
PARTIAL_STATUSES = frozenset({400, 422})


def partial_lines(status: int, body: str, where: str) -> SinkPartial | None:
    """The refused lines of a partial write's answer; None for any other answer."""
    data = _partial_data(body) if status in PARTIAL_STATUSES else None
    if not data:
        return None
    lines: list[tuple[int, str]] = []
    for item in data:
        if not isinstance(item, dict):
            return None
        number = item.get("line_number")
        # bool is an int to Python; a line number of true is no line number.
        if not isinstance(number, int) or isinstance(number, bool) or number < 1:
            return None
        reason = item.get("error_message")
        said = reason[:300] if isinstance(reason, str) else "refused, no reason given"
        lines.append((number, f"{where}: HTTP {status}: {said}"))
    return SinkPartial(
        f"{where}: HTTP {status}: {len(lines)} line(s) refused, the rest stored",
        lines,
        PARTIAL_LINES_LISTED,
    )


def _partial_data(body: str) -> list[object] | None:
    """The list of refused lines of a partial write's JSON answer, if `body` is one."""
    try:
        answer = json.loads(body)
    except ValueError:
        return None
    if not isinstance(answer, dict) or answer.get("error") != PARTIAL_ERROR:
        return None
    data = answer.get("data")
    return data if isinstance(data, list) else None


class V3Sink(V1Sink):
    """InfluxDB 3 Core and Enterprise: `/api/v3/write_lp` into `database`.

    A POST and a ping as for `/write`; the endpoint, its parameters, the token and the reading
    of a partial write are its own. A partial write raises `SinkPartial`.
    """

    def __init__(self, settings: InfluxSettings) -> None:
        """Prepare the endpoint; connections open on the first write."""
        super().__init__(settings)
        self._url = f"{settings.url}/api/v3/write_lp"
        self._params = {
            "db": settings.database or "",
            "precision": "nanosecond",
            "accept_partial": "true",
            "no_sync": "true" if settings.no_sync else "false",
        }
        self._auth = None
        token = settings.token.get_secret_value() if settings.token else ""
        # InfluxDB 3 asks for the token on /ping too, unless started without auth.
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}

    def _outcome(self, status: int, headers: Mapping[str, str], body: str) -> SinkError | None:
        return v3_outcome(status, headers, body, self._where)


def v3_outcome(status: int, headers: Mapping[str, str], body: str, where: str) -> SinkError | None:
    """The error a write_lp answer stands for; None when every line was stored."""
    partial = partial_lines(status, body, where)
    if partial is not None:
        return partial
    outcome = classify(status, headers, body, where)
    return outcome if isinstance(outcome, SinkError) else None
