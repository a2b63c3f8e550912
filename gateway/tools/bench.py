"""`gateway bench`: measured figures a user can reproduce on their own edge box.

Scenarios:
- `append`: buffer append throughput per sync mode at 1, 100 and 1,000 readings per transaction.
- `ingest`: QoS 1 publishers (`loadgen`, in their own processes) -> local Mosquitto -> the
  gateway, with the database stopped: accepted readings/s, commits, the gateway's
  receipt-to-PUBACK delay, the publishers' PUBACK latency from the broker, gateway CPU and
  peak RSS. `--rate` fixes the load.
- `backlog`: the same with no rate limit until `--backlog` readings are buffered, then the
  database starts and the backlog drains, the gateway's memory sampled all along (it must not
  grow with the backlog): peak anonymous RSS, VmHWM, drain time. `--profile FILE` runs a
  configuration file (config/small-box.toml) instead of the benchmark's own; repeat to compare
  (gateway/tools/backlog.py).
- `live-first`: a prefilled backlog (`--drain`, `--drain-devices`) drains into VictoriaMetrics
  while new readings arrive at `--rate`, with `[flush] live_first` on and off: the new readings'
  lag and the backlog's drain rate.
- `outage`: a steady `--rate` into VictoriaMetrics, stopped for `--outage` seconds in the middle:
  how soon after its return the first batch lands, and how fast the backlog drains.
- `seal`: readings of `--fields` fields (20: about 300 bytes) from `--devices` devices (1,000
  unless given) at `--rate` (5,000/s if 0), the database down, until the journal seals (131,072
  readings): the longest event-loop stall, from the slowest `/healthz` answer and, where the
  gateway has it, its loop-lag histogram.
- `long-outage`: a 16 MiB buffer, 100 devices at 1,000 readings/s of reading time, influxd down
  for `--outage-factor` (10) times what the budget holds raw, then a real-time window and the
  drain, with `drop_oldest` and `compact`, and once `compact` with a deadband: coverage of the
  outage's minutes, error of the delivered min/max/mean, the files' size, PUBACK p99, drain time
  (gateway/tools/longoutage.py). `--quick`: a small run that shows it works.
- `sparkplug`: the ingest scenario with each publisher a Sparkplug B edge node: NBIRTH, a
  DBIRTH per device, then DDATA of 10 metrics by alias (`SPARKPLUG_METRICS`), each a reading.
Each scenario runs `--runs` times; the table shows medians.
"""

from __future__ import annotations

import itertools
import json
import statistics
import sys
from typing import TYPE_CHECKING, Any

from gateway.tools import backlog, calibration, longoutage, scenarios
from gateway.tools.scenarios import BENCH_DEVICES

# sparkplug: metrics per DDATA message, each a reading.
SPARKPLUG_METRICS = 10
# end-to-end: readings/s when `--rate` is 0 (the maximum, which only ingest can use).
END_TO_END_RATE = 5000.0
# seal: devices unless `--devices` is given, and readings/s when `--rate` is 0; the issue
# that asked for the scenario saw seals stall the loop for seconds at this scale.
SEAL_DEVICES = 1000
SEAL_RATE = 5000.0

if TYPE_CHECKING:
    import argparse


def run(args: argparse.Namespace) -> int:
    """Run the scenarios of `gateway bench`, print a table of medians, optionally write JSON."""
    chosen = args.scenario or ["append", "ingest"]
    args.seal_devices = args.devices or SEAL_DEVICES
    args.devices = args.devices or BENCH_DEVICES
    print(f"bench: {', '.join(chosen)}, {args.runs} run(s) each; calibrating", file=sys.stderr)
    host = calibration.calibrate()
    print(calibration.render(host), flush=True)
    figures: dict[str, Any] = {"calibration": host}
    if "append" in chosen:
        _run_append(args.runs, figures)
    if "ingest" in chosen:
        _run_ingest(args, figures)
    if "payload-batches" in chosen:
        _run_payload_batches(args, figures)
    if "end-to-end" in chosen:
        _run_end_to_end(args, figures)
    if "backlog" in chosen:
        _run_backlog(args, figures)
    if "drain" in chosen:
        _run_drain(args, figures)
    later = {
        "live-first": _run_live_first,
        "outage": _run_outage,
        "sparkplug": _run_sparkplug,
        "seal": _run_seal,
        "long-outage": _run_long_outage,
    }
    for name, runner in later.items():
        if name in chosen:
            runner(args, figures)
    _write_out(args, figures)
    return 0


def _write_out(args: argparse.Namespace, figures: dict[str, Any]) -> None:
    """The JSON file and the charts, where asked for."""
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2))
    if args.plot is not None:
        from gateway.tools import plots  # noqa: PLC0415 - matplotlib only when asked for

        for path in plots.write(figures, args.plot):
            print(f"bench: plot {path}", file=sys.stderr)


def _run_live_first(args: argparse.Namespace, figures: dict[str, Any]) -> None:
    for live_first in (True, False):
        results = [
            scenarios.bench_live_first(
                args.drain,
                args.drain_devices,
                args.rate or 1000,
                args.publishers,
                live_first=live_first,
            )
            for _ in range(args.runs)
        ]
        label = f"live-first={'on' if live_first else 'off'} {args.drain:,} backlog"
        _collect(figures, label, results)


def _run_outage(args: argparse.Namespace, figures: dict[str, Any]) -> None:
    results = [
        scenarios.bench_outage(args.rate or 1000, args.outage, args.publishers, args.devices)
        for _ in range(args.runs)
    ]
    _collect(figures, f"outage {args.outage:.0f} s at {args.rate or 1000:.0f}/s", results)


def _run_seal(args: argparse.Namespace, figures: dict[str, Any]) -> None:
    rate, devices = args.rate or SEAL_RATE, args.seal_devices
    results = [
        scenarios.bench_seal(devices, args.fields, rate, args.publishers) for _ in range(args.runs)
    ]
    _collect(figures, f"seal {args.fields} fields devices={devices} {rate:.0f}/s", results)


def _run_long_outage(args: argparse.Namespace, figures: dict[str, Any]) -> None:
    shape = longoutage.QUICK if args.quick else longoutage.Shape()
    factor = args.outage_factor
    quick = " quick" if args.quick else ""
    for policy in ("drop_oldest", "compact"):
        results = [
            longoutage.bench_long_outage(policy, factor, shape=shape) for _ in range(args.runs)
        ]
        _collect(figures, f"long-outage{quick} x{factor:g} {policy}", results)
    # One run: its figure is readings stored per reading received, which varies little.
    result = longoutage.bench_long_outage("compact", factor, deadband=True, shape=shape)
    _collect(figures, f"long-outage{quick} x{factor:g} compact+deadband", [result])


def _run_append(runs: int, figures: dict[str, Any]) -> None:
    for mode in ("commit", "interval", "none"):
        for per_txn in (1, 100, 1000):
            key = f"append {mode:<8} {per_txn:>4}/txn readings/s"
            scenarios.PROGRESS.tell(f"append, sync={mode}, {per_txn}/transaction")
            samples = [scenarios.bench_append(mode, per_txn) for _ in range(runs)]
            figures[key] = statistics.median(samples)
            _show(figures, key, samples)


def _ingest_runs(args: argparse.Namespace, **load: Any) -> list[dict[str, Any]]:  # noqa: ANN401
    """`--runs` runs of the ingest scenario with the load's common arguments and `load`."""
    return [
        scenarios.bench_ingest(args.count, args.rate, args.publishers, args.sync, **load)
        for _ in range(args.runs)
    ]


def _run_ingest(args: argparse.Namespace, figures: dict[str, Any]) -> None:
    for workers in args.workers or [1]:
        rate = f"{args.rate:.0f}/s" if args.rate else "max"
        label = f"ingest sync={args.sync} rate={rate}{_devices(args)}"
        results = _ingest_runs(args, workers=workers, devices=args.devices)
        _collect(figures, f"{label} workers={workers}", results)


def _run_payload_batches(args: argparse.Namespace, figures: dict[str, Any]) -> None:
    for workers in args.workers or [1]:
        results = _ingest_runs(args, per_message=args.per_message, workers=workers)
        _collect(figures, f"payload-batches {args.per_message}/message workers={workers}", results)


def _run_sparkplug(args: argparse.Namespace, figures: dict[str, Any]) -> None:
    rate = f"{args.rate:.0f}/s" if args.rate else "max"
    results = _ingest_runs(
        args, per_message=SPARKPLUG_METRICS, devices=args.devices, sparkplug=True
    )
    _collect(figures, f"sparkplug DDATA {SPARKPLUG_METRICS} metrics/message rate={rate}", results)


def _run_end_to_end(args: argparse.Namespace, figures: dict[str, Any]) -> None:
    # A steady load needs a rate: the default one when the others run at their maximum.
    rate = args.rate or END_TO_END_RATE
    for workers in args.workers or [1]:
        for sinks, pair in itertools.product(args.sinks or [1], args.replication or ["off"]):
            label = f"end-to-end {rate:.0f}/s for {args.duration:.0f} s{_devices(args)}"
            label += f" workers={workers}" + (f" sinks={sinks}" if sinks > 1 else "")
            label += f" replication={pair}" if pair != "off" else ""
            results = [
                scenarios.bench_end_to_end(
                    rate,
                    args.duration,
                    args.publishers,
                    workers,
                    devices=args.devices,
                    sinks=sinks,
                    replication=pair,
                )
                for _ in range(args.runs)
            ]
            _collect(figures, label, results)
            figures.setdefault("timelines", {})[label] = [r["timeline"] for r in results]


def _devices(args: argparse.Namespace) -> str:
    """The device count in a figure's label, when it is not the default one."""
    return f" devices={args.devices}" if args.devices != BENCH_DEVICES else ""


def _collect(figures: dict[str, Any], label: str, results: list[dict[str, Any]]) -> None:
    samples_by_key: dict[str, list[float]] = {}
    for result in results:
        for key, value in result.items():
            if isinstance(value, float | int):
                samples_by_key.setdefault(key, []).append(float(value))
    for key, samples in samples_by_key.items():
        figures[f"{label} {key}"] = statistics.median(samples)
        _show(figures, f"{label} {key}", samples)


def _run_backlog(args: argparse.Namespace, figures: dict[str, Any]) -> None:
    for profile in args.profile or [None]:
        results = [
            backlog.bench_backlog(args.backlog, args.publishers, args.sync, args.devices, profile)
            for _ in range(args.runs)
        ]
        name = f" {profile.name}" if profile is not None else ""
        first = results[0]
        figures.setdefault("timelines", {})[f"backlog {args.backlog:,}{name}"] = [
            r["timeline"] for r in results
        ]
        prefix = "backlog" + name
        figures[f"{prefix} rss_mib_by_readings"] = first["rss_mib_by_backlog"]
        for readings, anon, mapped in first["rss_mib_by_backlog"]:
            label = f"{prefix} at {readings:,}: RSS MiB anonymous / LMDB map"
            print(f"{label:<58} {anon:>12.1f} / {mapped:.1f}", flush=True)
        _collect(figures, prefix, results)
        # The figures this scenario had before it drained, under their former names.
        if profile is None:
            figures["backlog peak_rss_mib"] = figures["backlog gateway_peak_rss_mib"]
    # Start-up on a backlog of the same size, prefilled without the broker to save the time.
    for key, value in scenarios.bench_startup(args.backlog, args.devices).items():
        figures[f"backlog startup {key}"] = value
        _show(figures, f"backlog startup {key}", [value])


def _run_drain(args: argparse.Namespace, figures: dict[str, Any]) -> None:
    budget = args.max_bytes_per_s
    for database in ("victoria-metrics", "influxd"):
        results = [
            scenarios.bench_drain(
                database, args.drain, args.drain_devices, budget, gzip=not args.no_gzip
            )
            for _ in range(args.runs)
        ]
        label = f"drain {database}" + (f" budget={budget:.0f}B/s" if budget else "")
        label += " plain" if args.no_gzip else ""
        _collect(figures, label, results)


def _show(figures: dict[str, Any], key: str, samples: list[float]) -> None:
    spread = f"  (runs: {', '.join(f'{s:,.1f}' for s in samples)})" if len(samples) > 1 else ""
    print(f"{key:<58} {figures[key]:>12,.1f}{spread}", flush=True)
