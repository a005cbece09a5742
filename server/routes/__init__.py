"""The HTTP routes, one router per resource: sessions, webrtc, health, web."""
