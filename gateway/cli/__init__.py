"""The `gateway` command line: the grammar (`parser`), the commands (`commands`), dispatch here.

Subcommands: run, retire, check-config, try, status, rejects, verify-buffer, dead-letters,
simulate, bench, demo, completion, man. The command line sits above every stage and the tools;
each command imports what it needs when it runs, so `gateway --help` stays quick on a small box.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.cli.parser import DEFAULT_CONFIG, EXIT_CONFIG, build_parser

if TYPE_CHECKING:
    import argparse

__all__ = ["DEFAULT_CONFIG", "EXIT_CONFIG", "build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `gateway` console script."""
    args = build_parser().parse_args(argv)
    if args.command in {"completion", "man"}:
        return _describe(args)
    if args.command in {"simulate", "bench", "demo"}:
        return _tool(args)
    from gateway.cli import commands  # noqa: PLC0415 - only what the command needs

    by_name = {
        "check-config": lambda: commands.check_config(
            args.path or args.config, connect=args.connect
        ),
        "try": lambda: commands.trial(args),
        "run": lambda: commands.run(args),
        "retire": lambda: commands.retire(args.config),
    }
    return by_name.get(args.command, lambda: commands.inspect(args))()


def _describe(args: argparse.Namespace) -> int:
    """The completion script or the man page, both generated from the parser."""
    if args.command == "completion":
        import shtab  # noqa: PLC0415

        print(shtab.complete(build_parser(), shell=args.shell), end="")
        return 0
    from gateway.cli import manpage  # noqa: PLC0415

    print(manpage.render(build_parser()), end="")
    return 0


def _tool(args: argparse.Namespace) -> int:
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

    return demo.run(args.devices, args.rate, args.duration, args.outage)
