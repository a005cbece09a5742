"""Async Python client for headcast: create a session, run WebRTC, push audio, read events."""
