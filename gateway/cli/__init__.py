"""The `gateway` command line.

Subcommands: run, retire, check-config, status, rejects, verify-buffer, dead-letters, simulate,
bench, demo.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from gateway import __version__
from gateway.errors import ConfigError, StorageError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from gateway.config.settings import Settings

EXIT_CONFIG = 2
# Where the Debian package and the systemd unit keep the configuration.
DEFAULT_CONFIG = Path("/etc/gateway/gateway.toml")
logger = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway",
        description="Edge IoT telemetry gateway: MQTT in, durable LMDB buffer, InfluxDB out.",
    )
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the gateway until SIGTERM/SIGINT")
    _add_config(run)
    # How the parent of a gateway with workers starts each of them (gateway/service/supervisor.py).
    run.add_argument("--worker-slot", type=Path, help=argparse.SUPPRESS)
    run.add_argument("--control-socket", type=Path, help=argparse.SUPPRESS)
    run.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)

    retire = sub.add_parser(
        "retire",
        help="leave for good: end the broker sessions, deliver the whole buffer, remove it",
    )
    _add_config(retire)

    check = sub.add_parser("check-config", help="print the effective configuration or its errors")
    check.add_argument("path", nargs="?", type=Path, help="the configuration file (as --config)")
    _add_config(check)

    rejects = sub.add_parser("rejects", help="show the last refused messages (sensor debugging)")
    _add_config(rejects)
    rejects.add_argument("--json", action="store_true", help="print JSON")
    status = sub.add_parser("status", help="show the buffer (works while the gateway runs)")
    _add_config(status)
    status.add_argument("--json", action="store_true", help="print JSON")
    status.add_argument("--top", type=int, default=20, help="devices to list")

    verify = sub.add_parser("verify-buffer", help="scan the buffer and check its accounting")
    _add_config(verify)
    verify.add_argument(
        "--repair", action="store_true", help="rebuild the accounting (gateway stopped)"
    )

    dead = sub.add_parser("dead-letters", help="list, replay or purge refused points")
    dead.add_argument("action", choices=("list", "replay", "purge"))
    _add_config(dead)
    dead.add_argument("--id", type=int, action="append", help="only these (repeatable)")

    sim = sub.add_parser("simulate", help="publish simulated sensor readings")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=1883)
    sim.add_argument("--devices", type=int, default=10)
    sim.add_argument(
        "--rate",
        type=float,
        default=1000.0,
        help="readings per second in total; 0 for as fast as possible",
    )
    group = sim.add_mutually_exclusive_group()
    group.add_argument("--count", type=int, help="readings to publish (default 10000)")
    group.add_argument("--duration", type=float, help="seconds to publish for")
    sim.add_argument("--qos", type=int, choices=(0, 1, 2), default=1)
    sim.add_argument("--topic", default="sensors/{device}/telemetry")
    sim.add_argument(
        "--per-message", type=int, default=1, help="readings per message (a JSON array above 1)"
    )
    sim.add_argument("--start-ms", type=int, help="timestamp of each device's first reading")
    sim.add_argument("--client-id", default="gateway-simulator")

    _add_bench(sub)

    demo = sub.add_parser("demo", help="run broker, database, gateway and sensors locally")
    demo.add_argument("--devices", type=int, default=20)
    demo.add_argument("--rate", type=float, default=500.0)
    demo.add_argument("--duration", type=float, default=20.0)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `gateway` console script."""
    args = _parser().parse_args(argv)
    if args.command == "check-config":
        return _check_config(args.path or args.config)
    if args.command in {"run", "retire"}:
        return _run(args) if args.command == "run" else _retire(args.config)
    if args.command in {"status", "verify-buffer", "dead-letters", "rejects"}:
        return _inspect(args)
    if args.command == "simulate":
        from gateway.tools import simulate  # noqa: PLC0415 - paho only when needed

        count = args.count if args.count is not None or args.duration is not None else 10_000
        plan = simulate.Plan(
            args.host,
            args.port,
            args.devices,
            args.rate,
            count,
            args.duration,
            args.qos,
            args.topic,
            args.per_message,
            args.start_ms,
            args.client_id,
        )
        simulate.run(plan)
        return 0
    if args.command == "bench":
        from gateway.tools import bench  # noqa: PLC0415

        return bench.run(args)
    from gateway.tools import demo  # noqa: PLC0415

    return demo.run(args.devices, args.rate, args.duration)


def _load(path: Path) -> Settings | None:
    """The validated configuration, or None after printing its problems."""
    from gateway.config import loader as config  # noqa: PLC0415

    try:
        return config.load(path)
    except ConfigError as exc:
        print(f"{path}: invalid configuration", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return None


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        "-c",
        type=Path,
        default=DEFAULT_CONFIG,
        help=f"the configuration file (default: {DEFAULT_CONFIG})",
    )


def _check_config(path: Path) -> int:
    from gateway.config import loader as config  # noqa: PLC0415
    from gateway.config.advice import warnings  # noqa: PLC0415

    settings = _load(path)
    if settings is None:
        return EXIT_CONFIG
    print(json.dumps(config.redacted(settings), indent=2))
    for warning in warnings(settings):
        print(f"{path}: warning: {warning}", file=sys.stderr)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from gateway.service import status  # noqa: PLC0415

    settings = _load(args.config)
    if settings is None:
        return EXIT_CONFIG
    try:
        if args.command == "status":
            print(status.status(settings, as_json=args.json, top=args.top))
            return 0
        if args.command == "rejects":
            from dataclasses import asdict  # noqa: PLC0415

            from gateway.buffer import rejects  # noqa: PLC0415

            kept = []
            for path in status.environments(settings):
                with rejects.RejectLog(path, readonly=True) as log:
                    kept += log.newest_first()
            kept.sort(key=lambda r: -r.ts_ns)
            print(json.dumps([asdict(r) for r in kept]) if args.json else rejects.render(kept))
            return 0
        if args.command == "dead-letters":
            from gateway.service import deadletters as deadletter  # noqa: PLC0415

            return max(
                deadletter.run(settings, args.action, args.id, path)
                for path in status.environments(settings)
            )
        code, text = status.verify(settings, repair=args.repair)
    except StorageError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    print(text)
    return code


def _run(args: argparse.Namespace) -> int:
    import functools  # noqa: PLC0415

    from gateway.service import lifecycle as service  # noqa: PLC0415
    from gateway.service import logsetup, supervisor, workers  # noqa: PLC0415

    settings = _load(args.config)
    if settings is None:
        return EXIT_CONFIG
    job: Callable[[], Awaitable[None]]
    if args.worker_slot is not None:
        slot = workers.find(settings, args.worker_slot)
        if slot is None:
            print(f"gateway: {args.worker_slot} is no worker's environment", file=sys.stderr)
            return EXIT_CONFIG
        logsetup.tag_process(f"worker {slot.index}" if slot.index is not None else "retiring")
        worker = workers.Worker(slot, args.control_socket, args.parent_pid)
        job = functools.partial(
            service.run, workers.for_slot(settings, slot), args.config, worker=worker
        )
    elif settings.mqtt.workers > 1 or workers.retired(settings):
        job = functools.partial(supervisor.run, settings, args.config)
    else:
        job = functools.partial(service.run, settings, args.config)
    logsetup.setup(settings.log.level, settings.log.format, settings.log.repeat_window_s)
    # The first line: what runs, from which file, on which buffer.
    logger.info(
        "gateway %s starting: configuration %s, buffer %s",
        __version__,
        args.config.resolve(),
        settings.buffer.path,
    )
    return _run_async(job)


def _run_async(job: Callable[[], Awaitable[None]]) -> int:
    """Run `job` in an event loop; 1 after a buffer failure, which it logs."""
    import anyio  # noqa: PLC0415

    try:
        anyio.run(job, backend_options=_backend_options())
    except StorageError as exc:
        logger.error("buffer failure: %s", exc)  # noqa: TRY400 - the message says it all
        return 1
    return 0


def _retire(path: Path) -> int:
    """Retire every environment of this gateway, one after the other, in this process."""
    import functools  # noqa: PLC0415

    from gateway.service import lifecycle as service  # noqa: PLC0415
    from gateway.service import logsetup, workers  # noqa: PLC0415

    settings = _load(path)
    if settings is None:
        return EXIT_CONFIG
    logsetup.setup(settings.log.level, settings.log.format, settings.log.repeat_window_s)
    # The configured workers' sessions exist even where nothing was ever buffered.
    for slot in workers.every_slot(settings):
        logger.info("retiring %s (session %s)", slot.path, slot.client_id)
        job = functools.partial(service.run, workers.for_slot(settings, slot), path, retire=True)
        if _run_async(job):
            return 1
    return 0


def _backend_options() -> dict[str, bool]:
    """Use uvloop, a faster event loop, where it is installed (`pip install gateway[fast]`)."""
    import importlib.util  # noqa: PLC0415

    use_uvloop = importlib.util.find_spec("uvloop") is not None
    if use_uvloop:
        logger.info("event loop: uvloop")
    return {"use_uvloop": use_uvloop}


def _add_bench(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """The `bench` subcommand's options."""
    bench = sub.add_parser("bench", help="measure buffer, ingest and drain throughput")
    bench.add_argument(
        "--scenario",
        action="append",
        choices=(
            "append",
            "ingest",
            "payload-batches",
            "end-to-end",
            "backlog",
            "drain",
            "outage",
            "live-first",
        ),
        help="repeatable; default: append and ingest",
    )
    bench.add_argument("--runs", type=int, default=3, help="runs per scenario (median shown)")
    bench.add_argument("--count", type=int, default=100_000, help="ingest: readings per run")
    bench.add_argument(
        "--rate",
        type=float,
        default=0,
        help="ingest: readings/s, 0 for max; end-to-end: 5000 if 0; outage, live-first: 1000 if 0",
    )
    bench.add_argument("--publishers", type=int, default=2, help="publisher processes")
    bench.add_argument(
        "--devices", type=int, help="ingest, end-to-end: devices the load spreads over (50)"
    )
    bench.add_argument(
        "--per-message", type=int, default=100, help="payload-batches: readings per message"
    )
    bench.add_argument(
        "--duration", type=float, default=60.0, help="end-to-end: seconds of steady load"
    )
    bench.add_argument("--sync", choices=("commit", "interval", "none"), default="commit")
    bench.add_argument(
        "--workers",
        type=int,
        action="append",
        help="ingest, payload-batches, end-to-end: [mqtt] workers; repeat to compare (default 1)",
    )
    bench.add_argument("--backlog", type=int, default=5_000_000, help="backlog: readings")
    bench.add_argument("--drain", type=int, default=1_000_000, help="drain: backlog readings")
    bench.add_argument("--drain-devices", type=int, default=1000, help="drain: devices")
    bench.add_argument(
        "--max-bytes-per-s", type=float, help="drain: the uplink budget ([flush] max_bytes_per_s)"
    )
    bench.add_argument(
        "--no-gzip", action="store_true", help="drain: send plain line protocol ([flush] gzip)"
    )
    bench.add_argument(
        "--outage", type=float, default=30.0, help="outage: seconds the database is down"
    )
    bench.add_argument("--json", type=Path, help="also write the figures to this file")
