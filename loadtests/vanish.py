"""``python -m loadtests.vanish URL``: a caller that vanishes -- the soak kills it mid-call.

Reads one session (the JSON of ``POST /v1/sessions`` the soak created) from standard input,
connects to it over WebRTC from 127.0.0.1 with a speaking microphone, and writes a JSON line
to standard output when connected and then every ``REPORT_S`` (frames received, frames per
second). It never hangs up: the soak sends it SIGKILL, so no DTLS close, no DELETE, nothing
reaches the server, which must notice the silence by itself (``peer_timeout_s``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from datetime import datetime

from aiortc.mediastreams import MediaStreamError

from headcast.streaming.ice import HostCandidatePolicy
from headcast_client import ArrayAudioTrack, HeadcastClient, SessionInfo
from loadtests.speech import speech_like

logger = logging.getLogger("loadtests.vanish")

REPORT_S = 1.0
"""How often frames are reported, in seconds."""


MIC_RATE_HZ = 48_000
CONNECT_TIMEOUT_S = 30.0


def _emit(event: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


async def _run(url: str, session: SessionInfo, speech_s: float) -> None:
    policy = HostCandidatePolicy(loopback_only=True)
    async with HeadcastClient(url, timeout_s=CONNECT_TIMEOUT_S, host_candidates=policy) as client:
        mic = ArrayAudioTrack(speech_like(speech_s, MIC_RATE_HZ), MIC_RATE_HZ)
        connection = await client.connect_webrtc(session, mic)
        loop = asyncio.get_running_loop()
        _emit({"event": "connected", "session": session.id})
        frames, first, last = 0, 0.0, 0.0
        next_report = loop.time() + REPORT_S
        while True:  # until killed; a server that ends the call ends the track
            try:
                await connection.video.recv()
            except MediaStreamError:
                _emit({"event": "ended", "frames": frames})
                return
            last = loop.time()
            first = first or last
            frames += 1
            if last >= next_report:
                fps = (frames - 1) / (last - first) if last > first else None
                _emit({"event": "frames", "frames": frames, "fps": fps})
                next_report = last + REPORT_S


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.vanish", description=__doc__)
    parser.add_argument("url", help="server base URL (loopback)")
    parser.add_argument(
        "--speech", type=float, default=30.0, help="seconds of speech, then silence"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    body = json.loads(sys.stdin.readline())
    session = SessionInfo(
        id=body["id"],
        token=body["token"],
        expires_at=datetime.fromisoformat(body["expires_at"]),
        ice_servers=body["ice_servers"],
    )
    asyncio.run(_run(args.url, session, args.speech))
    return 0


if __name__ == "__main__":
    sys.exit(main())
