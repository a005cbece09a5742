"""Answering offers: codec preference, loopback candidates, the mic track, unusable offers."""

from __future__ import annotations

import pytest
from aiortc.mediastreams import MediaStreamTrack
from aiortc.sdp import SessionDescription

from headcast.streaming.clock import LoopClock
from headcast.streaming.codecs import VideoCodec
from headcast.streaming.ice import HostCandidatePolicy
from headcast.streaming.peer import OfferError, PeerConfig, PeerLink, with_directions
from headcast.streaming.tracks import AvatarAudioTrack, AvatarVideoTrack
from tests.conftest import client_offer

LOOPBACK_ONLY = HostCandidatePolicy(loopback_only=True)


async def _answer(offer: str, codec: VideoCodec) -> tuple[str, list[MediaStreamTrack]]:
    inbound: list[MediaStreamTrack] = []
    lost: list[str] = []
    peer = PeerLink(PeerConfig(host_candidates=LOOPBACK_ONLY, video_codec=codec), lost.append)
    clock = LoopClock()
    try:
        answer = await peer.answer(
            offer,
            video=AvatarVideoTrack(clock),
            audio=AvatarAudioTrack(clock),
            on_inbound_audio=inbound.append,
        )
    finally:
        await peer.close()
    assert lost == [], "closing the link ourselves is not a lost peer"
    return answer, inbound


@pytest.mark.parametrize("codec", [VideoCodec.VP8, VideoCodec.H264])
async def test_answer_puts_the_preferred_codec_first(codec: VideoCodec) -> None:
    answer, inbound = await _answer(await client_offer(), codec)
    parsed = SessionDescription.parse(answer)
    video = next(m for m in parsed.media if m.kind == "video")
    assert video.rtp.codecs[0].mimeType.lower() == codec.mime_type.lower()
    assert video.direction == "sendonly"
    audio = next(m for m in parsed.media if m.kind == "audio")
    assert audio.direction == "sendrecv"
    assert [t.kind for t in inbound] == ["audio"], "the caller's microphone is handed over"
    hosts = {c.ip for m in parsed.media for c in m.ice_candidates}
    assert hosts == {"127.0.0.1"}, "every candidate is in the answer (no trickle)"


async def test_an_offer_without_video_is_refused_with_a_reason() -> None:
    with pytest.raises(OfferError, match="video"):
        await _answer(await client_offer(video=False), VideoCodec.VP8)
    with pytest.raises(OfferError, match=r"malformed|empty|section"):
        await _answer("v=0\r\nm=audio x\r\n", VideoCodec.VP8)


async def test_an_offer_without_direction_attributes_is_answered_as_sendrecv() -> None:
    """RFC 4566: a media section without a direction is sendrecv (aiortc needs it said)."""
    offer = await client_offer()
    bare = "".join(
        line for line in offer.splitlines(keepends=True)
        if line.strip() not in ("a=sendrecv", "a=recvonly", "a=sendonly", "a=inactive")
    )  # fmt: skip
    assert all(m.direction is None for m in SessionDescription.parse(bare).media)
    answer, inbound = await _answer(bare, VideoCodec.VP8)
    directions = {m.kind: m.direction for m in SessionDescription.parse(answer).media}
    assert directions == {"audio": "sendrecv", "video": "sendonly"}
    assert [t.kind for t in inbound] == ["audio"]


def test_with_directions_takes_the_session_level_direction_as_default() -> None:
    sdp = (
        "v=0\r\na=recvonly\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n"
        "m=video 9 x 96\r\na=inactive\r\n"
    )
    lines = with_directions(sdp).split("\r\n")
    assert lines[2:5] == ["m=audio 9 UDP/TLS/RTP/SAVPF 111", "a=recvonly", "a=mid:0"]
    assert lines[5:7] == ["m=video 9 x 96", "a=inactive"]  # its own direction is kept
    assert with_directions("v=0\nm=audio 9 x 0\n").endswith("m=audio 9 x 0\r\na=sendrecv\r\n")
