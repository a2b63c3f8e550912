"""The `gateway` command line's grammar: every subcommand and option, each with its help.

One parser serves the program, its shell completion (`gateway completion bash`) and its man page
(`gateway man`), so the three never disagree. Every option's help shows its default, and the
top-level help ends with examples an operator can paste.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gateway import __version__

EXIT_CONFIG = 2
# Where the Debian package and the systemd unit keep the configuration.
DEFAULT_CONFIG = Path("/etc/gateway/gateway.toml")
BENCH_SCENARIOS = (
    "append",
    "ingest",
    "payload-batches",
    "end-to-end",
    "backlog",
    "drain",
    "outage",
    "live-first",
    "sparkplug",
    "seal",
    "long-outage",
)
EXAMPLES = """\
examples:
  gateway check-config                      # validate /etc/gateway/gateway.toml
  gateway check-config -c gw.toml --connect # ... and reach the broker and the database
  gateway try -c gw.toml --topic sensors/dev-1/telemetry --payload '{"temp": 21.5}'
  gateway status                            # the buffer, per device (while it runs too)
  gateway rejects                           # the last refused messages and why
  gateway verify-buffer                     # scan the buffer, check its accounting
  gateway dead-letters list                 # points the database refused
  gateway bench --scenario ingest --runs 3  # figures for sizing this box
  gateway completion bash > /etc/bash_completion.d/gateway
"""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Each option's default after its help (where it has one), and the examples as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help
        # `is`, not `in`: a default of 0 is worth showing, and 0 == False.
        if text is None or any(action.default is v for v in (None, False, argparse.SUPPRESS)):
            return text
        if action.option_strings and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    parser = argparse.ArgumentParser(
        prog="gateway",
        description="Edge IoT telemetry gateway: MQTT in, durable LMDB buffer, InfluxDB out.",
        epilog=EXAMPLES,
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="one of the commands below"
    )

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text, formatter_class=_HelpFormatter)

    run = command("run", "run the gateway until SIGTERM/SIGINT")
    add_config(run)
    # How the parent of a gateway with workers starts each of them (gateway/service/supervisor.py).
    run.add_argument("--worker-slot", type=Path, help=argparse.SUPPRESS)
    run.add_argument("--control-socket", type=Path, help=argparse.SUPPRESS)
    run.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)

    add_config(command("retire", "leave for good: end the broker sessions, deliver, remove"))

    check = command("check-config", "print the effective configuration or its errors")
    check.add_argument(
        "path", nargs="?", type=Path, help="the configuration file (the same as --config)"
    )
    add_config(check)
    check.add_argument(
        "--connect",
        action="store_true",
        help="also connect to the broker and the database and say for each OK or why not",
    )

    trial = command("try", "show what one message would become, without touching the buffer")
    add_config(trial)
    trial.add_argument("--topic", help="the message's MQTT topic")
    payload = trial.add_mutually_exclusive_group()
    payload.add_argument("--payload", help="the payload, as text")
    payload.add_argument("--payload-file", type=Path, help="read the payload (bytes) from a file")
    trial.add_argument(
        "--samples",
        type=Path,
        help='a file of messages, one JSON object a line: {"topic": ..., "payload": ...}',
    )
    trial.add_argument("--json", action="store_true", help="print JSON")

    rejects = command("rejects", "show the last refused messages (sensor debugging)")
    add_config(rejects)
    rejects.add_argument("--json", action="store_true", help="print JSON")
    status = command("status", "show the buffer (works while the gateway runs)")
    add_config(status)
    status.add_argument("--json", action="store_true", help="print JSON")
    status.add_argument("--top", type=int, default=20, help="devices to list")

    verify = command("verify-buffer", "scan the buffer and check its accounting")
    add_config(verify)
    verify.add_argument(
        "--repair", action="store_true", help="rebuild the accounting (gateway stopped)"
    )
    verify.add_argument("--json", action="store_true", help="print JSON")

    dead = command("dead-letters", "list, replay or purge the points the database refused")
    dead.add_argument("action", choices=("list", "replay", "purge"), help="what to do")
    add_config(dead)
    dead.add_argument("--id", type=int, action="append", help="only these (repeatable)")
    dead.add_argument(
        "--sink",
        metavar="NAME",
        help="replay into the [[sinks]] table of this name (default: the first sink)",
    )

    _add_simulate(command("simulate", "publish simulated sensor readings"))
    _add_bench(command("bench", "measure buffer, ingest and drain throughput on this box"))

    demo = command("demo", "run broker, database, gateway and sensors locally")
    demo.add_argument("--devices", type=int, default=20, help="simulated devices")
    demo.add_argument("--rate", type=float, default=500.0, help="readings per second in total")
    demo.add_argument("--duration", type=float, default=30.0, help="seconds of sensor traffic")
    demo.add_argument(
        "--outage",
        type=float,
        default=0.0,
        help="stop the database this many seconds, a quarter into the run (scripts/demo: 20)",
    )

    completion = command("completion", "print a shell completion script for gateway")
    completion.add_argument("shell", choices=("bash", "zsh", "tcsh"), help="the shell")
    command("man", "print the manual page (troff) generated from this command line")
    return parser


def add_config(parser: argparse.ArgumentParser) -> None:
    """The `-c/--config` option every command that reads the configuration takes."""
    parser.add_argument(
        "--config", "-c", type=Path, default=DEFAULT_CONFIG, help="the configuration file"
    )


def _add_simulate(sim: argparse.ArgumentParser) -> None:
    sim.add_argument("--host", default="127.0.0.1", help="the broker's host")
    sim.add_argument("--port", type=int, default=1883, help="the broker's port")
    sim.add_argument("--devices", type=int, default=10, help="simulated devices")
    sim.add_argument(
        "--rate", type=float, default=1000.0, help="readings per second in total; 0: at once"
    )
    group = sim.add_mutually_exclusive_group()
    group.add_argument("--count", type=int, help="readings to publish (10000 without --duration)")
    group.add_argument("--duration", type=float, help="seconds to publish for")
    sim.add_argument("--qos", type=int, choices=(0, 1, 2), default=1, help="MQTT QoS")
    sim.add_argument("--topic", default="sensors/{device}/telemetry", help="topic template")
    sim.add_argument(
        "--per-message", type=int, default=1, help="readings per message (a JSON array above 1)"
    )
    sim.add_argument("--start-ms", type=int, help="timestamp of each device's first reading")
    sim.add_argument("--client-id", default="gateway-simulator", help="the MQTT client id")


def _add_bench(bench: argparse.ArgumentParser) -> None:
    bench.add_argument(
        "--scenario",
        action="append",
        choices=BENCH_SCENARIOS,
        # The list of choices in the usage line grew past what a manual page can set.
        metavar="SCENARIO",
        help=(
            f"one of {', '.join(BENCH_SCENARIOS)}; repeatable; append and ingest when none is given"
        ),
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
    bench.add_argument(
        "--sync", choices=("commit", "interval", "none"), default="commit", help="[buffer] sync"
    )
    bench.add_argument(
        "--sinks",
        type=int,
        choices=(1, 2),
        action="append",
        help="end-to-end: 2 adds VictoriaMetrics as a second sink; repeat to compare (1)",
    )
    bench.add_argument(
        "--replication",
        choices=("off", "sync", "async"),
        action="append",
        help="end-to-end: a standby gateway follows the measured one; repeat to compare (off)",
    )
    bench.add_argument(
        "--workers",
        type=int,
        action="append",
        help="ingest, payload-batches, end-to-end: [mqtt] workers; repeat to compare (1)",
    )
    bench.add_argument("--backlog", type=int, default=5_000_000, help="backlog: readings")
    bench.add_argument(
        "--profile",
        type=Path,
        action="append",
        help="backlog: run this configuration file instead of the benchmark's own "
        "(its broker, buffer path, database and metrics address replaced); repeat to compare",
    )
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
    bench.add_argument(
        "--outage-factor",
        type=float,
        default=10.0,
        help="long-outage: the outage as a multiple of what the budget holds raw",
    )
    bench.add_argument(
        "--quick",
        action="store_true",
        help="long-outage: a small run (1 MiB, 10 devices, steps of 1 s) that shows it works",
    )
    bench.add_argument(
        "--fields", type=int, default=20, help="seal: fields per reading (20: about 300 bytes)"
    )
    bench.add_argument("--json", type=Path, help="also write the figures to this file")
    bench.add_argument(
        "--plot",
        type=Path,
        help="also draw PNG charts into this folder (needs the plot extra: matplotlib)",
    )
