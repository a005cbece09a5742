"""``SessionTasks``: a failing task is reported, closing cancels all but the closer."""

from __future__ import annotations

import asyncio

from headcast.streaming.session_tasks import SessionTasks

SETTLE_S = 1.0


async def test_a_failed_task_is_reported_with_its_name_and_error() -> None:
    failures: list[str] = []
    tasks = SessionTasks("session x", on_failure=failures.append)

    async def broken() -> None:
        raise ValueError("no more frames")

    tasks.spawn(broken(), "emit")
    for _ in range(100):
        if failures:
            break
        await asyncio.sleep(SETTLE_S / 100)
    assert failures == ["internal error in session x-emit: no more frames"]


async def test_cancel_all_ends_every_task_but_the_one_that_asks() -> None:
    failures: list[str] = []
    tasks = SessionTasks("session y", on_failure=failures.append)
    forever = asyncio.Event()
    outcome: list[str] = []

    async def loop() -> None:
        await forever.wait()

    async def closer() -> None:
        await tasks.cancel_all()
        outcome.append("closer finished")

    tasks.spawn(loop(), "take")
    tasks.spawn(loop(), "emit")
    await asyncio.sleep(0)
    before = {t.get_name() for t in asyncio.all_tasks()}
    assert {"session y-take", "session y-emit"} <= before
    tasks.spawn(closer(), "close")
    await asyncio.wait_for(_until_done(outcome), SETTLE_S)
    left = {t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("session y")}
    assert left == set() and failures == [], "cancelled tasks are not failures"


async def _until_done(outcome: list[str]) -> None:
    while not outcome:
        await asyncio.sleep(0.01)
