"""The pure response classifier of the sink."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from gateway.errors import SinkAuthError, SinkRejected, SinkUnavailable
from gateway.flush.sink import (
    Delivered,
    classify,
    ping,
    public_url,
    retry_after,
    unreachable,
)
from gateway.tools.servers import free_port


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (204, {}, Delivered),
        (200, {}, Delivered),
        (400, {}, SinkRejected),
        (413, {}, SinkRejected),
        (422, {}, SinkRejected),
        (401, {}, SinkAuthError),
        (403, {}, SinkAuthError),
        (404, {}, SinkAuthError),
        (429, {"Retry-After": "7"}, SinkUnavailable),
        (500, {}, SinkUnavailable),
        (503, {}, SinkUnavailable),
    ],
)
def test_classify(status: int, headers: dict[str, str], expected: type) -> None:
    """Each status class maps to its outcome; only refusals are not retried."""
    outcome = classify(status, headers, "body")
    assert type(outcome) is expected
    if expected is not Delivered:
        assert outcome.retryable is (expected is not SinkRejected)  # type: ignore[union-attr]


def test_retry_after_is_honoured() -> None:
    """Retry-After in seconds or as a past date is read; garbage is ignored."""
    outcome = classify(429, {"Retry-After": "7"}, "")
    assert isinstance(outcome, SinkUnavailable)
    assert outcome.retry_after_s == 7
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0
    assert retry_after("soon") is None
    assert retry_after(None) is None


def test_only_a_failure_without_a_response_is_unreachable() -> None:
    """A refused connection is probed for; a timeout (a slow database) keeps its backoff."""
    refused = aiohttp.ClientConnectionError("Connection refused")
    assert unreachable(refused).unreachable
    assert not unreachable(TimeoutError()).unreachable
    assert not unreachable(aiohttp.ServerTimeoutError()).unreachable
    assert not classify(503, {}, "busy").unreachable  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_a_ping_to_a_closed_port_is_false_not_an_error() -> None:
    async with aiohttp.ClientSession() as session:
        assert not await ping(session, f"http://127.0.0.1:{free_port()}/ping", {})


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://127.0.0.1:8086", "http://127.0.0.1:8086"),
        ("https://gw:s3cret@db.example:8443/influx", "https://db.example:8443/influx"),
        ("http://only-user@db", "http://db"),
    ],
)
def test_errors_name_the_database_without_its_credentials(url: str, shown: str) -> None:
    """The URL in an error or log line keeps host, port and path, never a user or password."""
    assert public_url(url) == shown
    outcome = classify(401, {}, "unauthorized", f"database at {public_url(url)}")
    assert str(outcome).startswith(f"database at {shown}: HTTP 401")
    assert "s3cret" not in str(outcome)


# Run in a fresh interpreter, where influxdb-client is not imported yet: which thread first
# looks for it, the event loop's or another, when the v2 sink writes or a Flux read asks.
FIRST_IMPORT = """
import asyncio, json, sys, threading
from gateway.api.dbread import DatabaseReadError, latest_lines
from gateway.config.sections import ApiSettings, InfluxSettings
from gateway.errors import SinkError
from gateway.flush.sink import V2Sink

class Spy:
    thread = None
    def find_spec(self, name, path=None, target=None):
        if name == "influxdb_client" and Spy.thread is None:
            Spy.thread = threading.current_thread()
        return None

sys.meta_path.insert(0, Spy())

async def main(use, port):
    assert "influxdb_client" not in sys.modules
    influx = InfluxSettings(url=f"http://127.0.0.1:{port}", org="o", bucket="b")
    try:
        if use == "write":
            sink = V2Sink(influx)
            try:
                await sink.write(b"m v=1 1")
            finally:
                await sink.aclose()
        else:
            await latest_lines(influx, ApiSettings(database_query="flux"), "d")
    except (SinkError, DatabaseReadError):
        pass
    return threading.current_thread()

loop = asyncio.run(main(sys.argv[1], sys.argv[2]))
print(json.dumps({"imported": Spy.thread is not None, "on_loop": Spy.thread is loop}))
"""


@pytest.mark.parametrize("use", ["write", "flux"])
def test_influxdb_client_is_imported_off_the_event_loop(use: str) -> None:
    """The v2 sink's first write and a Flux read load influxdb-client in a thread, not the loop."""
    root = Path(__file__).resolve().parents[3]
    done = subprocess.run(
        [sys.executable, "-c", FIRST_IMPORT, use, str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
    )
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {"imported": True, "on_loop": False}
