"""headcast's media side: asyncio, aiortc and PyAV.

Owns the per-session media clock, the outgoing WebRTC tracks and the audio intake. Imports
only ``pipeline``'s public API; never imports ``server``.
"""
