"""Async Python client for headcast: create a session, run WebRTC, push audio, read events."""

from headcast_client.audio import ArrayAudioTrack
from headcast_client.client import HeadcastClient, HeadcastError, SessionInfo, WebRTCConnection

__all__ = ["ArrayAudioTrack", "HeadcastClient", "HeadcastError", "SessionInfo", "WebRTCConnection"]
