"""The soak verdict on made-up series: what passes, and each way it fails; the CSV round trip;
the duration parser; the plot command writes a PNG."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from loadtests.driver import LoadPlanError, SessionResult
from loadtests.plot import main as plot_main
from loadtests.resources import Sample, read_samples, write_samples
from loadtests.soak import SoakPlan, parse_duration
from loadtests.verdict import judge

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _series(*, rss_after: float = 500.0, tasks_after: float = 3, skewed: float = 0) -> list[Sample]:
    """Idle before (t 0..2), load (t 10..100, 100 chunks), idle after (t 110..112)."""
    idle = dict(calls_running=0, sessions_active=0, threads=11, tasks=3, open_fds=12, gpu_mb=None)
    load = dict(calls_running=2, sessions_active=2, threads=14, tasks=27, open_fds=15, gpu_mb=None)
    samples = [
        Sample(t, "idle-before", rss_mb=500.0, chunks=0, chunks_skewed=0, **idle) for t in (0, 1, 2)
    ]
    samples += [
        Sample(t, "load", rss_mb=520.0, chunks=t - 10, chunks_skewed=skewed * (t - 10) / 90, **load)
        for t in (10, 40, 70, 100)
    ]
    after = {**idle, "tasks": tasks_after}
    samples += [
        Sample(t, "idle-after", rss_mb=rss_after, chunks=90, chunks_skewed=skewed, **after)
        for t in (110, 111, 112)
    ]
    return samples


def _calls(*fps: float, vanished: int = 1) -> list[SessionResult]:
    calls = [replace(SessionResult(i), outcome="ok", fps=f) for i, f in enumerate(fps)]
    calls += [
        replace(SessionResult(len(calls) + i), outcome="vanished", fps=25.0)
        for i in range(vanished)
    ]
    return calls


def test_a_flat_soak_passes_and_reports_growth_per_hour() -> None:
    verdict = judge(_series(rss_after=510.0), _calls(25.0, 24.6))
    assert verdict.passed, verdict.lines()
    rss = next(g for g in verdict.growth if g.resource == "rss_mb")
    assert rss.idle_before == 500.0 and rss.idle_after == 510.0
    assert rss.idle_to_idle_per_hour == pytest.approx(10.0 / 110.0 * 3600.0)
    assert rss.load_slope_per_hour == pytest.approx(0.0)
    assert verdict.as_dict()["calls"]["vanished"] == 1


@pytest.mark.parametrize(
    ("series", "calls", "failed"),
    [
        (_series(rss_after=530.0), _calls(25.0), ["rss_mb idle after vs before"]),
        (_series(tasks_after=5), _calls(25.0), ["tasks back to baseline"]),
        (_series(skewed=1), _calls(25.0), ["A/V skew within 40 ms"]),
        (_series(), _calls(25.0, 23.0), ["every call >= 24 fps"]),
        (_series(), _calls(25.0, vanished=0), ["both kinds of call made"]),
        (
            _series(),
            [*_calls(25.0), replace(SessionResult(9), outcome="failed", detail="boom")],
            ["every call served"],
        ),
    ],
    ids=["memory", "tasks", "skew", "fps", "no-vanish", "failed-call"],
)
def test_each_criterion_fails_on_its_own(
    series: list[Sample], calls: list[SessionResult], failed: list[str]
) -> None:
    verdict = judge(series, calls)
    assert verdict.failed == failed, verdict.lines()
    assert "FAIL" in verdict.lines()[0]


def test_gpu_memory_is_judged_when_sampled() -> None:
    series = [replace(s, gpu_mb=1000.0 if s.phase != "idle-after" else 1100.0) for s in _series()]
    assert judge(series, _calls(25.0)).failed == ["gpu_mb idle after vs before"]


def test_series_survive_the_csv_and_plot(tmp_path: Path) -> None:
    series = _series()
    path = tmp_path / "series.csv"
    write_samples(path, series)
    assert read_samples(path) == series
    assert plot_main([str(path), "-o", str(tmp_path / "soak.png")]) == 0
    assert (tmp_path / "soak.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90.0), ("90s", 90.0), ("2m", 120.0), ("1.5h", 5400.0)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_a_bad_duration_says_how_to_write_one() -> None:
    with pytest.raises(ValueError, match="write 90s, 2m or 1h"):
        parse_duration("an hour")


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        (SoakPlan("http://10.0.0.1:8000", 120.0, Path("out")), "this machine only"),
        (SoakPlan("http://127.0.0.1:8000", 30.0, Path("out")), "--soak must be"),
        (SoakPlan("http://127.0.0.1:8000", 120.0, Path("out"), call_s=1.0), "--call must be"),
        (SoakPlan("http://127.0.0.1:8000", 60.0, Path("out"), warmup_s=58.0), "leaves no time"),
    ],
)
def test_soak_plans_outside_the_bounds_are_refused(plan: SoakPlan, message: str) -> None:
    with pytest.raises(LoadPlanError, match=message):
        plan.validate()


def test_idle_levels_are_read_once_settled() -> None:
    """A peer that frees its last socket a second after the drain, or the soak's own scrape
    holding a socket at the last samples, is not a leak; one held at every idle sample is."""
    series = _series()
    after = [i for i, s in enumerate(series) if s.phase == "idle-after"]
    series[after[0]] = replace(series[after[0]], open_fds=13)
    assert judge(series, _calls(25.0)).passed
    series[after[-1]] = replace(series[after[-1]], open_fds=13)
    assert judge(series, _calls(25.0)).passed
    for index in after:
        series[index] = replace(series[index], open_fds=13)
    assert judge(series, _calls(25.0)).failed == ["open_fds back to baseline"]
