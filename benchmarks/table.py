"""Collate ``headcast bench`` JSON reports into one markdown table (for BENCHMARKS.md).

``python3 benchmarks/table.py REPORT.json|REPORTS.jsonl ...`` prints one row per report: the run's
label, frame size and steps, median DiT step, VAE decode and chunk time, RTF, compile/warm-up time,
peak memory while streaming and loading, and the relative errors against the reference run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HEADER = (
    "| run | size, steps | DiT step s | VAE decode s | other stages s | chunk s | RTF | "
    "first chunk s (compile) | peak GiB stream / load | rel err velocity / video |\n"
    "|---|---|---|---|---|---|---|---|---|---|\n"
)

NON_DIT_STAGES = ("audio_s", "color_s", "motion_encode_s", "to_host_s")

CHECK_COLUMNS = {
    "vs ref": ("velocity_rel_err", "video_rel_err"),
    "vs own eager": ("velocity_rel_err_vs_eager", "video_rel_err_vs_eager"),
    "vs f32": ("velocity_rel_err_vs_float32", "video_rel_err_vs_float32"),
    "eager vs f32": ("velocity_eager_rel_err_vs_float32", "video_eager_rel_err_vs_float32"),
    "N GPUs vs 1": ("velocity_rel_err_vs_1gpu", "video_rel_err_vs_1gpu"),
}
"""Relative errors shown per report (velocity / video), when the run computed them."""


def row(report: dict) -> str:
    stages = report["stages_s"]
    other = sum(stages.get(name, 0.0) for name in NON_DIT_STAGES)
    check = report.get("check") or {}
    errors = (
        "; ".join(
            f"{name} {' / '.join(f'{check[k]:.1e}' if k in check else '-' for k in keys)}"
            for name, keys in CHECK_COLUMNS.items()
            if any(k in check for k in keys)
        )
        or "-"
    )
    peak = report.get("peak_memory_gib")
    load_peak = report.get("load_peak_memory_gib")
    memory = "-" if peak is None else f"{peak:.1f} / {load_peak:.1f}"
    return (
        f"| {report['label']} | {report['height']}x{report['width']}, {report['steps']} | "
        f"{report['dit_step_s']:.3f} | {stages['vae_decode_s']:.3f} | {other:.3f} | "
        f"{report['chunk_s']:.3f} | {report['rtf']:.2f} | "
        f"{report['first_chunk_s']:.1f} ({report['compile_s']:.1f}) | {memory} | {errors} |\n"
    )


def load(path: str) -> list[dict]:
    """One report (``.json``) or one per line (``.jsonl``)."""
    text = Path(path).read_text()
    if path.endswith(".jsonl"):
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return [json.loads(text)]


def main(paths: list[str]) -> int:
    reports = [report for path in paths for report in load(path)]
    sys.stdout.write(HEADER + "".join(row(report) for report in reports))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
