"""The soak: a server kept at capacity for a long time, its resources sampled, and a verdict.

Owns ``SoakPlan`` (what to run, bounds checked: loopback targets only), ``parse_duration``
(``90s``, ``2m``, ``1h``) and ``run_soak``. A soak runs in phases:

1. ``warm-up``: every slot busy with calls for ``warmup_s`` (caches, codecs, threads fill);
2. drain until the server has no session, then ``idle-before``: a few idle samples;
3. ``load``: every slot busy with calls until the duration is over;
4. drain again, then ``idle-after``: the same idle samples to compare with.

Each slot makes calls back to back: every call speaks, is interrupted part way and hangs
up, except every ``vanish_every``-th, whose caller is a process killed mid-call (see
``loadtests.calls``). A sampler reads the server's ``/metrics`` (and ``nvidia-smi``) every
``sample_s``. The samples go to ``series.csv``; ``summary.json`` and ``summary.md`` hold the
verdict (``loadtests.verdict``) and the calls; ``python -m loadtests.plot`` draws the series.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from headcast.streaming.ice import HostCandidatePolicy
from headcast_client import HeadcastClient
from loadtests.calls import CallPlan, polite_call, speech_for, take_slot, vanishing_call
from loadtests.driver import CONNECT_TIMEOUT_S, LoadPlanError, SessionResult, check_target
from loadtests.resources import Sample, take_sample, write_samples
from loadtests.verdict import IDLE_AFTER, IDLE_BEFORE, LOAD, Verdict, judge

logger = logging.getLogger(__name__)

WARM_UP = "warm-up"
MIN_SOAK_S = 60.0
MAX_SOAK_S = 24 * 3600.0
MIN_CALL_S = 5.0
"""Shortest call; a slot with less time left in its phase stops making calls."""

CALL_SETUP_S = 3.0
"""Time allowed for creating and connecting a call, on top of ``MIN_CALL_S``, in seconds."""

MAX_CALL_S = 600.0
INTERRUPT_AT = 0.6
"""Calls are interrupted at this share of their length."""

WARMUP_SHARE = 0.1
MIN_WARMUP_S = 30.0
MAX_WARMUP_S = 300.0
DRAIN_TIMEOUT_S = 90.0
"""Longest wait for the server to release every session between phases (a vanished caller
holds its slot until the server's peer timeout), in seconds."""

SETTLE_S = 2.0
"""Pause after the last session is released before idle samples, in seconds."""

SAMPLE_TIMEOUT_S = 15.0
"""Longest one resource sample may take (a scrape of /metrics), in seconds."""

IDLE_SAMPLES = 5
"""Samples in each idle window, ``IDLE_SAMPLE_GAP_S`` apart; the verdict reads the lowest
(a leak holds at every one)."""

IDLE_SAMPLE_GAP_S = 1.0
DURATION_UNITS_S = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*$")


def parse_duration(text: str) -> float:
    """``"90"``, ``"90s"``, ``"2m"``, ``"1.5h"`` -> seconds; ``ValueError`` otherwise."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration: write 90s, 2m or 1h")
    return float(match[1]) * DURATION_UNITS_S[match[2]]


@dataclass(frozen=True)
class SoakPlan:
    """A soak of ``duration_s`` (warm-up included) against ``url``."""

    url: str
    duration_s: float
    out_dir: Path
    sessions: int | None = None
    """Calls at once; ``None``: the server's capacity (``headcast_sessions_capacity``)."""

    call_s: float = 20.0
    vanish_every: int = 4
    """Every n-th call of a slot vanishes instead of hanging up."""

    sample_s: float = 5.0
    warmup_s: float | None = None
    """``None``: 10 % of the duration, within 30 s .. 5 min."""

    avatar: str = "default"
    api_key: str | None = field(default=None, repr=False)

    @property
    def warmup(self) -> float:
        if self.warmup_s is not None:
            return self.warmup_s
        return min(MAX_WARMUP_S, max(MIN_WARMUP_S, WARMUP_SHARE * self.duration_s))

    def validate(self) -> None:
        """Raise ``LoadPlanError`` for a target off this machine or a plan out of bounds."""
        check_target(self.url)
        if not MIN_SOAK_S <= self.duration_s <= MAX_SOAK_S:
            raise LoadPlanError(
                f"--soak must be {MIN_SOAK_S:.0f} s .. {MAX_SOAK_S / 3600:.0f} h, "
                f"got {self.duration_s:.0f} s"
            )
        if not MIN_CALL_S <= self.call_s <= MAX_CALL_S:
            raise LoadPlanError(
                f"--call must be {MIN_CALL_S:.0f}..{MAX_CALL_S:.0f} s, got {self.call_s}"
            )
        if self.warmup + MIN_CALL_S > self.duration_s:
            raise LoadPlanError(
                f"the warm-up ({self.warmup:.0f} s) leaves no time for the load phase"
            )
        if self.vanish_every < 2 or self.sample_s <= 0:
            raise LoadPlanError("--vanish-every must be >= 2 and the sample period > 0")


@dataclass
class SoakReport:
    """What a soak measured and its verdict."""

    plan: SoakPlan
    capacity: int
    samples: list[Sample]
    calls: list[SessionResult]
    refusals: int
    verdict: Verdict
    wall_s: float

    def as_dict(self) -> dict[str, Any]:
        plan = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self.plan).items()}
        plan.pop("api_key", None)
        return {
            "plan": plan,
            "capacity": self.capacity,
            "wall_s": self.wall_s,
            "refusals_while_full": self.refusals,
            "verdict": self.verdict.as_dict(),
            "calls": [asdict(call) for call in self.calls],
        }

    def summary_lines(self) -> list[str]:
        calls = self.verdict.calls
        return [
            f"soak of {self.plan.duration_s:.0f} s against {self.plan.url}: {self.capacity} calls "
            f"at once, {calls['total']} calls ({calls['hung_up']} hung up, {calls['vanished']} "
            f"vanished, {calls['failed']} failed), {self.refusals} waits for a slot, "
            f"{len(self.samples)} samples, {self.wall_s:.0f} s wall",
            *self.verdict.lines(),
        ]

    def write(self) -> None:
        """``series.csv``, ``summary.json`` and ``summary.md`` in the plan's ``out_dir``."""
        out = self.plan.out_dir
        out.mkdir(parents=True, exist_ok=True)
        write_samples(out / "series.csv", self.samples)
        (out / "summary.json").write_text(
            json.dumps(self.as_dict(), indent=2) + "\n", encoding="utf-8"
        )
        text = "\n".join(["# Soak", "", "```", *self.summary_lines(), "```", ""])
        (out / "summary.md").write_text(text, encoding="utf-8")


class _Soak:
    """One running soak: its client, phase, calls and samples."""

    def __init__(
        self, plan: SoakPlan, client: HeadcastClient, capacity: int, speech: np.ndarray
    ) -> None:
        self.plan = plan
        self.speech = speech
        self.client = client
        self.capacity = capacity
        self.phase = WARM_UP
        self.started = time.monotonic()
        self.calls: list[SessionResult] = []
        self.samples: list[Sample] = []
        self.running = 0
        self.refusals = 0

    async def sample(self) -> None:
        t_s = time.monotonic() - self.started
        async with asyncio.timeout(SAMPLE_TIMEOUT_S):
            sample = await take_sample(self.client, t_s, self.phase, self.running)
        self.samples.append(sample)

    async def sample_forever(self) -> None:
        while True:
            await self.sample()
            await asyncio.sleep(self.plan.sample_s)

    async def slot(self, slot: int, until: float) -> None:
        """Calls back to back until loop time ``until``."""
        loop = asyncio.get_running_loop()
        while until - loop.time() >= MIN_CALL_S + CALL_SETUP_S:
            wait = await take_slot(self.client, self.plan.avatar, until - MIN_CALL_S)
            self.refusals += wait.refusals
            if wait.session is None:
                return
            call_s = max(MIN_CALL_S, min(self.plan.call_s, until - loop.time()))
            call = CallPlan(call_s, INTERRUPT_AT * call_s, self.plan.avatar)
            result = SessionResult(len(self.calls))
            result.detail = f"slot {slot}"
            self.calls.append(result)
            self.running += 1
            try:
                if result.index % self.plan.vanish_every == self.plan.vanish_every - 1:
                    await vanishing_call(self.plan.url, wait.session, call, result)
                else:
                    await polite_call(self.client, wait.session, call, result, self.speech)
            except Exception as exc:  # noqa: BLE001 -- a failed call is a finding, not the end
                result.outcome, result.detail = "failed", repr(exc)
                logger.warning("call %d failed: %r", result.index, exc)
            finally:
                self.running -= 1

    async def load(self, phase: str, seconds: float) -> None:
        self.phase = phase
        until = asyncio.get_running_loop().time() + seconds
        logger.info("%s: %d calls at once for %.0f s", phase, self.capacity, seconds)
        await asyncio.gather(*(self.slot(slot, until) for slot in range(self.capacity)))

    async def idle(self, phase: str) -> None:
        """Wait until the server holds no session, then take the idle samples."""
        self.phase = "drain"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_TIMEOUT_S
        while (await self.client.metrics()).get("headcast_sessions_active", 0.0) > 0:
            if loop.time() > deadline:
                logger.warning("sessions still active after %.0f s of draining", DRAIN_TIMEOUT_S)
                break
            await asyncio.sleep(IDLE_SAMPLE_GAP_S)
        await asyncio.sleep(SETTLE_S)
        self.phase = phase
        for _ in range(IDLE_SAMPLES):
            await self.sample()
            await asyncio.sleep(IDLE_SAMPLE_GAP_S)


async def run_soak(plan: SoakPlan) -> SoakReport:
    """Run ``plan`` (validated first), write its files, return the report."""
    plan.validate()
    policy = HostCandidatePolicy(loopback_only=True)
    async with HeadcastClient(
        plan.url, timeout_s=CONNECT_TIMEOUT_S, host_candidates=policy, api_key=plan.api_key
    ) as client:
        await client.wait_ready(timeout_s=CONNECT_TIMEOUT_S)
        capacity = plan.sessions or int((await client.metrics())["headcast_sessions_capacity"])
        speech = await asyncio.to_thread(speech_for, plan.call_s)
        soak = _Soak(plan, client, capacity, speech)
        sampler = asyncio.create_task(soak.sample_forever(), name="soak-sampler")
        try:
            await soak.load(WARM_UP, plan.warmup)
            await soak.idle(IDLE_BEFORE)
            await soak.load(LOAD, plan.duration_s - plan.warmup)
            await soak.idle(IDLE_AFTER)
        finally:
            sampler.cancel()
            (stopped,) = await asyncio.gather(sampler, return_exceptions=True)
            if isinstance(stopped, Exception):
                raise RuntimeError("the resource sampler failed") from stopped
    samples = sorted(soak.samples, key=lambda s: s.t_s)
    report = SoakReport(
        plan, capacity, samples, soak.calls, soak.refusals, judge(samples, soak.calls),
        time.monotonic() - soak.started,
    )  # fmt: skip
    report.write()
    return report
