"""`gateway bench --plot DIR`: PNG charts of a bench run, beside its JSON figures.

- `end-to-end.png`: readings delivered per second and the write-behind lag over the run.
- `backlog.png`: readings buffered and the gateway's memory (its own, and LMDB's map) over
  the run, which shows memory staying flat while the backlog grows on disk.
- `append.png`: readings/s appended for each sync mode and readings per transaction.

matplotlib is an optional extra (`pip install 'gateway[plot]'`): the gateway never needs it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

# One size for every chart, readable in docs/performance.md and on a laptop screen.
FIGURE_INCHES = (9.0, 4.2)
DPI = 110
# The delivered rate is taken over this window: the samples are half a second apart.
RATE_WINDOW_S = 2.0
APPEND_KEY = re.compile(r"append (\w+)\s+(\d+)/txn readings/s")


def write(figures: dict[str, Any], directory: Path) -> list[Path]:
    """Draw the charts the figures hold data for; the files written.

    Raises:
        SystemExit: matplotlib is not installed, with the command that installs it.
    """
    try:
        import matplotlib as mpl  # noqa: PLC0415 - optional

        mpl.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        raise SystemExit("bench --plot needs matplotlib: pip install 'gateway[plot]'") from None
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    timelines: dict[str, list[list[list[float]]]] = figures.get("timelines", {})
    for label, runs in timelines.items():
        if label.startswith("end-to-end"):
            written.append(_end_to_end(plt, label, runs, directory / "end-to-end.png"))
        elif label.startswith("backlog"):
            written.append(_backlog(plt, label, runs[0], directory / "backlog.png"))
    appends = {m.groups(): v for k, v in figures.items() if (m := APPEND_KEY.fullmatch(k))}
    if appends:
        written.append(_append(plt, appends, directory / "append.png"))
    return written


def _end_to_end(pyplot: Any, label: str, runs: list[list[list[float]]], path: Path) -> Path:  # noqa: ANN401 - matplotlib's module
    figure, (rate_axis, lag_axis) = pyplot.subplots(1, 2, figsize=FIGURE_INCHES, dpi=DPI)
    for number, timeline in enumerate(runs, 1):
        times = [row[0] for row in timeline]
        delivered = [row[1] for row in timeline]
        rate_times, rates = _windowed_rate(times, delivered)
        rate_axis.plot(rate_times, rates, label=f"run {number}")
        lag_axis.plot(times, [row[2] for row in timeline], label=f"run {number}")
    rate_axis.set(
        title=f"delivered ({RATE_WINDOW_S:.0f} s windows)", xlabel="seconds", ylabel="readings/s"
    )
    lag_axis.set(title="write-behind lag", xlabel="seconds", ylabel="seconds")
    for axis in (rate_axis, lag_axis):
        axis.grid(alpha=0.3)
        axis.set_ylim(bottom=0)
    rate_axis.legend(loc="lower right")
    figure.suptitle(label)
    return _save(pyplot, figure, path)


def _windowed_rate(times: list[float], counts: list[float]) -> tuple[list[float], list[float]]:
    """Per-second rates of a counter over RATE_WINDOW_S windows: samples are too close to read."""
    out_times, rates = [], []
    start = 0
    for i in range(1, len(times)):
        while times[i] - times[start] > RATE_WINDOW_S and start < i - 1:
            start += 1
        if times[i] > times[start]:
            out_times.append(times[i])
            rates.append((counts[i] - counts[start]) / (times[i] - times[start]))
    return out_times, rates


def _backlog(pyplot: Any, label: str, timeline: list[list[float]], path: Path) -> Path:  # noqa: ANN401 - matplotlib's module
    figure, (backlog_axis, memory_axis) = pyplot.subplots(1, 2, figsize=FIGURE_INCHES, dpi=DPI)
    times = [row[0] for row in timeline]
    backlog_axis.plot(times, [row[1] for row in timeline])
    backlog_axis.set(title="readings buffered on disk", xlabel="seconds", ylabel="readings")
    memory_axis.plot(times, [row[2] for row in timeline], label="gateway's own (anonymous)")
    memory_axis.plot(times, [row[3] for row in timeline], label="LMDB map (file-backed)")
    memory_axis.set(title="resident memory", xlabel="seconds", ylabel="MiB")
    memory_axis.legend(loc="upper left")
    for axis in (backlog_axis, memory_axis):
        axis.grid(alpha=0.3)
        axis.set_ylim(bottom=0)
    figure.suptitle(label)
    return _save(pyplot, figure, path)


def _append(pyplot: Any, appends: dict[tuple[str, ...], float], path: Path) -> Path:  # noqa: ANN401 - matplotlib's module
    figure, axis = pyplot.subplots(figsize=FIGURE_INCHES, dpi=DPI)
    modes = sorted({mode for mode, _ in appends}, key=["commit", "interval", "none"].index)
    sizes = sorted({int(size) for _, size in appends})
    width = 0.8 / len(sizes)
    for i, size in enumerate(sizes):
        values = [appends.get((mode, str(size)), 0.0) for mode in modes]
        axis.bar([m + i * width for m in range(len(modes))], values, width, label=f"{size}/txn")
    axis.set_xticks([m + width * (len(sizes) - 1) / 2 for m in range(len(modes))], modes)
    axis.set(title="buffer append by [buffer] sync", ylabel="readings/s")
    axis.set_yscale("log")
    axis.grid(alpha=0.3, axis="y")
    axis.legend()
    return _save(pyplot, figure, path)


def _save(pyplot: Any, figure: Any, path: Path) -> Path:  # noqa: ANN401 - matplotlib's objects
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)
    return path
