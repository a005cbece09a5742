"""What a soak samples: the server's resources and its per-chunk A/V skew, one row at a time.

Owns ``Sample`` (one moment: sessions, resident memory, threads, event-loop tasks, open file
descriptors, device memory, chunks sent and how many of them had their audio more than
40 ms off their video), ``take_sample`` (reads the server's ``/metrics``, and
``nvidia-smi`` when there is one), and the CSV they are written to and read back from.

The skew comes from ``headcast_av_skew_seconds``: the server measures every chunk's
audio-minus-video send time and counts it in buckets whose edges include -0.04 and 0.04 s,
so the chunks outside +-40 ms between two samples are exact counts, not estimates.
GPU memory is the device's used memory from ``nvidia-smi`` (all processes on it), summed
over devices; on a host without ``nvidia-smi`` the column is empty.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path

from headcast_client import HeadcastClient

BYTES_PER_MB = 1_000_000
SKEW_LIMIT_S = 0.04
"""Lip sync holds within +-40 ms; chunks beyond are counted."""

SKEW_SERIES = "headcast_av_skew_seconds_bucket"
NVIDIA_SMI = "nvidia-smi"
NVIDIA_SMI_TIMEOUT_S = 10.0


@dataclass
class Sample:
    """The server at one moment of a soak."""

    t_s: float
    """Seconds since the soak started."""

    phase: str
    """``warm-up``, ``idle-before``, ``load`` or ``idle-after``."""

    calls_running: int
    """Calls the driver had open."""

    sessions_active: float
    rss_mb: float
    threads: float
    tasks: float
    open_fds: float
    gpu_mb: float | None
    chunks: float
    """Chunks whose skew was measured so far (the skew histogram's count)."""

    chunks_skewed: float
    """Of those, chunks whose audio was more than 40 ms ahead of or behind its video."""


def _le(value: float | str) -> str:
    return f'{SKEW_SERIES}{{le="{value}"}}'


async def gpu_memory_mb() -> float | None:
    """Used memory of every GPU on this host from ``nvidia-smi``, in MB; None without one."""
    binary = shutil.which(NVIDIA_SMI)
    if binary is None:
        return None
    process = await asyncio.create_subprocess_exec(
        binary,
        "--query-gpu=memory.used",
        "--format=csv,noheader,nounits",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    async with asyncio.timeout(NVIDIA_SMI_TIMEOUT_S):
        output, _ = await process.communicate()
    mib = sum(float(line) for line in output.decode().split() if line.strip())
    return mib * 2**20 / BYTES_PER_MB


async def take_sample(client: HeadcastClient, t_s: float, phase: str, calls_running: int) -> Sample:
    """One row: the server's ``/metrics`` now (and the GPUs' memory)."""
    series = await client.metrics()
    count = series.get(_le("+Inf"), 0.0)
    below = series.get(_le(-SKEW_LIMIT_S), 0.0)
    within = series.get(_le(SKEW_LIMIT_S), 0.0)
    return Sample(
        t_s=t_s,
        phase=phase,
        calls_running=calls_running,
        sessions_active=series.get("headcast_sessions_active", 0.0),
        rss_mb=series.get("headcast_process_resident_memory_bytes", 0.0) / BYTES_PER_MB,
        threads=series.get("headcast_process_threads", 0.0),
        tasks=series.get("headcast_event_loop_tasks", 0.0),
        open_fds=series.get("headcast_process_open_fds", 0.0),
        gpu_mb=await gpu_memory_mb(),
        chunks=count,
        chunks_skewed=below + (count - within),
    )


FIELDS = [field.name for field in dataclasses.fields(Sample)]


def write_samples(path: Path, samples: list[Sample]) -> None:
    """Write ``samples`` as CSV with a header row (an empty cell for a missing GPU)."""
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=FIELDS)
        writer.writeheader()
        for sample in samples:
            row = dataclasses.asdict(sample)
            writer.writerow({key: "" if value is None else value for key, value in row.items()})


def read_samples(path: Path) -> list[Sample]:
    """Read a CSV written by ``write_samples``."""
    samples: list[Sample] = []
    with path.open(newline="", encoding="utf-8") as source:
        for row in csv.DictReader(source):
            samples.append(
                Sample(
                    t_s=float(row["t_s"]),
                    phase=row["phase"],
                    calls_running=int(row["calls_running"]),
                    sessions_active=float(row["sessions_active"]),
                    rss_mb=float(row["rss_mb"]),
                    threads=float(row["threads"]),
                    tasks=float(row["tasks"]),
                    open_fds=float(row["open_fds"]),
                    gpu_mb=float(row["gpu_mb"]) if row["gpu_mb"] else None,
                    chunks=float(row["chunks"]),
                    chunks_skewed=float(row["chunks_skewed"]),
                )
            )
    return samples
