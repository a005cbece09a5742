"""Async Python client for headcast: add avatars, create a session, run WebRTC, push audio, read
events."""

from headcast_client.audio import ArrayAudioTrack
from headcast_client.client import (
    AvatarInfo,
    HeadcastClient,
    HeadcastError,
    RelayUnavailable,
    SessionInfo,
    WebRTCConnection,
    over_groups,
    parse_metrics,
)
from headcast_client.push import EventQueue, EventTimeout, PushSocket, to_pcm16

__all__ = [
    "ArrayAudioTrack",
    "AvatarInfo",
    "EventQueue",
    "EventTimeout",
    "HeadcastClient",
    "HeadcastError",
    "PushSocket",
    "RelayUnavailable",
    "SessionInfo",
    "WebRTCConnection",
    "over_groups",
    "parse_metrics",
    "to_pcm16",
]
