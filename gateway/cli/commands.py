"""The commands behind the command line: each takes parsed arguments and returns an exit code."""

from __future__ import annotations

import json
import logging
import sys
from typing import TYPE_CHECKING

from gateway import __version__
from gateway.cli.parser import EXIT_CONFIG
from gateway.errors import ConfigError, StorageError

if TYPE_CHECKING:
    import argparse
    from collections.abc import Awaitable, Callable, Iterator
    from pathlib import Path

    from gateway.config.settings import Settings

logger = logging.getLogger("gateway.cli")


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


def check_config(path: Path, *, connect: bool = False) -> int:
    """Print the effective configuration (secrets masked) or its errors.

    With `connect`, also reach the broker and the database: 1 when one of them fails.
    """
    from gateway.config import loader as config  # noqa: PLC0415
    from gateway.config.advice import warnings  # noqa: PLC0415

    settings = _load(path)
    if settings is None:
        return EXIT_CONFIG
    print(json.dumps(config.redacted(settings), indent=2))
    for warning in warnings(settings):
        print(f"{path}: warning: {warning}", file=sys.stderr)
    if not connect:
        return 0
    import anyio  # noqa: PLC0415

    from gateway.service import probe  # noqa: PLC0415

    checks = anyio.run(probe.check_all, settings)
    for check in checks:
        print(check, file=sys.stderr)
    return 0 if all(check.ok for check in checks) else 1


def trial(args: argparse.Namespace) -> int:
    """`gateway try`: 0 when every message gave readings and nothing was refused, else 1."""
    from gateway.service import trial as trying  # noqa: PLC0415

    settings = _load(args.config)
    if settings is None:
        return EXIT_CONFIG
    try:
        messages = list(_messages(args))
    except (OSError, ValueError) as exc:
        print(f"gateway try: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    outcomes = trying.try_messages(settings, messages)
    if args.json:
        print(json.dumps([trying.as_json(o) for o in outcomes], indent=2, ensure_ascii=False))
    else:
        print("\n".join(trying.render(o) for o in outcomes))
        stored = trying.stored_line(outcomes)
        if stored is not None:
            print(stored)
    return 0 if all(o.readings and not o.refused for o in outcomes) else 1


def _messages(args: argparse.Namespace) -> Iterator[tuple[str, bytes]]:
    """The messages `try` was given: one on the command line, or a samples file.

    Raises:
        ValueError: for a command line that names neither or only half of a message.
    """
    from gateway.service import trial as trying  # noqa: PLC0415

    given = args.payload is not None or args.payload_file is not None
    if args.samples is not None:
        if args.topic or given:
            raise ValueError("--samples takes the topics and payloads from the file alone")
        yield from trying.samples(args.samples)
        return
    if not args.topic or not given:
        raise ValueError("give --topic with --payload or --payload-file, or --samples FILE")
    payload = args.payload_file.read_bytes() if args.payload_file else args.payload.encode()
    yield args.topic, payload


def inspect(args: argparse.Namespace) -> int:
    """`status`, `rejects`, `dead-letters` and `verify-buffer`: read the buffer."""
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
            return _dead_letters(settings, args)
        code, text = status.verify(settings, repair=args.repair, as_json=args.json)
    except (StorageError, status.ServiceAnswerError) as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    print(text)
    return code


def _dead_letters(settings: Settings, args: argparse.Namespace) -> int:
    """`dead-letters` on every environment of this gateway; 2 for a `--sink` no sink is named."""
    from gateway.service import deadletters as deadletter  # noqa: PLC0415
    from gateway.service import status  # noqa: PLC0415

    try:
        return max(
            deadletter.run(settings, args.action, args.id, path, args.sink)
            for path in status.environments(settings)
        )
    except ConfigError as exc:
        print(f"gateway dead-letters: {exc}", file=sys.stderr)
        return EXIT_CONFIG


def run(args: argparse.Namespace) -> int:
    """`gateway run`: the service, alone or as the parent of its workers."""
    import functools  # noqa: PLC0415

    from gateway.service import fdlimit, logsetup, supervisor, workers  # noqa: PLC0415
    from gateway.service import lifecycle as service  # noqa: PLC0415

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
    facts = {
        "version": __version__,
        "config": str(args.config.resolve()),
        "buffer": str(settings.buffer.path),
    }
    logger.info(
        "gateway %s starting: configuration %s, buffer %s",
        facts["version"],
        facts["config"],
        facts["buffer"],
        extra=facts,
    )
    fdlimit.raise_soft_limit()
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


def retire(path: Path) -> int:
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
