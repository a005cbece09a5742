"""``python -m loadtests.plot SERIES.csv -o soak.png``: draw a soak's series as one PNG.

Four panels over time, the phases shaded (warm-up, idle, load): resident memory (and GPU
memory when sampled), threads / event-loop tasks / open file descriptors, sessions and
calls running, and chunks sent per sample with those outside +-40 ms of A/V skew. The title
carries the verdict when ``summary.json`` lies beside the CSV. Uses matplotlib's Agg
backend (no display needed).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from loadtests.resources import Sample, read_samples

S_PER_MIN = 60.0
FIGURE_SIZE_IN = (11.0, 11.0)
DPI = 110
PHASE_COLOURS = {
    "warm-up": "#fde8c8",
    "idle-before": "#dde8f8",
    "load": "#ffffff",
    "idle-after": "#dde8f8",
}


def _minutes(samples: list[Sample]) -> list[float]:
    return [s.t_s / S_PER_MIN for s in samples]


def _shade_phases(axes: plt.Axes, samples: list[Sample]) -> None:
    start = 0
    for i in range(1, len(samples) + 1):
        if i == len(samples) or samples[i].phase != samples[start].phase:
            colour = PHASE_COLOURS.get(samples[start].phase)
            if colour is not None:
                end = samples[min(i, len(samples) - 1)].t_s / S_PER_MIN
                axes.axvspan(samples[start].t_s / S_PER_MIN, end, color=colour, zorder=0)
            start = i


def plot(samples: list[Sample], out: Path, title: str) -> None:
    """Write the four-panel PNG of ``samples`` to ``out``."""
    minutes = _minutes(samples)
    figure, (memory, counts, sessions, skew) = plt.subplots(
        4, 1, sharex=True, figsize=FIGURE_SIZE_IN
    )
    memory.plot(minutes, [s.rss_mb for s in samples], label="resident memory (MB)")
    gpu = [s.gpu_mb for s in samples]
    if any(value is not None for value in gpu):
        device = memory.twinx()
        device.plot(
            minutes,
            [v if v is not None else float("nan") for v in gpu],
            color="tab:red",
            label="GPU memory (MB)",
        )
        device.set_ylabel("GPU MB")
        device.legend(loc="lower right")
    memory.set_ylabel("MB")
    counts.plot(minutes, [s.threads for s in samples], label="threads")
    counts.plot(minutes, [s.tasks for s in samples], label="event-loop tasks")
    counts.plot(minutes, [s.open_fds for s in samples], label="open fds")
    sessions.step(
        minutes, [s.sessions_active for s in samples], where="post", label="sessions on the server"
    )
    sessions.step(
        minutes,
        [s.calls_running for s in samples],
        where="post",
        label="calls running",
        linestyle="--",
    )
    chunks = [b.chunks - a.chunks for a, b in zip(samples, samples[1:])]
    skewed = [b.chunks_skewed - a.chunks_skewed for a, b in zip(samples, samples[1:])]
    skew.bar(minutes[1:], chunks, width=0.02, label="chunks sent per sample", color="tab:gray")
    skew.bar(minutes[1:], skewed, width=0.02, label="chunks outside +-40 ms skew", color="tab:red")
    skew.set_xlabel("minutes")
    for axes in (memory, counts, sessions, skew):
        _shade_phases(axes, samples)
        axes.legend(loc="upper left", fontsize="small")
        axes.grid(alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(out, dpi=DPI)
    plt.close(figure)


def _title(csv_path: Path) -> str:
    summary = csv_path.with_name("summary.json")
    if not summary.is_file():
        return f"soak: {csv_path}"
    data = json.loads(summary.read_text(encoding="utf-8"))
    verdict = data["verdict"]
    state = "PASS" if verdict["passed"] else "FAIL: " + ", ".join(verdict["failed"])
    minutes = data["plan"]["duration_s"] / S_PER_MIN
    return f"soak of {minutes:.1f} min, {data['capacity']} calls at once: {state}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.plot", description=__doc__)
    parser.add_argument("csv", type=Path, help="series.csv written by python -m loadtests --soak")
    parser.add_argument("-o", "--out", type=Path, help="PNG to write (default: beside the CSV)")
    args = parser.parse_args(argv)
    samples = read_samples(args.csv)
    if len(samples) < 2:
        parser.error(f"{args.csv} has {len(samples)} samples; a plot needs 2 or more")
    plot(samples, args.out or args.csv.with_name("soak.png"), _title(args.csv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
