"""The calls a soak makes: one that speaks, is interrupted and hangs up, and one that vanishes.

Owns ``take_slot`` (create a session, waiting while the server answers 429), ``polite_call``
(speak for the call's length, interrupt it part way, hang up with DELETE and close) and
``vanishing_call`` (a ``loadtests.vanish`` process speaks until it is killed with SIGKILL:
a caller whose tab crashed or whose network dropped). Both fill a ``SessionResult``:
frames, fps, longest gap; the vanishing one from the process's last report. Knows the server
only through ``headcast_client``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from dataclasses import dataclass

import numpy as np

from headcast_client import ArrayAudioTrack, HeadcastClient, HeadcastError, SessionInfo
from loadtests.driver import (
    HTTP_NOT_FOUND,
    HTTP_TOO_MANY_REQUESTS,
    MIC_RATE_HZ,
    TEARDOWN_TIMEOUT_S,
    SessionResult,
    count_media,
    record_frames,
)
from loadtests.speech import speech_like

logger = logging.getLogger(__name__)

SLOT_RETRY_S = 0.5
"""Wait between two tries for a session slot while the server is full, in seconds."""

VANISH_START_TIMEOUT_S = 60.0
"""Longest wait for a vanishing caller's process to connect, in seconds."""

SPEECH_MARGIN_S = 2.0
"""Speech the microphone has beyond the call's length, in seconds."""


@dataclass(frozen=True)
class CallPlan:
    """One call: how long it streams and when it is interrupted."""

    call_s: float
    interrupt_at_s: float
    avatar: str = "default"


@dataclass
class SlotWait:
    """How a slot was taken."""

    session: SessionInfo | None
    refusals: int
    """429 answers before the slot was free (a vanished caller still holds one until the
    server's peer timeout)."""


async def take_slot(client: HeadcastClient, avatar: str, until: float) -> SlotWait:
    """Create a session, retrying while every slot is taken, until loop time ``until``."""
    loop = asyncio.get_running_loop()
    refusals = 0
    while loop.time() < until:
        try:
            return SlotWait(await client.create_session(avatar), refusals)
        except HeadcastError as exc:
            if exc.status != HTTP_TOO_MANY_REQUESTS:
                raise
            refusals += 1
        await asyncio.sleep(SLOT_RETRY_S)
    return SlotWait(None, refusals)


async def _hang_up(client: HeadcastClient, session: SessionInfo, result: SessionResult) -> None:
    try:
        async with asyncio.timeout(TEARDOWN_TIMEOUT_S):
            await client.delete_session(session)
    except HeadcastError as exc:
        if not (exc.status == HTTP_NOT_FOUND and result.ended_early_s is not None):
            logger.warning("call %d: DELETE failed: %r", result.index, exc)


def speech_for(call_s: float) -> np.ndarray:
    """The synthetic speech a call of ``call_s`` plays (slow to make: once, off the loop)."""
    return speech_like(call_s + SPEECH_MARGIN_S, MIC_RATE_HZ)


async def polite_call(
    client: HeadcastClient,
    session: SessionInfo,
    plan: CallPlan,
    result: SessionResult,
    speech: np.ndarray,
) -> None:
    """Speak ``speech`` (at ``MIC_RATE_HZ``, from ``speech_for``) for ``plan.call_s``,
    interrupt at ``plan.interrupt_at_s``, then hang up."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    mic = ArrayAudioTrack(speech, MIC_RATE_HZ)
    connection = None
    interrupter: asyncio.Task[object] | None = None
    try:
        connection = await client.connect_webrtc(session, mic)
        connected = loop.time()
        result.connect_s = connected - began

        async def interrupt_later() -> object:
            await asyncio.sleep(plan.interrupt_at_s)
            return await client.interrupt(session)

        interrupter = asyncio.create_task(interrupt_later())
        frame_times = await count_media(
            connection.video, connection.audio, connected + plan.call_s, result
        )
        record_frames(result, frame_times, connected)
        if interrupter.done() and interrupter.exception() is not None:
            result.outcome, result.detail = (
                "failed",
                f"interrupt failed: {interrupter.exception()!r}",
            )
        elif not frame_times:
            result.outcome, result.detail = "failed", "connected but received no video frame"
        elif result.ended_early_s is not None:
            result.outcome = "failed"
            result.detail = f"the server ended the call {result.ended_early_s:.1f} s in"
        else:
            result.outcome = "ok"
    finally:
        mic.stop()
        if interrupter is not None:
            interrupter.cancel()
            with contextlib.suppress(asyncio.CancelledError, HeadcastError, OSError):
                await interrupter
        await _hang_up(client, session, result)
        if connection is not None:
            await connection.close()


def _session_json(session: SessionInfo) -> str:
    return json.dumps(
        {
            "id": session.id,
            "token": session.token,
            "expires_at": session.expires_at.isoformat(),
            "ice_servers": session.ice_servers,
        }
    )


async def vanishing_call(
    url: str, session: SessionInfo, plan: CallPlan, result: SessionResult
) -> None:
    """A ``loadtests.vanish`` process streams ``session`` for ``plan.call_s``, then SIGKILL."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "loadtests.vanish", url,
        "--speech", str(plan.call_s + SPEECH_MARGIN_S),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert process.stdin is not None and process.stdout is not None
    loop = asyncio.get_running_loop()
    last: dict[str, object] = {}
    try:
        process.stdin.write((_session_json(session) + "\n").encode())
        await process.stdin.drain()
        process.stdin.close()
        async with asyncio.timeout(VANISH_START_TIMEOUT_S):
            last = json.loads(await process.stdout.readline() or b"{}")
        if last.get("event") != "connected":
            result.outcome, result.detail = (
                "failed",
                f"the vanishing caller never connected: {last}",
            )
            return
        until = loop.time() + plan.call_s
        while (left := until - loop.time()) > 0:
            try:
                async with asyncio.timeout(left):
                    line = await process.stdout.readline()
            except TimeoutError:
                break
            if not line:
                break
            last = json.loads(line)
        frames = last.get("frames")
        fps = last.get("fps")
        result.frames = int(frames) if isinstance(frames, int) else 0
        result.fps = float(fps) if isinstance(fps, (int, float)) else None
        ended = last.get("event") == "ended"
        result.outcome = "failed" if ended or not result.frames else "vanished"
        result.detail = "the server ended the call" if ended else "killed mid-call (SIGKILL)"
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
