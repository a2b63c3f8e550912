"""The v3 sink's requests and its reading of answers, against a local HTTP server that records
each request and replays an answer InfluxDB 3 Core's documentation records."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from aiohttp import web
from pydantic import SecretStr

from gateway.buffer.deadletters import DeadLetterStore
from gateway.buffer.store import Buffer
from gateway.config import loader as config
from gateway.config.sections import InfluxSettings
from gateway.errors import SinkPartial, SinkRejected, SinkUnavailable
from gateway.flush.sinks import make_sink
from gateway.flush.sinkv3 import V3Sink
from gateway.points.model import Reading
from gateway.points.record import pack
from gateway.service import deadletters
from gateway.service.probe import check_database
from gateway.tools.servers import free_port

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from gateway.config.settings import Settings

PARTIAL = {
    "error": "partial write of line protocol occurred",
    "data": [
        {
            "original_line": "cpu,host=a val= 123",
            "line_number": 2,
            "error_message": "No fields were provided",
        }
    ],
}


class Replay:
    """Answers each request with the next (status, headers, body); records what came."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, dict[str, str], str]] = []
        self.requests: list[tuple[str, dict[str, str], dict[str, str], bytes]] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()  # aiohttp undoes a Content-Encoding: gzip
        self.requests.append((request.path, dict(request.query), dict(request.headers), body))
        status, headers, text = self.answers.pop(0) if self.answers else (204, {}, "")
        return web.Response(status=status, headers=headers, text=text)


@pytest.fixture
async def replay() -> AsyncIterator[tuple[Replay, int]]:
    server = Replay()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield server, port
    finally:
        await runner.cleanup()


def settings(port: int, **extra: object) -> InfluxSettings:
    return InfluxSettings(
        url=f"http://127.0.0.1:{port}",
        api="v3",
        database="plant",
        token=SecretStr("t0ken"),
        **extra,  # type: ignore[arg-type]
    )


def gateway_settings(tmp_path: Path, port: int) -> Settings:
    """config/minimal.toml with api v3 at the replaying server."""
    minimal = (Path(__file__).parents[3] / "config" / "minimal.toml").read_text()
    text = minimal.replace('url = "http://127.0.0.1:8086"', f'url = "http://127.0.0.1:{port}"')
    path = tmp_path / "gateway.toml"
    path.write_text(text.replace('api = "v1"', 'api = "v3"'))
    return config.load(path, {})


@pytest.mark.anyio
async def test_a_write_posts_to_write_lp_with_its_parameters_and_token(
    replay: tuple[Replay, int],
) -> None:
    server, port = replay
    sink = make_sink(settings(port, no_sync=True))
    assert isinstance(sink, V3Sink)
    try:
        await sink.write(gzip.compress(b"m v=1 5\nm v=2 6"), encoding="gzip")
        assert await sink.ready()
    finally:
        await sink.aclose()
    (path, query, headers, body), (ping_path, _, ping_headers, _) = server.requests
    assert path == "/api/v3/write_lp"
    assert query == {
        "db": "plant",
        "precision": "nanosecond",
        "accept_partial": "true",
        "no_sync": "true",
    }
    assert (headers["Authorization"], headers["Content-Encoding"]) == ("Bearer t0ken", "gzip")
    assert body == b"m v=1 5\nm v=2 6"
    assert (ping_path, ping_headers["Authorization"]) == ("/ping", "Bearer t0ken")


@pytest.mark.anyio
async def test_each_recorded_answer_raises_what_it_stands_for(
    replay: tuple[Replay, int],
) -> None:
    server, port = replay
    server.answers = [
        (400, {"Content-Type": "application/json"}, json.dumps(PARTIAL)),
        (400, {}, '{"error": "parsing failed for write_lp endpoint", "data": {}}'),
        (413, {}, "request body too large"),
        (503, {"Retry-After": "12"}, "busy"),
    ]
    sink = make_sink(settings(port))
    try:
        with pytest.raises(SinkPartial) as partial:
            await sink.write(b"cpu,host=b val=2 155\ncpu,host=a val= 123\ncpu,host=b val=5 199")
        with pytest.raises(SinkRejected) as whole:
            await sink.write(b"x")
        with pytest.raises(SinkRejected):
            await sink.write(b"x")
        with pytest.raises(SinkUnavailable) as busy:
            await sink.write(b"x")
    finally:
        await sink.aclose()
    assert [(n, reason.rsplit(": ", 1)[-1]) for n, reason in partial.value.lines] == [
        (2, "No fields were provided")
    ]
    assert not isinstance(whole.value, SinkPartial)
    assert busy.value.retry_after_s == 12
    assert server.requests[0][1]["no_sync"] == "false"


@pytest.mark.anyio
async def test_check_connect_reads_influxdb3s_refusal_of_an_empty_write_as_allowed(
    replay: tuple[Replay, int], tmp_path: Path
) -> None:
    """InfluxDB 3 answers an empty write 400 once the token may write; any other refusal, or
    a 401, is a failure."""
    server, port = replay
    settings = gateway_settings(tmp_path, port)
    server.answers = [(204, {}, ""), (400, {}, '{"error": "incoming write was empty"}')]
    checks = await check_database(settings)
    assert [(c.ok, c.detail) for c in checks][1] == (
        True,
        "the token may write (the empty write was refused as empty)",
    )
    server.answers = [(204, {}, ""), (400, {}, '{"error": "invalid database name"}')]
    (_, write) = await check_database(settings)
    assert not write.ok
    assert "invalid database name" in write.detail
    server.answers = [(204, {}, ""), (401, {}, '{"error": "unauthorized"}')]
    (_, write) = await check_database(settings)
    assert not write.ok
    assert "not allowed" in write.detail


@pytest.mark.anyio
async def test_a_dead_letter_replayed_into_influxdb3_shows_the_databases_reason(
    replay: tuple[Replay, int], tmp_path: Path
) -> None:
    server, port = replay
    buffer_dir = tmp_path / "buffer"
    with Buffer(buffer_dir, 16 << 20) as buffer:
        buffer.append([("d1", pack(Reading("d1", "m", (), (("v", "hot"),), 5)))])
        (span,) = buffer.read([("d1", 1)])
        buffer.delete([("d1", span.first_seq, 1)], [("d1", "earlier reason", 'm v="hot" 5')])
    settings = gateway_settings(tmp_path, port)
    server.answers = [
        (400, {}, json.dumps(PARTIAL).replace('"line_number": 2', '"line_number": 1'))
    ]
    store = DeadLetterStore.open(buffer_dir, 16 << 20)
    try:
        report = await deadletters.replay(store, settings, None)
        assert [letter.reason for letter in store] == ["earlier reason"]
    finally:
        store.close()
    assert report.splitlines()[1].endswith("HTTP 400: No fields were provided")
