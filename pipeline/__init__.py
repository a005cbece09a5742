"""headcast's model side: torch only.

Owns the FlashTalk model parts, the sampler, the per-session generator and the device
worker thread. Must never import asyncio, fastapi, aiortc, av, ``streaming`` or ``server``.
"""
