"""The commands that reach the databases, with several sinks: check-config --connect and replay."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from gateway import cli
from gateway.buffer.deadletters import DeadLetterStore
from gateway.buffer.store import Buffer
from gateway.points.model import Reading
from gateway.points.record import pack
from gateway.service import deadletters
from gateway.service.probe import check_database
from gateway.tools.servers import free_port
from tests.unit.config.test_config import MINIMAL, write
from tests.unit.config.test_sinks import load, with_sinks
from tests.unit.flush.test_sinkv3 import Replay, replay

if TYPE_CHECKING:
    from pathlib import Path

    from gateway.config.settings import Settings

__all__ = ["replay"]  # the fixture, for the tests below


def two_sinks_text(tmp_path: Path, near_port: int, far_port: int) -> str:
    """Two v1 sinks on loopback, near then far, with the buffer under `tmp_path`."""
    tables = [
        f'[[sinks]]\nname = "{name}"\nurl = "http://127.0.0.1:{port}"\napi = "v1"\n'
        f'database = "{name}-db"\n'
        for name, port in (("near", near_port), ("far", far_port))
    ]
    return with_sinks(*tables).replace('"/var/lib/gateway"', f'"{tmp_path / "buffer"}"')


def two_sinks(tmp_path: Path, near_port: int, far_port: int) -> Settings:
    return load(tmp_path, two_sinks_text(tmp_path, near_port, far_port))


@pytest.mark.anyio
async def test_check_connect_names_each_sink_and_fails_with_one(
    replay: tuple[Replay, int], tmp_path: Path
) -> None:
    """Every sink is pinged and written to; the one that does not answer fails, by name."""
    _, port = replay
    closed = free_port()
    checks = await check_database(two_sinks(tmp_path, port, closed))
    near = f"sink 'near': database http://127.0.0.1:{port} (v1, database 'near-db')"
    far = f"sink 'far': database http://127.0.0.1:{closed} (v1, database 'far-db')"
    assert [str(check) for check in checks] == [
        f"OK   {near}: answers its ping",
        "OK   sink 'near': database write: an empty write was accepted",
        f"FAIL {far}: no answer to GET /ping (down, wrong url or port)",
    ]
    assert not all(check.ok for check in checks), "check-config --connect exits 1"


@pytest.mark.anyio
async def test_check_connect_with_influx_reads_as_before(
    replay: tuple[Replay, int], tmp_path: Path
) -> None:
    """The one database of [influx] is not given a sink's name."""
    _, port = replay
    text = MINIMAL.replace("http://127.0.0.1:8086", f"http://127.0.0.1:{port}")
    checks = await check_database(load(tmp_path, text))
    assert [check.what for check in checks] == [
        f"database http://127.0.0.1:{port} (v1, database 'telemetry')",
        "database write",
    ]
    assert all(check.ok for check in checks)


def store_with_a_letter(settings: Settings) -> DeadLetterStore:
    """The buffer's dead-letter store holding one point the database refused."""
    with Buffer(settings.buffer.path, 16 << 20) as buffer:
        buffer.append([("d1", pack(Reading("d1", "m", (), (("v", 1.0),), 5)))])
        (span,) = buffer.read([("d1", 1)])
        buffer.delete([("d1", span.first_seq, 1)], [("d1", "refused", "m v=1 5")])
    return DeadLetterStore.open(settings.buffer.path, 16 << 20)


@pytest.mark.anyio
async def test_replay_writes_to_the_first_sink_or_the_one_named(
    replay: tuple[Replay, int], tmp_path: Path
) -> None:
    """Replay goes to the first sink by default, to the named one with a name."""
    server, port = replay
    settings = two_sinks(tmp_path, free_port(), port)
    store = store_with_a_letter(settings)
    try:
        report = await deadletters.replay(store, settings, None)
        assert report.startswith("replayed 0 dead letters\nstopped: the database is not")
        assert server.requests == [], "the first sink is near, which is down"
        report = await deadletters.replay(store, settings, None, "far")
        assert report == "replayed 1 dead letters"
        assert list(store) == []
    finally:
        store.close()
    ((path, query, _, body),) = server.requests
    assert (path, query["db"], body) == ("/write", "far-db", b"m v=1 5")


def test_replay_target_is_the_first_sink_unless_named(tmp_path: Path) -> None:
    """The replay's database: the first sink's, the named sink's, or [influx]."""
    settings = two_sinks(tmp_path, 1001, 1002)
    assert deadletters.replay_target(settings, None).url == "http://127.0.0.1:1001"
    assert deadletters.replay_target(settings, "far").url == "http://127.0.0.1:1002"
    influx = load(tmp_path, MINIMAL)
    assert deadletters.replay_target(influx, "influx") == influx.influx


def test_an_unknown_sink_name_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`replay --sink NAME` names the sinks there are, exits 2 and opens no buffer."""
    path = write(tmp_path, two_sinks_text(tmp_path, 1001, 1002))
    code = cli.main(["dead-letters", "replay", "-c", str(path), "--sink", "cloud"])
    assert code == cli.EXIT_CONFIG
    assert capsys.readouterr().err == (
        "gateway dead-letters: --sink 'cloud': no sink has that name (the sinks: 'near', 'far')\n"
    )
    assert not (tmp_path / "buffer").exists()
    assert cli.main(["dead-letters", "list", "-c", str(path), "--sink", "near"]) == 2
    assert "--sink: list reads no sink; it goes with replay only" in capsys.readouterr().err
