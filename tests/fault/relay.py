"""A fault-injecting HTTP relay between the gateway and a real InfluxDB 1.x, for the fault tests.

It listens on a free loopback port and passes every request on to the database, except that
while `faulty` is set it answers some `/write` requests itself: a 503 or a 500 without passing
the body on, or no answer at all (the connection is dropped). Now and then it passes a write on
and then drops the connection anyway: the points land, but the gateway learns nothing and sends
them again. Which write meets which fault is a fixed pattern of its sequence number (`fault_for`),
so a run is reproducible.

It records, by (measurement, device, timestamp ns), the points of every write the database took:
those the gateway was told of (`confirmed`, once per write that carried them, so a point sent
twice shows twice) and those it was not (`unconfirmed`). A test compares these with the
gateway's counters and with what the database holds.

It also counts the queries (`/query`) it passes on, and holds them while `queries_open` is
clear: a test sees how many reach the database while they are in flight.
"""

from __future__ import annotations

import gzip
import http.client
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from collections.abc import Iterator

# Request headers that belong to one hop, not to the request.
HOP_HEADERS = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "date", "server"}
)
HTTP_OK_MIN, HTTP_OK_MAX = 200, 299
UPSTREAM_TIMEOUT_S = 30.0

Key = tuple[str, str, int]


def fault_for(n: int) -> str:
    """What the relay does with the `n`th write (from 0) while faulty.

    Every other write is refused, mostly with a 503, sometimes a 500 or a dropped connection;
    one in ten of the rest lands but its answer is lost.
    """
    if n % 2:
        if n % 14 == 7:
            return "500"
        if n % 22 == 11:
            return "drop"
        return "503"
    if n % 20 == 10:
        return "lost_answer"
    return "pass"


def point_keys(body: bytes, encoding: str | None) -> Iterator[Key]:
    """(measurement, device tag, timestamp) of each line of a line-protocol body.

    Enough for the test's own readings: no spaces or commas escaped, a `device` tag, numeric
    fields and a timestamp on every line.
    """
    text = (gzip.decompress(body) if encoding == "gzip" else body).decode()
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, _, rest = line.partition(" ")
        measurement, *tags = series.split(",")
        device = next((t[len("device=") :] for t in tags if t.startswith("device=")), "")
        yield measurement, device, int(rest.rsplit(" ", 1)[1])


class FaultyRelay:
    """The relay; `close()` stops it. Its counters are safe to read from the test's thread."""

    def __init__(self, upstream_port: int) -> None:
        """Listen on a free loopback port and relay to `upstream_port` on loopback."""
        self.upstream_port = upstream_port
        self.faulty = False
        self.writes = 0
        self.faults: Counter[str] = Counter()
        self.confirmed: Counter[Key] = Counter()
        self.unconfirmed: set[Key] = set()
        self.queries = 0
        self.queries_open = threading.Event()
        self.queries_open.set()
        self.lock = threading.Lock()
        relay = self

        class Handler(_Handler):
            owner: ClassVar[FaultyRelay] = relay

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def next_action(self, path: str) -> str:
        """What to do with a request to `path` now (a query waits while they are held)."""
        if path.startswith("/query"):
            with self.lock:
                self.queries += 1
            self.queries_open.wait(UPSTREAM_TIMEOUT_S)
        if not path.startswith("/write"):
            return "pass"
        with self.lock:
            n = self.writes
            self.writes += 1
            action = fault_for(n) if self.faulty else "pass"
            self.faults[action] += 1
        return action

    def landed(self, keys: list[Key], *, confirmed: bool) -> None:
        with self.lock:
            if confirmed:
                self.confirmed.update(keys)
            else:
                self.unconfirmed.update(keys)

    def close(self) -> None:
        """Stop serving and close the listening socket."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    # Keep-alive, as the gateway's HTTP client expects of a database.
    protocol_version = "HTTP/1.1"
    owner: ClassVar[FaultyRelay]

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base's name
        """Quiet: the test reads the counters instead."""

    def do_GET(self) -> None:
        self._relay()

    def do_POST(self) -> None:
        self._relay()

    def do_HEAD(self) -> None:
        self._relay()

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in {b"\r\n", b"\n", b""}:
                pass
            return b"".join(parts)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _relay(self) -> None:
        body = self._body()
        action = self.owner.next_action(self.path)
        if action == "drop":
            self.close_connection = True
            return
        if action in {"503", "500"}:
            self._answer(int(action), [("Content-Type", "application/json")], b'{"error":"relay"}')
            return
        status, headers, answer = self._forward(body)
        if self.path.startswith("/write") and HTTP_OK_MIN <= status <= HTTP_OK_MAX:
            keys = list(point_keys(body, self.headers.get("Content-Encoding")))
            self.owner.landed(keys, confirmed=action == "pass")
        if action == "lost_answer":
            self.close_connection = True
            return
        self._answer(status, headers, answer)

    def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        upstream = http.client.HTTPConnection(
            "127.0.0.1", self.owner.upstream_port, timeout=UPSTREAM_TIMEOUT_S
        )
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            answer = response.read()
            kept = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_HEADERS]
            return response.status, kept, answer
        finally:
            upstream.close()

    def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
